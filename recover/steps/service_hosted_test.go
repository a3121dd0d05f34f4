package steps

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// hostingEtcd is a hosting cluster's etcd holding a hosted
// controller-manager Deployment (replicas 2) and its running pod, as its
// API server stores them.
type hostingEtcd struct {
	srv    *etcdtest.Server
	store  *etcd.Store
	depKey string
	podKey string
}

const (
	hostedNS   = "clusters-foo"
	hostedName = "kube-controller-manager"
)

func newHostingEtcd(t *testing.T, owners []metav1.OwnerReference) *hostingEtcd {
	t.Helper()
	srv := etcdtest.Start(t)
	h := &hostingEtcd{srv: srv, store: etcd.NewStoreFromClient(srv.Client, etcd.Config{})}
	sel := map[string]string{"app": hostedName}
	h.depKey = h.put(t, "deployments", &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: hostedName, Namespace: hostedNS, UID: "dep-uid", Generation: 1, OwnerReferences: owners},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel}}},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2}}, appsv1.SchemeGroupVersion.WithKind("Deployment"))
	h.podKey = h.put(t, "pods", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: hostedName + "-abc", Namespace: hostedNS, UID: "pod-uid", Labels: sel},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}, corev1.SchemeGroupVersion.WithKind("Pod"))
	// Another workload's pod in the namespace, and a finished one of
	// this workload: neither is waited for.
	h.put(t, "pods", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "kube-apiserver-xyz", Namespace: hostedNS, UID: "other", Labels: map[string]string{"app": "kube-apiserver"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}, corev1.SchemeGroupVersion.WithKind("Pod"))
	h.put(t, "pods", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: hostedName + "-old", Namespace: hostedNS, UID: "old", Labels: sel},
		Status: corev1.PodStatus{Phase: corev1.PodSucceeded}}, corev1.SchemeGroupVersion.WithKind("Pod"))
	return h
}

func (h *hostingEtcd) put(t *testing.T, resource string, obj runtime.Object, gvk schema.GroupVersionKind) string {
	t.Helper()
	r, err := h.store.Layout.Lookup(resource)
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.store.Codec.Encode(obj, gvk, etcd.EncodingProtobuf)
	if err != nil {
		t.Fatal(err)
	}
	m := obj.(metav1.Object)
	key := h.store.Layout.Key(r, m.GetNamespace(), m.GetName())
	if _, err := h.srv.Client.Put(context.Background(), key, string(b)); err != nil {
		t.Fatal(err)
	}
	return key
}

func (h *hostingEtcd) replicas(t *testing.T) int32 {
	t.Helper()
	resp, err := h.srv.Client.Get(context.Background(), h.depKey)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("%s: %v", h.depKey, err)
	}
	d, err := h.store.Codec.Decode(h.depKey, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	if err != nil {
		t.Fatal(err)
	}
	return *d.Object.(*appsv1.Deployment).Spec.Replicas
}

// controller stands in for the hosting cluster's deployment controller:
// once the Deployment is at 0 replicas in etcd, it deletes the pod, after
// a delay. It records whether a kubelet was still running then.
func (h *hostingEtcd) controller(t *testing.T, ctx context.Context, delay time.Duration, seen func()) {
	go func() {
		for ctx.Err() == nil {
			resp, err := h.srv.Client.Get(ctx, h.depKey)
			if err == nil && len(resp.Kvs) == 1 {
				d, err := h.store.Codec.Decode(h.depKey, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
				if err == nil && *d.Object.(*appsv1.Deployment).Spec.Replicas == 0 {
					time.Sleep(delay)
					seen()
					h.srv.Client.Delete(ctx, h.podKey)
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
}

// TestServiceKubeletStopHostedControllerManager: with a hosted
// controller-manager, kubelet stop scales its Deployment to 0 in the
// hosting cluster's etcd first, waits until its pod is gone there, and
// only then stops the kubelets; the undo starts the kubelets and then puts
// the replicas back (2, the journal's before-value); controller-manager
// restore does the same after a kubelet start.
func TestServiceKubeletStopHostedControllerManager(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 2, kubelets: []string{"node2"}})
	h := newHostingEtcd(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.kind.Etcd = &change.Etcd{Store: h.store}
	f.kind.HostedControllerManager = &Object{Namespace: hostedNS, Name: hostedName}
	f.kind.Wait = 20 * time.Second
	cps, workers := []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}
	e := f.engine()
	e.Register(f.kind.Etcd)

	// The plan: the etcd item first, then the kubelet; no controller-manager
	// on the control-plane node is not a refusal.
	p, err := PlanKubeletStop(f.kind, cps, workers, 1, false)(ctx, "plan-1")
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	if len(p.Items) != 2 || p.Items[0].Kind != change.KindEtcd || p.Items[0].Target.Key != h.depKey || p.Items[1].Kind != KindService {
		t.Fatalf("plan items %q", summaries(p.Items))
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "scaled to 0 in the hosting cluster's etcd") {
		t.Errorf("notes %q", p.Notes)
	}

	var kubeletAtDelete atomic.Bool
	h.controller(t, ctx, 500*time.Millisecond, func() { kubeletAtDelete.Store(f.procs["node2/kubelet"].running()) })
	p, err = e.Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false))
	if err != nil {
		t.Fatalf("stop: %v; log %q", err, f.logged())
	}
	if !kubeletAtDelete.Load() {
		t.Errorf("the kubelet was stopped before the hosted controller-manager's pod was gone")
	}
	if h.replicas(t) != 0 {
		t.Errorf("replicas %d after the stop", h.replicas(t))
	}
	if f.procs["node2/kubelet"].running() {
		t.Errorf("node2's kubelet runs after the stop")
	}
	recs := f.records()
	var kinds []string
	for _, r := range journal.Find(recs, p.ID) {
		kinds = append(kinds, r.Kind+" "+r.Type)
	}
	if want := []string{"etcd intent", "etcd outcome", "node intent", "node outcome"}; strings.Join(kinds, ",") != strings.Join(want, ",") {
		t.Errorf("journal %q, want %q", kinds, want)
	}

	// Undo: the kubelet first, then the replicas.
	u, err := e.Undo(ctx, recs, p.ID, false)
	if err != nil {
		t.Fatalf("undo: %v; log %q", err, f.logged())
	}
	if len(u.Items) != 2 || u.Items[0].Kind != KindService || u.Items[1].Kind != change.KindEtcd {
		t.Fatalf("undo items %q", summaries(u.Items))
	}
	if h.replicas(t) != 2 || !f.procs["node2/kubelet"].running() {
		t.Errorf("after the undo: replicas %d, kubelet running %v", h.replicas(t), f.procs["node2/kubelet"].running())
	}

	// kubelet start, then controller-manager restore.
	h.put(t, "pods", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: hostedName + "-abc", Namespace: hostedNS, UID: "pod-uid-2", Labels: map[string]string{"app": hostedName}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}, corev1.SchemeGroupVersion.WithKind("Pod"))
	h.controller(t, ctx, 0, func() {})
	stop, err := e.Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false))
	if err != nil {
		t.Fatalf("second stop: %v", err)
	}
	recs = f.records()
	_, err = PlanControllerManagerRestore(f.kind, cps, workers, recs, false)(ctx, "restore-1")
	if !refused(err) {
		t.Fatalf("restore with the kubelet down: %v, want refused", err)
	}
	if _, err := e.Run(ctx, PlanKubeletStart(f.kind, workers, recs)); err != nil {
		t.Fatalf("start: %v", err)
	}
	if h.replicas(t) != 0 {
		t.Errorf("kubelet start put the replicas back: that is restore's")
	}
	r, err := e.Run(ctx, PlanControllerManagerRestore(f.kind, cps, workers, f.records(), false))
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if len(r.Items) != 1 || r.Items[0].Kind != change.KindEtcd || h.replicas(t) != 2 {
		t.Errorf("restore items %q, replicas %d", summaries(r.Items), h.replicas(t))
	}
	// Again: nothing to put back, said so.
	again, err := PlanControllerManagerRestore(f.kind, cps, workers, f.records(), false)(ctx, "restore-2")
	if err != nil || len(again.Items) != 0 || !strings.Contains(strings.Join(again.Notes, "\n"), stop.ID) {
		t.Errorf("restore again: %v, items %q, notes %q", err, summaries(again.Items), again.Notes)
	}
}

// TestServiceKubeletStopHostedOwnerRefused: a hosted controller-manager
// whose operator will put its replicas back refuses the stop without
// force, naming the owner, with nothing changed or journaled; with force
// the owner is a note.
func TestServiceKubeletStopHostedOwnerRefused(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 2, kubelets: []string{"node2"}})
	h := newHostingEtcd(t, []metav1.OwnerReference{{APIVersion: "hypershift.openshift.io/v1beta1", Kind: "HostedControlPlane", Name: "foo", UID: "hcp", Controller: ptr.To(true)}})
	ctx := context.Background()
	f.kind.Etcd = &change.Etcd{Store: h.store}
	f.kind.HostedControllerManager = &Object{Namespace: hostedNS, Name: hostedName}
	cps, workers := []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}
	e := f.engine()
	e.Register(f.kind.Etcd)
	_, err := e.Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false))
	if !refused(err) || !strings.Contains(err.Error(), "HostedControlPlane hypershift.openshift.io/v1beta1 "+hostedNS+"/foo") {
		t.Fatalf("stop of an owned controller-manager: %v, want refused naming the owner", err)
	}
	if h.replicas(t) != 2 || !f.procs["node2/kubelet"].running() {
		t.Errorf("the refused stop changed something: replicas %d, kubelet running %v", h.replicas(t), f.procs["node2/kubelet"].running())
	}
	if got := f.logged(); strings.Contains(strings.Join(got, "\n"), "started") {
		t.Errorf("items started: %q", got)
	}
	p, err := PlanKubeletStop(f.kind, cps, workers, 1, true)(ctx, "plan-2")
	if err != nil || !strings.Contains(strings.Join(p.Notes, "\n"), "scaling it anyway (--force)") {
		t.Errorf("forced plan: %v, notes %q", err, p.Notes)
	}

	// A pod the hosting cluster does not remove fails the stop before any
	// kubelet stops; the scale is journaled and undone.
	f.kind.Wait = time.Second
	_, err = e.Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, true))
	if err == nil || !strings.Contains(err.Error(), "its pods are not gone") || !strings.Contains(err.Error(), hostedName+"-abc") {
		t.Fatalf("stop with the pod left: %v", err)
	}
	if !f.procs["node2/kubelet"].running() {
		t.Errorf("the kubelet was stopped while the hosted controller-manager's pod was left")
	}
	recs := f.records()
	var id string
	for _, r := range recs {
		if r.Kind == journal.KindEtcd {
			id = r.ID
		}
	}
	if _, err := e.Undo(ctx, recs, id, false); err != nil {
		t.Fatalf("undo of the failed stop: %v", err)
	}
	if h.replicas(t) != 2 {
		t.Errorf("replicas %d after the undo", h.replicas(t))
	}
}
