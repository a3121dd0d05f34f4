package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
)

var deployGVK = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}

func newStore(t *testing.T) (*etcd.Store, *etcdtest.Server) {
	t.Helper()
	srv := etcdtest.Start(t)
	s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, srv
}

func put(t *testing.T, s *etcd.Store, cli *clientv3.Client, resource, ns, name string, obj runtime.Object, gvk schema.GroupVersionKind) int64 {
	t.Helper()
	r, err := s.Layout.Lookup(resource)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Codec.Encode(obj, gvk, etcd.EncodingProtobuf)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(context.Background(), s.Layout.Key(r, ns, name), string(b))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func pod(ns, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
}

func deployment(ns, name string, replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 4},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas}, Status: appsv1.DeploymentStatus{ObservedGeneration: 4}}
}

var podGVK = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}

func TestListPinnedPagesAndFilters(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	for i := range 50 {
		ns := "a"
		if i%2 == 1 {
			ns = "b"
		}
		put(t, s, srv.Client, "pods", ns, fmt.Sprintf("p%02d", i), pod(ns, fmt.Sprintf("p%02d", i), fmt.Sprintf("node-%d", i%5), map[string]string{"app": fmt.Sprint(i % 3)}), podGVK)
	}
	// A value breakglass cannot decode must not stop the listing.
	srv.Client.Put(ctx, "/registry/pods/a/zz-encrypted", "k8s:enc:aescbc:v1:key1:xxxx")
	pods, _ := s.Layout.Lookup("pods")

	// Small pages, and a write after the first page: the listing is pinned
	// to its first revision, so it sees neither the new pod nor the change.
	var names []string
	var errs int
	first := true
	st, err := s.List(ctx, pods, etcd.ListOptions{PageSize: 7, Workers: 3}, func(o *etcd.Object) error {
		if first {
			first = false
			put(t, s, srv.Client, "pods", "a", "p00-late", pod("a", "p00-late", "n", nil), podGVK)
		}
		if o.Err != nil {
			errs++
			return nil
		}
		names = append(names, o.Namespace+"/"+o.Name)
		if o.Decoded.Meta().GetResourceVersion() != fmt.Sprint(o.ModRevision) {
			t.Errorf("%s: resourceVersion %s, ModRevision %d", o.Key, o.Decoded.Meta().GetResourceVersion(), o.ModRevision)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 50 || errs != 1 || st.Pages < 7 {
		t.Fatalf("listed %d objects, %d errors, %d pages; want 50, 1, >=8", len(names), errs, st.Pages)
	}
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Fatalf("not in key order: %s before %s", names[i-1], names[i])
		}
	}

	// Label and field selectors.
	sel, err := etcd.ParseSelector("app=1", "spec.nodeName=node-2")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	_, err = s.List(ctx, pods, etcd.ListOptions{Namespace: "a", MetaFilter: sel.MatchMeta, Filter: sel.MatchObject}, func(o *etcd.Object) error {
		if o.Err == nil {
			got = append(got, o.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// i%2==0 (ns a), i%3==1, i%5==2: i in {22} below 50... compute.
	var want []string
	for i := range 50 {
		if i%2 == 0 && i%3 == 1 && i%5 == 2 {
			want = append(want, fmt.Sprintf("p%02d", i))
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("selected %v, want %v", got, want)
	}

	c, err := s.Count(ctx, pods, "", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Objects != 52 || len(c.Namespaces) != 2 || c.Namespaces[0].Objects != 27 || c.Bytes == 0 {
		t.Errorf("census: %+v", c)
	}
	k, err := s.Count(ctx, pods, "b", true, 0)
	if err != nil || k.Objects != 25 || k.Bytes != 0 {
		t.Errorf("keys-only census of b: %+v %v", k, err)
	}
}

// recJournal records the journal calls and checks that the intent is
// recorded while etcd still holds the previous value.
type recJournal struct {
	t      *testing.T
	cli    *clientv3.Client
	events []string
	mu     sync.Mutex
}

func (j *recJournal) Intent(ctx context.Context, c *etcd.Change) error {
	resp, err := j.cli.Get(ctx, c.Key)
	if err != nil {
		return err
	}
	var rev int64
	var cur []byte
	if len(resp.Kvs) > 0 {
		rev, cur = resp.Kvs[0].ModRevision, resp.Kvs[0].Value
	}
	switch {
	case rev != c.BeforeRevision:
		// A controller wrote in between: the write's compare on the revision
		// will fail and the change is read again, so the bytes may differ.
		j.t.Logf("intent attempt %d: revision %d, now %d (a concurrent writer)", c.Attempt, c.BeforeRevision, rev)
	case string(cur) != string(c.Before):
		j.t.Errorf("intent for %s at revision %d journaled with bytes that are not the value at that revision", c.Key, rev)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, fmt.Sprintf("intent:%d", c.Attempt))
	return nil
}

func (j *recJournal) Outcome(_ context.Context, c *etcd.Change, err error) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := "applied"
	if err != nil {
		s = "err"
		var ce *etcd.ConflictError
		if errors.As(err, &ce) {
			s = "conflict"
		}
	}
	j.events = append(j.events, fmt.Sprintf("%s:%d", s, c.Attempt))
	return nil
}

// racingKV makes a concurrent write to a key just before each of the first
// n transactions, as a controller would between our read and our write.
type racingKV struct {
	etcd.KV
	cli  *clientv3.Client
	race func(n int)
	n    int
}

func (r *racingKV) Txn(ctx context.Context) clientv3.Txn {
	r.n++
	r.race(r.n)
	return r.KV.Txn(ctx)
}

// applier returns a function that applies a planned change, as the change
// engine does once the operator confirmed it: apply(s.PlanUpdate(...)).
func applier(t *testing.T, s *etcd.Store, j etcd.Journal) func(*etcd.Change, error) (*etcd.Change, error) {
	return func(c *etcd.Change, err error) (*etcd.Change, error) {
		t.Helper()
		if err != nil {
			return c, err
		}
		_, err = s.Apply(context.Background(), c, j)
		return c, err
	}
}

// TestApplyRefusesAMovedKey: a change planned against one revision writes
// nothing when another writer moved the key before the compare-and-swap,
// and hands back the key as it is now, journaled as a conflict; applied
// against the revision it was planned at, it writes exactly the planned
// bytes and journals the revision it produced.
func TestApplyRefusesAMovedKey(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	put(t, s, srv.Client, "deployments", "ns", "web", deployment("ns", "web", 3), deployGVK)
	deploy, _ := s.Layout.Lookup("deploy")

	// A concurrent writer changes an annotation between the plan and the
	// transaction.
	race := func(n int) {
		if n != 1 {
			return
		}
		d := deployment("ns", "web", 3)
		d.Annotations = map[string]string{"other": "writer"}
		put(t, s, srv.Client, "deployments", "ns", "web", d, deployGVK)
	}
	etcd.SetKVForTest(s, &racingKV{KV: srv.Client.KV, cli: srv.Client, race: race})
	j := &recJournal{t: t, cli: srv.Client}
	planned, err := s.PlanUpdate(ctx, deploy, "ns", "web", etcd.Scale(0), etcd.WriteOptions{ID: "c1", Op: "scale"})
	if err != nil {
		t.Fatal(err)
	}
	now, err := s.Apply(ctx, planned, j)
	var ce *etcd.ConflictError
	if !errors.As(err, &ce) || now == nil || now.ModRevision == planned.BeforeRevision {
		t.Fatalf("apply of a moved key: %v (now %v), want a ConflictError with the key as it is", err, now)
	}
	if got := strings.Join(j.events, " "); got != "intent:1 conflict:1" {
		t.Errorf("journal events: %s", got)
	}
	o, err := s.GetObject(ctx, deploy, "ns", "web", etcd.Linearizable)
	if err != nil {
		t.Fatal(err)
	}
	if d := o.Decoded.Object.(*appsv1.Deployment); *d.Spec.Replicas != 3 || d.Annotations["other"] != "writer" {
		t.Fatalf("a refused apply wrote: replicas %d annotations %v", *d.Spec.Replicas, d.Annotations)
	}

	// Planned again from the value now, it applies, keeping the other
	// writer's annotation.
	ch, err := applier(t, s, j)(s.PlanUpdate(ctx, deploy, "ns", "web", etcd.Scale(0), etcd.WriteOptions{ID: "c1", Op: "scale"}))
	if err != nil {
		t.Fatal(err)
	}
	o, err = s.GetObject(ctx, deploy, "ns", "web", etcd.Linearizable)
	if err != nil {
		t.Fatal(err)
	}
	d := o.Decoded.Object.(*appsv1.Deployment)
	if *d.Spec.Replicas != 0 || d.Annotations["other"] != "writer" {
		t.Errorf("after the new plan: replicas %d annotations %v", *d.Spec.Replicas, d.Annotations)
	}
	if d.Generation != 5 {
		t.Errorf("generation %d, want 5 (bumped once for the spec change)", d.Generation)
	}
	if o.ModRevision != ch.Revision || d.ResourceVersion != fmt.Sprint(ch.Revision) {
		t.Errorf("revision %d, change revision %d", o.ModRevision, ch.Revision)
	}
}

func TestWriteRules(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	put(t, s, srv.Client, "deployments", "ns", "web", deployment("ns", "web", 3), deployGVK)
	deploy, _ := s.Layout.Lookup("deployments")
	j := &recJournal{t: t, cli: srv.Client}

	// A plan: a change, no journal, no write.
	before, _, _ := s.Get(ctx, "/registry/deployments/ns/web", etcd.Linearizable)
	ch, err := s.PlanUpdate(ctx, deploy, "ns", "web", etcd.Scale(1), etcd.WriteOptions{})
	if err != nil || ch == nil || ch.Summary != "replicas 3 -> 1" {
		t.Fatalf("plan: %v %+v", err, ch)
	}
	if diff := s.Codec.DiffChange(ch); !strings.Contains(diff, "-  replicas: 3") || !strings.Contains(diff, "+  replicas: 1") {
		t.Errorf("diff:\n%s", diff)
	}
	after, _, _ := s.Get(ctx, "/registry/deployments/ns/web", etcd.Linearizable)
	if after.ModRevision != before.ModRevision || len(j.events) != 0 {
		t.Error("a plan wrote")
	}

	// No change: ErrNoChange, nothing to apply.
	if _, err := s.PlanUpdate(ctx, deploy, "ns", "web", etcd.Scale(3), etcd.WriteOptions{ID: "x"}); !errors.Is(err, etcd.ErrNoChange) {
		t.Errorf("scale to the same count: %v", err)
	}

	// Secrets are refused, even by key, when planned and when applied.
	secrets, _ := s.Layout.Lookup("secrets")
	srv.Client.Put(ctx, "/registry/secrets/ns/s", "k8s:enc:aescbc:v1:k:xx")
	var re *etcd.RefusedError
	if _, err := s.PlanDelete(ctx, secrets, "ns", "s", etcd.WriteOptions{ID: "x"}); !errors.As(err, &re) {
		t.Errorf("delete secret: %v", err)
	}
	if _, err := s.PlanRestore(ctx, deploy, "/registry/secrets/ns/s", []byte("x"), 0, true, etcd.WriteOptions{ID: "x"}); !errors.As(err, &re) {
		t.Errorf("restore into a secret key: %v", err)
	}
	if _, err := s.Apply(ctx, &etcd.Change{Key: "/registry/secrets/ns/s", Resource: secrets, After: []byte("x")}, j); !errors.As(err, &re) || len(j.events) != 0 {
		t.Errorf("apply to a secret key: %v", err)
	}

	// Delete, then restore the exact bytes (expecting absence).
	del, err := applier(t, s, j)(s.PlanDelete(ctx, deploy, "ns", "web", etcd.WriteOptions{ID: "d1", Op: "delete"}))
	if err != nil {
		t.Fatal(err)
	}
	if kv, _, _ := s.Get(ctx, del.Key, etcd.Linearizable); kv != nil {
		t.Fatal("still there after delete")
	}
	if _, err := s.PlanRestore(ctx, deploy, del.Key, del.Before, del.BeforeRevision, false, etcd.WriteOptions{ID: "u1"}); !errors.As(err, &re) {
		t.Errorf("restore expecting the old revision of a deleted key: %v", err)
	}
	if _, err := applier(t, s, j)(s.PlanRestore(ctx, deploy, del.Key, del.Before, 0, false, etcd.WriteOptions{ID: "u1"})); err != nil {
		t.Fatal(err)
	}
	kv, _, _ := s.Get(ctx, del.Key, etcd.Linearizable)
	if kv == nil || string(kv.Value) != string(before.Value) {
		t.Error("restore did not put back the exact bytes")
	}

	// Applying without a journal is refused.
	c, err := s.PlanDelete(ctx, deploy, "ns", "web", etcd.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, c, nil); err == nil {
		t.Error("write without a journal")
	}
}

func TestDaemonSetPauseResume(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "agent", Generation: 2},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "a"}}}}}}
	gvk := schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"}
	put(t, s, srv.Client, "daemonsets", "kube-system", "agent", ds, gvk)
	r, _ := s.Layout.Lookup("ds")
	orig, _, _ := s.Get(ctx, "/registry/daemonsets/kube-system/agent", etcd.Linearizable)
	j := &recJournal{t: t, cli: srv.Client}
	if _, err := applier(t, s, j)(s.PlanUpdate(ctx, r, "kube-system", "agent", etcd.PauseDaemonSet("c1"), etcd.WriteOptions{ID: "c1"})); err != nil {
		t.Fatal(err)
	}
	o, _ := s.GetObject(ctx, r, "kube-system", "agent", etcd.Linearizable)
	p := o.Decoded.Object.(*appsv1.DaemonSet)
	if p.Spec.Template.Spec.NodeSelector[etcd.PauseLabel] != "true" || p.Generation != 3 || p.Annotations[etcd.PausedByAnnotation] != "c1" {
		t.Fatalf("paused: %+v", p.ObjectMeta)
	}
	if _, err := s.PlanUpdate(ctx, r, "kube-system", "agent", etcd.PauseDaemonSet("c2"), etcd.WriteOptions{ID: "c2"}); !errors.Is(err, etcd.ErrNoChange) {
		t.Errorf("pausing twice: %v", err)
	}
	if _, err := applier(t, s, j)(s.PlanUpdate(ctx, r, "kube-system", "agent", etcd.ResumeDaemonSet(), etcd.WriteOptions{ID: "c3"})); err != nil {
		t.Fatal(err)
	}
	o, _ = s.GetObject(ctx, r, "kube-system", "agent", etcd.Linearizable)
	res := o.Decoded.Object.(*appsv1.DaemonSet)
	if res.Generation != 4 || res.Spec.Template.Spec.NodeSelector != nil || res.Annotations != nil {
		t.Errorf("resumed: %+v", res)
	}
	// Same spec as before the pause, byte for byte apart from the generation.
	res.Generation = 2
	b, _ := s.Codec.Encode(res, gvk, etcd.EncodingProtobuf)
	if string(b) != string(orig.Value) {
		t.Error("resume did not restore the exact previous spec")
	}
}
