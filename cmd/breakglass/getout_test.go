package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

var gvkSecret = schema.GroupVersionKind{Version: "v1", Kind: "Secret"}

// modRevision is the key's ModRevision, which get reports as resourceVersion.
func (e *etcdEnv) modRevision(t *testing.T, key string) string {
	t.Helper()
	resp, err := e.srv.Client.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("get %s: %v", key, err)
	}
	return strconv.FormatInt(resp.Kvs[0].ModRevision, 10)
}

func seedDeployments(t *testing.T, e *etcdEnv) {
	t.Helper()
	for _, d := range []struct {
		name     string
		replicas int32
	}{{"web", 3}, {"api", 5}} {
		e.put(t, "deployments", "shop", d.name, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: d.name, Generation: 1, CreationTimestamp: metav1.Now(), Labels: map[string]string{"app": d.name},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl-client-side-apply", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "apps/v1"}}},
			Spec: appsv1.DeploymentSpec{Replicas: &d.replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": d.name}},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": d.name}},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/" + d.name + ":1"}}}}},
		}, gvkDeploy)
	}
}

// objectList is kubectl's List, with typed items.
type objectList[T any] struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        map[string]any `json:"metadata"`
	Items           []T            `json:"items"`
}

func TestGetJSONIsKubectlObject(t *testing.T) {
	e := newEtcdEnv(t)
	seedDeployments(t, e)
	rv := e.modRevision(t, "/registry/deployments/shop/web")

	out, errOut, code := e.run(t, "get", "deployment", "web", "-n", "shop", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var d appsv1.Deployment
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("not one object: %v\n%s", err, out)
	}
	if d.Kind != "Deployment" || d.APIVersion != "apps/v1" || d.Spec.Replicas == nil || *d.Spec.Replicas != 3 ||
		d.Name != "web" || d.Namespace != "shop" || d.ResourceVersion != rv {
		t.Errorf("object: %s %s %s/%s replicas %v resourceVersion %q (want %s)", d.APIVersion, d.Kind, d.Namespace, d.Name, d.Spec.Replicas, d.ResourceVersion, rv)
	}
	// kubectl's JSONPrinter: json.MarshalIndent with four spaces, keys sorted.
	if !strings.HasPrefix(out, "{\n    \"apiVersion\": \"apps/v1\",\n    \"kind\": \"Deployment\",\n    \"metadata\": {\n        \"creationTimestamp\"") || !strings.HasSuffix(out, "}\n") {
		t.Errorf("not kubectl's layout:\n%s", out)
	}
	for _, word := range []string{`"type"`, `"modRevision"`, `"key"`, `"encoding"`, `"managedFields"`} {
		if strings.Contains(out, word) {
			t.Errorf("%s in the object:\n%s", word, out)
		}
	}
	out, _, _ = e.run(t, "get", "deployment", "web", "-n", "shop", "-o", "json", "--show-managed-fields")
	if !strings.Contains(out, `"manager": "kubectl-client-side-apply"`) {
		t.Errorf("--show-managed-fields:\n%s", out)
	}

	// YAML: the same object through sigs.k8s.io/yaml.
	out, errOut, code = e.run(t, "get", "deploy", "web", "-n", "shop", "-o", "yaml")
	if code != 0 {
		t.Fatalf("yaml: exit %d: %s", code, errOut)
	}
	var dy appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(out), &dy); err != nil {
		t.Fatalf("yaml: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(d, dy) {
		t.Errorf("yaml and json differ:\n%s", out)
	}
	if !strings.HasPrefix(out, "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n") || strings.Contains(out, "---") {
		t.Errorf("not kubectl's yaml:\n%s", out)
	}
}

func TestGetJSONListIsKubectlList(t *testing.T) {
	e := newEtcdEnv(t)
	seedDeployments(t, e)
	seedPods(t, e)
	e.srv.Client.Delete(context.Background(), "/registry/pods/shop/zz-sealed")

	for _, args := range [][]string{
		{"get", "deployments", "-n", "shop", "-o", "json"},
		{"get", "deploy", "web", "api", "-n", "shop", "-o", "json"},
		{"get", "deployments.apps", "-n", "shop", "-o", "yaml"},
	} {
		out, errOut, code := e.run(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		var l objectList[appsv1.Deployment]
		if err := yaml.UnmarshalStrict([]byte(out), &l); err != nil {
			t.Fatalf("%v: not a List: %v\n%s", args, err, out)
		}
		if l.Kind != "List" || l.APIVersion != "v1" || !reflect.DeepEqual(l.Metadata, map[string]any{"resourceVersion": ""}) || len(l.Items) != 2 {
			t.Fatalf("%v: %s %s %v, %d items", args, l.APIVersion, l.Kind, l.Metadata, len(l.Items))
		}
		replicas := map[string]int32{}
		for _, d := range l.Items {
			if d.Kind != "Deployment" || d.APIVersion != "apps/v1" {
				t.Errorf("%v: item %s has %s %s", args, d.Name, d.APIVersion, d.Kind)
			}
			replicas[d.Name] = *d.Spec.Replicas
		}
		if replicas["web"] != 3 || replicas["api"] != 5 {
			t.Errorf("%v: replicas %v", args, replicas)
		}
		if args[len(args)-1] == "json" && !strings.HasPrefix(out, "{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n        {\n            \"apiVersion\": \"apps/v1\",") {
			t.Errorf("%v: not kubectl's layout:\n%s", args, out)
		}
	}

	// Several resources: one List of them all.
	out, errOut, code := e.run(t, "get", "deployments,pods", "-n", "shop", "-l", "app in (web,db)", "-o", "json")
	var l objectList[map[string]any]
	if err := json.Unmarshal([]byte(out), &l); code != 0 || err != nil {
		t.Fatalf("two resources: exit %d %v %s\n%s", code, err, errOut, out)
	}
	var kinds []string
	for _, it := range l.Items {
		kinds = append(kinds, it["kind"].(string)+"/"+it["metadata"].(map[string]any)["name"].(string))
	}
	if strings.Join(kinds, " ") != "Deployment/web Pod/db-1 Pod/web-1 Pod/web-2" {
		t.Errorf("two resources: %v", kinds)
	}

	// Nothing found: an empty List, as kubectl prints it.
	out, errOut, code = e.run(t, "get", "deployments", "-n", "empty", "-o", "json")
	if code != 0 || out != "{\n    \"apiVersion\": \"v1\",\n    \"items\": [],\n    \"kind\": \"List\",\n    \"metadata\": {\n        \"resourceVersion\": \"\"\n    }\n}\n" || strings.Contains(errOut, "No deployments") {
		t.Errorf("empty json List: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = e.run(t, "get", "deployments", "-n", "empty", "-o", "yaml")
	if code != 0 || out != "apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  resourceVersion: \"\"\n" {
		t.Errorf("empty yaml List: exit %d\n%s", code, out)
	}
}

func TestGetUndecodableValues(t *testing.T) {
	e := newEtcdEnv(t)
	seedPods(t, e)

	// kubectl's shape has no place for the encrypted pod: stderr, exit 1,
	// the rest of the List still printed and valid.
	out, errOut, code := e.run(t, "get", "pods", "-n", "shop", "-o", "json")
	var l objectList[corev1.Pod]
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("not a List: %v\n%s", err, out)
	}
	if code != 1 || len(l.Items) != 3 || !strings.Contains(errOut, "breakglass: /registry/pods/shop/zz-sealed: encrypted at rest (aescbc:v1:key1)") ||
		!strings.Contains(errOut, "1 value(s) could not be decoded") || !strings.Contains(errOut, "hint: --show-storage") {
		t.Errorf("exit %d, %d items, stderr:\n%s", code, len(l.Items), errOut)
	}
	out, errOut, code = e.run(t, "get", "pod", "zz-sealed", "-n", "shop", "-o", "yaml")
	if code != 1 || out != "" || !strings.Contains(errOut, "encrypted at rest") {
		t.Errorf("one encrypted object: exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	// With a selector it cannot be matched: said so, not printed.
	out, errOut, code = e.run(t, "get", "pods", "-n", "shop", "-l", "app=web", "-o", "json")
	if err := json.Unmarshal([]byte(out), &l); err != nil || code != 1 || len(l.Items) != 2 || !strings.Contains(errOut, "cannot tell whether it matches") {
		t.Errorf("selector: exit %d, %d items, %v, stderr:\n%s", code, len(l.Items), err, errOut)
	}
	// The storage view reports it in band, as before.
	out, _, code = e.run(t, "get", "pod", "zz-sealed", "-n", "shop", "-o", "json", "--show-storage")
	if lines := jsonLines(t, out); code != 0 || len(lines) != 1 || lines[0]["type"] != "error" || lines[0]["key"] != "/registry/pods/shop/zz-sealed" {
		t.Errorf("storage view: exit %d\n%s", code, out)
	}
	// Tables show it as a row, as before.
	out, _, code = e.run(t, "get", "pods", "-n", "shop")
	if code != 0 || !strings.Contains(out, "<encrypted aescbc:v1:key1>") {
		t.Errorf("table: exit %d\n%s", code, out)
	}

	// A protobuf type outside the scheme: its metadata, with a note.
	om := metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "widgets.example.com", Labels: map[string]string{"a": "b"}}}
	raw, _ := om.Marshal()
	unk := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"}, Raw: raw}
	ub, _ := unk.Marshal()
	e.srv.Client.Put(context.Background(), "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com", "k8s\x00"+string(ub))
	out, errOut, code = e.run(t, "get", "crd", "widgets.example.com", "-o", "json")
	var crd map[string]any
	if err := json.Unmarshal([]byte(out), &crd); err != nil || code != 0 {
		t.Fatalf("partial: exit %d %v\n%s%s", code, err, out, errOut)
	}
	md, _ := crd["metadata"].(map[string]any)
	if crd["apiVersion"] != "apiextensions.k8s.io/v1" || crd["kind"] != "CustomResourceDefinition" || md["name"] != "widgets.example.com" ||
		!strings.Contains(errOut, "only apiVersion, kind and metadata are shown") {
		t.Errorf("partial: %v\nstderr: %s", crd, errOut)
	}
}

func TestGetShowStorageTable(t *testing.T) {
	e := newEtcdEnv(t)
	seedDeployments(t, e)
	seedPods(t, e)
	for _, args := range [][]string{
		{"get", "deployments", "-n", "shop", "--show-storage"},
		{"get", "deployments", "-n", "shop", "-o", "wide", "--show-storage"},
		{"get", "pods", "-n", "shop", "-o", "wide", "--show-storage"},
	} {
		out, errOut, code := e.run(t, args...)
		header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
		if code != 0 {
			t.Fatalf("%v: exit %d %s", args, code, errOut)
		}
		for _, c := range storageColumns {
			if n := strings.Count(" "+strings.Join(header, " ")+" ", " "+c+" "); n != 1 {
				t.Errorf("%v: column %s %d times in %v", args, c, n, header)
			}
		}
		if !strings.Contains(out, "protobuf") || !strings.Contains(out, "/registry/"+args[1]+"/shop/") {
			t.Errorf("%v:\n%s", args, out)
		}
	}
	out, _, _ := e.run(t, "get", "pods", "-n", "shop", "--show-storage")
	if !strings.Contains(out, "zz-sealed") || !strings.Contains(out, "encrypted") {
		t.Errorf("undecodable row:\n%s", out)
	}
	if _, _, code := e.run(t, "get", "pods", "-o", "name", "--show-storage"); code != 2 {
		t.Errorf("-o name --show-storage: exit %d, want 2", code)
	}
}

const (
	secretValue = "s3cret-value-DO-NOT-PRINT"
	tokenValue  = "t0ken-value-DO-NOT-PRINT"
)

// seedSecrets stores a Secret as the API server does (protobuf), with the
// last-applied annotation kubectl apply leaves, and one stored as JSON
// (--storage-media-type=application/json).
func seedSecrets(t *testing.T, e *etcdEnv) {
	t.Helper()
	lastApplied := `{"apiVersion":"v1","data":{"password":"` + base64.StdEncoding.EncodeToString([]byte(secretValue)) + `"},"kind":"Secret","metadata":{"annotations":{},"name":"db","namespace":"shop"}}`
	e.put(t, "secrets", "shop", "db", &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db", CreationTimestamp: metav1.Now(),
			Annotations: map[string]string{corev1.LastAppliedConfigAnnotation: lastApplied, "team": "shop"}},
		Data: map[string][]byte{"password": []byte(secretValue), "user": []byte("app")},
		Type: corev1.SecretTypeOpaque,
	}, gvkSecret)
	e.srv.Client.Put(context.Background(), "/registry/secrets/shop/token",
		`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"token","namespace":"shop"},"data":{"token":"`+base64.StdEncoding.EncodeToString([]byte(tokenValue))+`"},"type":"Opaque"}`)
}

// leaks reports which secret values s holds, in clear or in base64.
func leaks(s string) []string {
	var found []string
	for _, v := range []string{secretValue, tokenValue} {
		for _, f := range []string{v, base64.StdEncoding.EncodeToString([]byte(v))} {
			if strings.Contains(s, f) {
				found = append(found, f)
			}
		}
	}
	return found
}

func TestGetSecretsRedacted(t *testing.T) {
	e := newEtcdEnv(t)
	seedSecrets(t, e)

	outputs := [][]string{
		{"-o", "json"}, {"-o", "yaml"}, {"-o", "json", "--show-storage"}, {"-o", "yaml", "--show-storage"},
		{}, {"-o", "wide"}, {"-o", "wide", "--show-storage"}, {"-o", "name"},
	}
	for _, o := range outputs {
		for _, target := range [][]string{{"secrets"}, {"secret", "db"}, {"secret", "token"}} {
			args := append(append(append([]string{"get"}, target...), "-n", "shop"), o...)
			out, errOut, code := e.run(t, args...)
			if code != 0 {
				t.Fatalf("%v: exit %d %s", args, code, errOut)
			}
			if l := leaks(out + errOut); len(l) > 0 {
				t.Errorf("%v leaks %v:\n%s", args, l, out)
			}
			if strings.Contains(errOut, "--show-secrets") {
				t.Errorf("%v: a warning without --show-secrets: %s", args, errOut)
			}
		}
	}

	// The values are REDACTED, the keys stay, in json, yaml and the storage
	// view; the last-applied annotation is redacted, the others are not.
	check := func(what string, obj map[string]any) {
		t.Helper()
		data, _ := obj["data"].(map[string]any)
		md, _ := obj["metadata"].(map[string]any)
		ann, _ := md["annotations"].(map[string]any)
		if !reflect.DeepEqual(data, map[string]any{"password": redacted, "user": redacted}) {
			t.Errorf("%s: data %v", what, data)
		}
		if ann[corev1.LastAppliedConfigAnnotation] != redacted || ann["team"] != "shop" {
			t.Errorf("%s: annotations %v", what, ann)
		}
		if obj["kind"] != "Secret" || obj["type"] != "Opaque" || md["name"] != "db" {
			t.Errorf("%s: %v", what, obj)
		}
	}
	var obj map[string]any
	out, _, _ := e.run(t, "get", "secret", "db", "-n", "shop", "-o", "json")
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		t.Fatal(err)
	}
	check("json", obj)
	out, _, _ = e.run(t, "get", "secret", "db", "-n", "shop", "-o", "yaml")
	obj = nil
	if err := yaml.Unmarshal([]byte(out), &obj); err != nil {
		t.Fatal(err)
	}
	check("yaml", obj)
	out, _, _ = e.run(t, "get", "secrets", "-n", "shop", "-o", "json", "--show-storage")
	check("storage view", jsonLines(t, out)[0]["object"].(map[string]any))
	out, _, _ = e.run(t, "get", "secrets", "-n", "shop", "-o", "yaml", "--show-storage")
	var w struct{ Object map[string]any }
	if err := yaml.Unmarshal([]byte(strings.Split(out, "---\n")[0]), &w); err != nil {
		t.Fatal(err)
	}
	check("storage view yaml", w.Object)
	out, _, _ = e.run(t, "get", "secret", "token", "-n", "shop", "-o", "json")
	if err := json.Unmarshal([]byte(out), &obj); err != nil || !reflect.DeepEqual(obj["data"], map[string]any{"token": redacted}) {
		t.Errorf("secret stored as JSON: %v\n%s", err, out)
	}

	// --show-secrets: as stored (base64, as kubectl prints), with a warning.
	out, errOut, code := e.run(t, "get", "secret", "db", "-n", "shop", "-o", "json", "--show-secrets")
	var s corev1.Secret
	if err := json.Unmarshal([]byte(out), &s); err != nil || code != 0 {
		t.Fatalf("--show-secrets: exit %d %v\n%s", code, err, out)
	}
	if string(s.Data["password"]) != secretValue || !strings.Contains(s.Annotations[corev1.LastAppliedConfigAnnotation], `"password"`) {
		t.Errorf("--show-secrets: %v %v", s.Data, s.Annotations)
	}
	if !strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(secretValue))) {
		t.Errorf("--show-secrets does not print base64:\n%s", out)
	}
	if n := strings.Count(errOut, "\n"); n != 1 || !strings.Contains(errOut, "warning: --show-secrets") {
		t.Errorf("--show-secrets: want one warning line, stderr:\n%s", errOut)
	}
	for _, o := range [][]string{{"-o", "yaml"}, {"-o", "json", "--show-storage"}} {
		out, errOut, _ := e.run(t, append([]string{"get", "secrets", "-n", "shop", "--show-secrets"}, o...)...)
		if !strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(secretValue))) || !strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(tokenValue))) ||
			!strings.Contains(errOut, "warning: --show-secrets") {
			t.Errorf("--show-secrets %v: %v\n%s", o, leaks(out), out)
		}
	}
}

func TestRedactSecret(t *testing.T) {
	lastApplied := map[string]string{corev1.LastAppliedConfigAnnotation: `{"data":{"k":"dmFsdWU="}}`, "other": "kept"}
	typed := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns", ResourceVersion: "42", Annotations: lastApplied},
		Data:       map[string][]byte{"k": []byte("value"), "empty": nil},
		StringData: map[string]string{"plain": "value"},
		Type:       corev1.SecretTypeOpaque,
	}
	unstr := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{"name": "s", "annotations": map[string]any{corev1.LastAppliedConfigAnnotation: "{}"}},
		"data":     map[string]any{"k": "dmFsdWU="},
	}}
	partial := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: "s", Annotations: lastApplied}}
	cm := &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: "c", Annotations: lastApplied}, Data: map[string]string{"k": "value"}}
	notCore := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "example.com/v1", "kind": "Secret", "data": map[string]any{"k": "value"}}}

	for _, c := range []struct {
		name string
		in   runtime.Object
		// want is the JSON the printers get; "" means obj unchanged.
		want string
	}{
		{"typed", typed, `{"apiVersion":"v1","data":{"empty":"REDACTED","k":"REDACTED"},"kind":"Secret","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"REDACTED","other":"kept"},"creationTimestamp":null,"name":"s","namespace":"ns","resourceVersion":"42"},"stringData":{"plain":"REDACTED"},"type":"Opaque"}`},
		{"unstructured", unstr, `{"apiVersion":"v1","data":{"k":"REDACTED"},"kind":"Secret","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"REDACTED"},"name":"s"}}`},
		{"metadata only", partial, `{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","creationTimestamp":null,"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"REDACTED","other":"kept"}}}`},
		{"configmap", cm, ""},
		{"secret of another group", notCore, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, _ := json.Marshal(c.in)
			got, err := redactSecret(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if after, _ := json.Marshal(c.in); !bytes.Equal(before, after) {
				t.Errorf("the input was changed:\n%s\n%s", before, after)
			}
			if c.want == "" {
				if got != c.in {
					t.Errorf("not a Secret, but not returned as it is: %#v", got)
				}
				return
			}
			b, _ := json.Marshal(got)
			if string(b) != c.want {
				t.Errorf("got  %s\nwant %s", b, c.want)
			}
		})
	}
}

// TestKubePrinterMatchesKubectl checks the streamed output against what
// kubectl's printers do with the whole object or List:
// json.MarshalIndent(obj, "", "    ") and sigs.k8s.io/yaml.
func TestKubePrinterMatchesKubectl(t *testing.T) {
	replicas := int32(2)
	long := strings.Repeat("a long value with spaces ", 8) + "& <html> \"quoted\"\nand a second line\n"
	objs := []runtime.Object{
		&corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Annotations: map[string]string{"long": long, "indent": "  leading spaces"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i", Command: []string{"sh", "-c", long}}},
				Overhead: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")}}},
		&appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Name: "d", Labels: map[string]string{"a": "1"}}, Spec: appsv1.DeploymentSpec{Replicas: &replicas}},
		&unstructured.Unstructured{Object: map[string]any{"apiVersion": "example.com/v1", "kind": "Widget",
			"metadata": map[string]any{"name": "w"}, "spec": map[string]any{"ratio": 0.5, "big": int64(1) << 60, "list": []any{}, "empty": map[string]any{}, "nil": nil}}},
	}
	for n := 0; n <= len(objs); n++ {
		list := &unstructured.UnstructuredList{Object: map[string]any{"apiVersion": "v1", "kind": "List", "metadata": map[string]any{"resourceVersion": ""}}}
		for _, o := range objs[:n] {
			u, err := kubeView(o)
			if err != nil {
				t.Fatal(err)
			}
			list.Items = append(list.Items, *u)
		}
		wantJSON, _ := json.MarshalIndent(list, "", "    ")
		wantJSON = append(wantJSON, '\n')
		wantYAML, _ := yaml.Marshal(list)
		for _, isYAML := range []bool{false, true} {
			var buf bytes.Buffer
			p := &kubePrinter{w: &buf, yaml: isYAML}
			for _, o := range objs[:n] {
				if err := p.Print(o); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			want := wantJSON
			if isYAML {
				want = wantYAML
			}
			if buf.String() != string(want) {
				t.Errorf("%d items, yaml %v:\ngot\n%s\nwant\n%s", n, isYAML, buf.String(), want)
			}
		}
	}
	for _, o := range objs {
		u, _ := kubeView(o)
		wantJSON, _ := json.MarshalIndent(u, "", "    ")
		wantYAML, _ := yaml.Marshal(u)
		for _, isYAML := range []bool{false, true} {
			var buf bytes.Buffer
			p := &kubePrinter{w: &buf, yaml: isYAML, single: true}
			if err := p.Print(o); err != nil {
				t.Fatal(err)
			}
			p.Close()
			want := string(wantJSON) + "\n"
			if isYAML {
				want = string(wantYAML)
			}
			if buf.String() != want {
				t.Errorf("single, yaml %v:\ngot\n%s\nwant\n%s", isYAML, buf.String(), want)
			}
		}
	}
	// What kubectl holds is the API server's JSON read back unstructured:
	// integers stay integers, keys sorted.
	u, _ := kubeView(objs[2])
	b, _ := json.Marshal(u)
	if !strings.Contains(string(b), `"big":1152921504606846976`) {
		t.Errorf("integers: %s", b)
	}
}
