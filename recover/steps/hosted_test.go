package steps_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// hostedEnv is a hosting cluster's etcd, as its API server stores objects
// (protobuf), and an engine that journals to a temporary file.
type hostedEnv struct {
	srv     *etcdtest.Server
	store   *etcd.Store
	kind    *change.Etcd
	journal string
	eng     *change.Engine
}

func newHostedEnv(t *testing.T) *hostedEnv {
	t.Helper()
	srv := etcdtest.Start(t)
	s := etcd.NewStoreFromClient(srv.Client, etcd.Config{})
	e := &hostedEnv{srv: srv, store: s, kind: &change.Etcd{Store: s}, journal: filepath.Join(t.TempDir(), "journal.jsonl")}
	n := 0
	e.eng = &change.Engine{
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(e.journal, nil) },
		NewID:       func() string { n++; return fmt.Sprintf("change-%d", n) },
	}
	e.eng.Register(e.kind)
	return e
}

// put writes an object as the API server would: a plain put of its
// protobuf encoding at its key.
func (e *hostedEnv) put(t *testing.T, resource string, obj runtime.Object, gvk schema.GroupVersionKind) string {
	t.Helper()
	r, err := e.store.Layout.Lookup(resource)
	if err != nil {
		t.Fatal(err)
	}
	m := obj.(metav1.Object)
	b, err := e.store.Codec.Encode(obj, gvk, etcd.EncodingProtobuf)
	if err != nil {
		t.Fatal(err)
	}
	key := e.store.Layout.Key(r, m.GetNamespace(), m.GetName())
	if _, err := e.srv.Client.Put(context.Background(), key, string(b)); err != nil {
		t.Fatal(err)
	}
	return key
}

func (e *hostedEnv) value(t *testing.T, key string) []byte {
	t.Helper()
	resp, err := e.srv.Client.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0].Value
}

func (e *hostedEnv) replicas(t *testing.T, key string) int32 {
	t.Helper()
	d, err := e.store.Codec.Decode(key, e.value(t, key), 0)
	if err != nil {
		t.Fatal(err)
	}
	switch o := d.Object.(type) {
	case *appsv1.Deployment:
		return *o.Spec.Replicas
	case *appsv1.StatefulSet:
		return *o.Spec.Replicas
	}
	t.Fatalf("%s is a %T", key, d.Object)
	return 0
}

// records reads the journal; none when nothing was ever journaled.
func (e *hostedEnv) records(t *testing.T) []journal.Record {
	t.Helper()
	if _, err := os.Stat(e.journal); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

var (
	gvkDeployment  = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	gvkStatefulSet = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "StatefulSet"}
	gvkHPA         = schema.GroupVersionKind{Group: "autoscaling", Version: "v2", Kind: "HorizontalPodAutoscaler"}
)

func hostedDeploy(ns, name string, replicas int32, owners ...metav1.OwnerReference) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 4, OwnerReferences: owners,
			Labels: map[string]string{"app": "kube-apiserver"}},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas},
	}
}

var hcpOwner = metav1.OwnerReference{APIVersion: "hypershift.openshift.io/v1beta1", Kind: "HostedControlPlane", Name: "foo",
	UID: "1b2c", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}

// An API server with an owner is refused without --force, naming the
// owner and what to change instead, and nothing is written or journaled;
// with --force it is scaled, the plan says it may be reverted, and undo
// puts back the exact bytes.
func TestHostedScaleRefusesOwnedAPIServer(t *testing.T) {
	e := newHostedEnv(t)
	key := e.put(t, "deployments", hostedDeploy("clusters-foo", "kube-apiserver", 2, hcpOwner), gvkDeployment)
	orig := e.value(t, key)
	target := steps.Object{Namespace: "clusters-foo", Name: "kube-apiserver"}

	_, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, target, 3, false))
	wantRefused(t, err, "deployment clusters-foo/kube-apiserver is owned by HostedControlPlane hypershift.openshift.io/v1beta1 clusters-foo/foo: its operator will put replicas back")
	for _, want := range []string{"hint: change the HostedCluster", "controllerAvailabilityPolicy", "pass --force to scale it anyway (the operator may revert it)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal lacks %q:\n%v", want, err)
		}
	}
	if !bytes.Equal(e.value(t, key), orig) {
		t.Fatal("a refused scale wrote")
	}
	if recs := e.records(t); len(recs) > 0 {
		t.Fatalf("a refused scale was journaled: %+v", recs)
	}

	p, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, target, 3, true))
	if err != nil {
		t.Fatal(err)
	}
	if p.Op != steps.OpAPIServerScale || len(p.Items) != 1 || p.Items[0].Summary != "replicas 2 -> 3" {
		t.Fatalf("plan %+v", p)
	}
	if len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "owned by HostedControlPlane") || !strings.Contains(p.Notes[0], "scaling it anyway (--force): change the HostedCluster") {
		t.Errorf("notes %q, want the owner and that --force scales it anyway", p.Notes)
	}
	if got := e.replicas(t, key); got != 3 {
		t.Fatalf("replicas %d after --force, want 3", got)
	}
	recs := e.records(t)
	if len(recs) != 2 || recs[0].Op != steps.OpAPIServerScale || recs[0].Kind != journal.KindEtcd || !bytes.Equal(recs[0].Before.Bytes, orig) {
		t.Fatalf("journal %+v", recs)
	}

	if _, err := e.eng.Undo(context.Background(), recs, p.ID, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.value(t, key), orig) {
		t.Error("undo did not put back the exact bytes")
	}
}

// Without an owner the API server is scaled with no note; a StatefulSet is
// found when there is no Deployment of the name; a name with neither is an
// error naming both; a kube-system kube-apiserver (which the generic scale
// protects) is the command's purpose and is not refused.
func TestHostedScaleFindsTheWorkload(t *testing.T) {
	e := newHostedEnv(t)
	plain := e.put(t, "deployments", hostedDeploy("tenant", "kube-apiserver", 1), gvkDeployment)
	sts := e.put(t, "statefulsets", &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "kmc-api", Generation: 1},
		Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To(int32(1))},
	}, gvkStatefulSet)
	sys := e.put(t, "deployments", hostedDeploy("kube-system", "kube-apiserver", 1), gvkDeployment)

	for _, tt := range []struct {
		ns, name, key string
	}{{"tenant", "kube-apiserver", plain}, {"tenant", "kmc-api", sts}, {"kube-system", "kube-apiserver", sys}} {
		p, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, steps.Object{Namespace: tt.ns, Name: tt.name}, 2, false))
		if err != nil {
			t.Fatalf("%s/%s: %v", tt.ns, tt.name, err)
		}
		if len(p.Notes) != 0 {
			t.Errorf("%s/%s: notes %q for a workload without owner", tt.ns, tt.name, p.Notes)
		}
		if got := e.replicas(t, tt.key); got != 2 {
			t.Errorf("%s: replicas %d, want 2", tt.key, got)
		}
	}

	_, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, steps.Object{Namespace: "tenant", Name: "nope"}, 2, false))
	if err == nil || !strings.Contains(err.Error(), "neither deployment tenant/nope nor statefulset tenant/nope") ||
		!strings.Contains(err.Error(), "/registry/deployments/tenant/nope") || !strings.Contains(err.Error(), "/registry/statefulsets/tenant/nope") {
		t.Errorf("missing workload: %v", err)
	}

	// Already at the replicas asked for: nothing to write, nothing to
	// refuse, even with an owner.
	e.put(t, "deployments", hostedDeploy("clusters-foo", "kube-apiserver", 3, hcpOwner), gvkDeployment)
	p, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, steps.Object{Namespace: "clusters-foo", Name: "kube-apiserver"}, 3, false))
	if err != nil || len(p.Items) != 0 || len(p.Unchanged) != 1 {
		t.Errorf("unchanged: %+v, %v", p, err)
	}
}

// Replicas 0 takes the hosted control plane down: refused without
// --force, a note with it.
func TestHostedScaleToZero(t *testing.T) {
	e := newHostedEnv(t)
	key := e.put(t, "deployments", hostedDeploy("tenant", "kube-apiserver", 2), gvkDeployment)
	target := steps.Object{Namespace: "tenant", Name: "kube-apiserver"}
	_, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, target, 0, false))
	wantRefused(t, err, "takes the hosted control plane down")
	if e.replicas(t, key) != 2 {
		t.Fatal("a refused scale to 0 wrote")
	}
	p, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, target, 0, true))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "takes the hosted control plane down") {
		t.Errorf("notes %q", p.Notes)
	}
	if e.replicas(t, key) != 0 {
		t.Error("--force did not scale to 0")
	}
}

// A HorizontalPodAutoscaler that targets the API server puts replicas
// back: it is an owner too. One that targets another workload is not.
func TestHostedScaleSeesAutoscaler(t *testing.T) {
	e := newHostedEnv(t)
	key := e.put(t, "deployments", hostedDeploy("shoot--dev--web", "kube-apiserver", 2), gvkDeployment)
	hpa := func(name, target string) *autoscalingv2.HorizontalPodAutoscaler {
		return &autoscalingv2.HorizontalPodAutoscaler{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shoot--dev--web", Name: name},
			Spec: autoscalingv2.HorizontalPodAutoscalerSpec{MinReplicas: ptr.To(int32(2)), MaxReplicas: 4,
				ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: target}},
		}
	}
	e.put(t, "horizontalpodautoscalers", hpa("other", "kube-controller-manager"), gvkHPA)
	e.put(t, "horizontalpodautoscalers", hpa("kube-apiserver", "kube-apiserver"), gvkHPA)
	_, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, steps.Object{Namespace: "shoot--dev--web", Name: "kube-apiserver"}, 1, false))
	wantRefused(t, err, "is scaled by HorizontalPodAutoscaler autoscaling/v2 shoot--dev--web/kube-apiserver (minReplicas 2, maxReplicas 4)")
	if !strings.Contains(err.Error(), "hint: change minReplicas and maxReplicas of HorizontalPodAutoscaler shoot--dev--web/kube-apiserver instead") {
		t.Errorf("refusal does not say what to change: %v", err)
	}
	if strings.Contains(err.Error(), "other") {
		t.Errorf("an autoscaler of another workload counted: %v", err)
	}
	if e.replicas(t, key) != 2 {
		t.Fatal("a refused scale wrote")
	}
}

func TestOwnersOfMarkers(t *testing.T) {
	ctl := ptr.To(true)
	tests := []struct {
		name        string
		meta        metav1.ObjectMeta
		want        []string // Owner.String() of each, in order
		evidence    string   // of the first
		instead     string   // in the first's Instead
		keepsFirst  bool
		wantNoOwner bool
	}{
		{name: "none", meta: metav1.ObjectMeta{Labels: map[string]string{"app": "kube-apiserver"}}, wantNoOwner: true},
		{name: "owner reference, controller first", meta: metav1.ObjectMeta{Namespace: "ns", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "v1", Kind: "ConfigMap", Name: "other"},
			{APIVersion: "kamaji.clastix.io/v1alpha1", Kind: "TenantControlPlane", Name: "t1", Controller: ctl},
		}}, want: []string{"TenantControlPlane kamaji.clastix.io/v1alpha1 ns/t1", "ConfigMap v1 ns/other"},
			evidence: "ownerReference (controller)", instead: "spec.controlPlane.deployment.replicas of TenantControlPlane"},
		{name: "owner references win over markers", meta: metav1.ObjectMeta{Namespace: "ns",
			Labels:          map[string]string{"app.kubernetes.io/managed-by": "Helm"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "k0smotron.io/v1beta1", Kind: "Cluster", Name: "k1"}}},
			want: []string{"Cluster k0smotron.io/v1beta1 ns/k1"}, evidence: "ownerReference", instead: "spec.replicas of Cluster"},
		{name: "hypershift managed-by", meta: metav1.ObjectMeta{Namespace: "clusters-foo",
			Labels:      map[string]string{"hypershift.openshift.io/managed-by": "control-plane-operator"},
			Annotations: map[string]string{"hypershift.openshift.io/cluster": "clusters/foo"}},
			want: []string{"HyperShift's control-plane-operator"}, evidence: "label hypershift.openshift.io/managed-by=control-plane-operator",
			instead: "HostedCluster clusters/foo"},
		{name: "hypershift other key", meta: metav1.ObjectMeta{Namespace: "clusters-foo",
			Annotations: map[string]string{"hypershift.openshift.io/release-image": "x"}},
			want: []string{"HyperShift"}, evidence: "annotation hypershift.openshift.io/release-image=x", instead: "HostedCluster of namespace clusters-foo"},
		{name: "kamaji", meta: metav1.ObjectMeta{Namespace: "tenants",
			Labels: map[string]string{"kamaji.clastix.io/name": "t1", "kamaji.clastix.io/project": "kamaji"}},
			want: []string{"TenantControlPlane kamaji.clastix.io/v1alpha1 tenants/t1"}, evidence: "label kamaji.clastix.io/name=t1",
			instead: "spec.controlPlane.deployment.replicas of TenantControlPlane tenants/t1"},
		{name: "k0smotron app and cluster labels", meta: metav1.ObjectMeta{Namespace: "k0s",
			Labels: map[string]string{"app": "k0smotron", "cluster": "k1"}},
			want: []string{"Cluster k0smotron.io/v1beta1 k0s/k1"}, evidence: "labels app=k0smotron, cluster=k1", instead: "spec.replicas of Cluster k0smotron.io/v1beta1 k0s/k1"},
		{name: "k0smotron cluster label", meta: metav1.ObjectMeta{Namespace: "k0s",
			Labels: map[string]string{"k0smotron.io/cluster": "k2"}},
			want: []string{"Cluster k0smotron.io/v1beta1 k0s/k2"}, evidence: "label k0smotron.io/cluster=k2"},
		{name: "gardener control plane", meta: metav1.ObjectMeta{Namespace: "shoot--dev--web",
			Labels: map[string]string{"gardener.cloud/role": "controlplane", "app": "kubernetes", "role": "apiserver"}},
			want: []string{"gardenlet"}, evidence: "label gardener.cloud/role=controlplane", instead: "Shoot web of project dev"},
		{name: "gardener managed resource", meta: metav1.ObjectMeta{Namespace: "garden",
			Annotations: map[string]string{"resources.gardener.cloud/origin": "seed-1:garden/virtual-garden"}},
			want: []string{"ManagedResource resources.gardener.cloud/v1alpha1 garden/virtual-garden"}, evidence: "annotation resources.gardener.cloud/origin=seed-1:garden/virtual-garden",
			instead: "the ManagedResource garden/virtual-garden"},
		{name: "gardener managed resource preserving replicas", meta: metav1.ObjectMeta{Namespace: "garden",
			Annotations: map[string]string{"resources.gardener.cloud/origin": "garden/x", "resources.gardener.cloud/preserve-replicas": "true"}},
			want: []string{"ManagedResource resources.gardener.cloud/v1alpha1 garden/x"}, keepsFirst: true},
		{name: "helm release", meta: metav1.ObjectMeta{Namespace: "vc",
			Labels:      map[string]string{"app.kubernetes.io/managed-by": "Helm"},
			Annotations: map[string]string{"meta.helm.sh/release-name": "vc1", "meta.helm.sh/release-namespace": "vc"}},
			want: []string{"Helm release vc/vc1"}, evidence: "label app.kubernetes.io/managed-by=Helm", instead: "the release's values"},
		{name: "generic managed-by", meta: metav1.ObjectMeta{Labels: map[string]string{"app.kubernetes.io/managed-by": "k0smotron"}},
			want: []string{"k0smotron"}, evidence: "label app.kubernetes.io/managed-by=k0smotron", instead: "where k0smotron deploys it from"},
		{name: "operator marker wins over managed-by", meta: metav1.ObjectMeta{Namespace: "t",
			Labels: map[string]string{"app.kubernetes.io/managed-by": "Helm", "kamaji.clastix.io/name": "t1"}},
			want: []string{"TenantControlPlane kamaji.clastix.io/v1alpha1 t/t1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := steps.OwnersOf(&tt.meta)
			if tt.wantNoOwner {
				if len(got) != 0 {
					t.Fatalf("owners %+v, want none", got)
				}
				return
			}
			var names []string
			for _, o := range got {
				names = append(names, o.String())
			}
			if strings.Join(names, "; ") != strings.Join(tt.want, "; ") {
				t.Fatalf("owners %q, want %q", names, tt.want)
			}
			if tt.evidence != "" && got[0].Evidence != tt.evidence {
				t.Errorf("evidence %q, want %q", got[0].Evidence, tt.evidence)
			}
			if !strings.Contains(got[0].Instead, tt.instead) || got[0].Instead == "" {
				t.Errorf("instead %q, want it to contain %q", got[0].Instead, tt.instead)
			}
			if got[0].KeepsReplicas != tt.keepsFirst {
				t.Errorf("keeps replicas %v, want %v", got[0].KeepsReplicas, tt.keepsFirst)
			}
		})
	}
}

// An owner that keeps the replicas it finds (Gardener's preserve-replicas)
// is a note, not a refusal.
func TestHostedScaleNotesOwnerThatKeepsReplicas(t *testing.T) {
	e := newHostedEnv(t)
	d := hostedDeploy("garden", "virtual-garden-kube-apiserver", 2)
	d.Annotations = map[string]string{"resources.gardener.cloud/origin": "garden/virtual-garden", "resources.gardener.cloud/preserve-replicas": "true"}
	key := e.put(t, "deployments", d, gvkDeployment)
	p, err := e.eng.Run(context.Background(), steps.ScaleAPIServer(e.kind, steps.Object{Namespace: "garden", Name: "virtual-garden-kube-apiserver"}, 3, false))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "keeps the replicas it finds") {
		t.Errorf("notes %q", p.Notes)
	}
	if e.replicas(t, key) != 3 {
		t.Error("not scaled")
	}
}
