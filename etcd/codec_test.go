package etcd

import (
	"bytes"
	"errors"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	podGVK    = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	deployGVK = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
)

func testPod(ns, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, UID: "uid-" + "x",
			CreationTimestamp: metav1.Unix(1700000000, 0)},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.9"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1",
			ContainerStatuses: []corev1.ContainerStatus{{Name: "c", Ready: true, RestartCount: 2}}},
	}
}

func testDeployment(ns, name string, replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1, Labels: map[string]string{"app": name}},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx"}}}}},
		Status: appsv1.DeploymentStatus{Replicas: replicas, ReadyReplicas: replicas},
	}
}

func mustEncode(t testing.TB, c *Codec, obj runtime.Object, gvk schema.GroupVersionKind, enc Encoding) []byte {
	t.Helper()
	b, err := c.Encode(obj, gvk, enc)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

func TestCodecProtobufRoundTrip(t *testing.T) {
	c := NewCodec()
	pod := testPod("ns", "p", "node-1", map[string]string{"app": "x"})
	pod.ResourceVersion = "999" // never persisted
	b := mustEncode(t, c, pod, podGVK, EncodingProtobuf)
	if !bytes.HasPrefix(b, []byte("k8s\x00")) || DetectEncoding(b) != EncodingProtobuf {
		t.Fatalf("not k8s protobuf: %q", b[:8])
	}
	d, err := c.Decode("/registry/pods/ns/p", b, 42)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := d.Object.(*corev1.Pod)
	if !ok {
		t.Fatalf("decoded a %T", d.Object)
	}
	if got.ResourceVersion != "42" {
		t.Errorf("resourceVersion = %q, want the ModRevision 42", got.ResourceVersion)
	}
	if got.APIVersion != "v1" || got.Kind != "Pod" {
		t.Errorf("type meta = %s/%s", got.APIVersion, got.Kind)
	}
	want := pod.DeepCopy()
	want.ResourceVersion = "42"
	want.TypeMeta = got.TypeMeta
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("round trip differs:\n got %+v\nwant %+v", got, want)
	}
	// Encoding the decoded object again gives the same bytes.
	if b2 := mustEncode(t, c, got, d.GVK, d.Encoding); !bytes.Equal(b, b2) {
		t.Error("re-encoding changed the bytes")
	}
	// Metadata only: labels, no spec.
	m, err := c.DecodeMetadata("k", b, 42)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Partial || m.Meta().GetLabels()["app"] != "x" || m.Meta().GetResourceVersion() != "42" || m.GVK != podGVK {
		t.Errorf("metadata decode: partial=%v meta=%+v gvk=%v", m.Partial, m.Meta(), m.GVK)
	}
}

func TestCodecJSONAndCBOR(t *testing.T) {
	c := NewCodec()
	// A custom resource, as the API server stores it: JSON of an unknown type.
	cr := []byte(`{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w","namespace":"ns","labels":{"a":"b"}},"spec":{"size":3}}` + "\n")
	d, err := c.Decode("/registry/example.com/widgets/ns/w", cr, 7)
	if err != nil {
		t.Fatal(err)
	}
	u, ok := d.Object.(*unstructured.Unstructured)
	if !ok || d.Encoding != EncodingJSON {
		t.Fatalf("decoded %T as %s", d.Object, d.Encoding)
	}
	if v, _, _ := unstructured.NestedInt64(u.Object, "spec", "size"); v != 3 || u.GetResourceVersion() != "7" {
		t.Errorf("custom resource: size %d rv %s", v, u.GetResourceVersion())
	}
	// A built-in stored as JSON decodes typed.
	dj := mustEncode(t, c, testDeployment("ns", "web", 2), deployGVK, EncodingJSON)
	if d, err := c.Decode("k", dj, 1); err != nil || d.Encoding != EncodingJSON {
		t.Fatalf("json deployment: %v", err)
	} else if _, ok := d.Object.(*appsv1.Deployment); !ok {
		t.Errorf("json deployment decoded as %T", d.Object)
	}
	// CBOR, self-described.
	cb := mustEncode(t, c, testDeployment("ns", "web", 2), deployGVK, EncodingCBOR)
	if DetectEncoding(cb) != EncodingCBOR {
		t.Fatalf("cbor not detected: %x", cb[:4])
	}
	d, err = c.Decode("k", cb, 5)
	if err != nil {
		t.Fatal(err)
	}
	if dep, ok := d.Object.(*appsv1.Deployment); !ok || *dep.Spec.Replicas != 2 || dep.ResourceVersion != "5" {
		t.Errorf("cbor deployment: %T %+v", d.Object, d.Object)
	}
}

func TestCodecBadValues(t *testing.T) {
	c := NewCodec()
	tests := []struct {
		name  string
		value []byte
		enc   Encoding
	}{
		{"encrypted aescbc", []byte("k8s:enc:aescbc:v1:key1:\x8f\x01\x02garbage"), EncodingEncrypted},
		{"encrypted kms v2", []byte("k8s:enc:kms:v2:my-kms:\n\x01\x02"), EncodingEncrypted},
		{"garbage", []byte{0x01, 0x02, 0x03}, EncodingUnknown},
		{"empty", nil, EncodingUnknown},
		{"truncated protobuf", mustEncode(t, c, testPod("a", "b", "n", nil), podGVK, EncodingProtobuf)[:40], EncodingProtobuf},
		{"protobuf prefix only", []byte("k8s\x00"), EncodingProtobuf},
		{"broken json", []byte(`{"apiVersion":"v1","kind":"Pod","metadata":`), EncodingJSON},
		{"json without kind", []byte(`{"metadata":{"name":"x"}}`), EncodingJSON},
		{"broken cbor", []byte{0xd9, 0xd9, 0xf7, 0xff, 0x00}, EncodingCBOR},
	}
	for _, tt := range tests {
		_, err := c.Decode("/registry/x/y", tt.value, 1)
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%s: want a DecodeError, got %v", tt.name, err)
			continue
		}
		if de.Encoding != tt.enc || de.Key != "/registry/x/y" {
			t.Errorf("%s: encoding %s key %s", tt.name, de.Encoding, de.Key)
		}
	}
	_, err := c.Decode("k", []byte("k8s:enc:aescbc:v1:key1:xxxx"), 1)
	if want := "k: encrypted at rest (aescbc:v1:key1): breakglass cannot decrypt it"; err == nil || err.Error() != want {
		t.Errorf("encrypted error = %v, want %q", err, want)
	}
}

func TestCodecUnknownProtobufType(t *testing.T) {
	// A protobuf value of a type the client-go scheme does not have (a CRD,
	// an aggregated API) decodes metadata only.
	c := NewCodec()
	om := metav1.ObjectMeta{Name: "widgets.example.com", UID: "u1"}
	raw, err := (&metav1.PartialObjectMetadata{ObjectMeta: om}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	unk := &runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"}, Raw: raw}
	b, err := unk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.Decode("k", append([]byte("k8s\x00"), b...), 3)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Partial || d.Meta().GetName() != "widgets.example.com" || d.GVK.Kind != "CustomResourceDefinition" {
		t.Errorf("got partial=%v name=%s gvk=%v", d.Partial, d.Meta().GetName(), d.GVK)
	}
	if _, err := c.Encode(d.Object, d.GVK, EncodingProtobuf); err == nil {
		t.Error("encoding a metadata-only object must fail")
	}
}
