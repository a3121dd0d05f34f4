package change_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

var gvkDeploy = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}

type env struct {
	srv     *etcdtest.Server
	store   *etcd.Store
	kind    *change.Etcd
	journal string
	obj     steps.Object
	key     string
	events  []change.Event
	mu      sync.Mutex
}

func newEnv(t *testing.T, replicas int32) *env {
	t.Helper()
	srv := etcdtest.Start(t)
	s := etcd.NewStoreFromClient(srv.Client, etcd.Config{})
	r, _ := s.Layout.Lookup("deployments")
	e := &env{srv: srv, store: s, kind: &change.Etcd{Store: s}, journal: filepath.Join(t.TempDir(), "journal.jsonl"),
		obj: steps.Object{Resource: r, Namespace: "shop", Name: "web"}, key: "/registry/deployments/shop/web"}
	e.setReplicas(t, replicas)
	return e
}

// setReplicas writes the Deployment as another writer would (a controller,
// a colleague's kubectl): a plain put.
func (e *env) setReplicas(t *testing.T, n int32) {
	t.Helper()
	b, err := e.store.Codec.Encode(&appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Generation: 1},
		Spec:       appsv1.DeploymentSpec{Replicas: &n},
	}, gvkDeploy, etcd.EncodingProtobuf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.Client.Put(context.Background(), e.key, string(b)); err != nil {
		t.Fatal(err)
	}
}

func (e *env) value(t *testing.T) []byte {
	t.Helper()
	resp, err := e.srv.Client.Get(context.Background(), e.key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0].Value
}

func (e *env) replicas(t *testing.T) int32 {
	t.Helper()
	d, err := e.store.Codec.Decode(e.key, e.value(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	return *d.Object.(*appsv1.Deployment).Spec.Replicas
}

func (e *env) engine(confirm change.Confirm) *change.Engine {
	n := 0
	eng := &change.Engine{
		Emit: func(ev change.Event) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.events = append(e.events, ev)
		},
		Confirm:     confirm,
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(e.journal, nil) },
		NewID:       func() string { n++; return fmt.Sprintf("change-%d", n) },
	}
	eng.Register(e.kind)
	return eng
}

func (e *env) eventNames() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var names []string
	for _, ev := range e.events {
		name := fmt.Sprintf("%T", ev)
		name = name[strings.LastIndex(name, ".")+1:]
		if p, ok := ev.(change.PlanReady); ok && p.Replanned {
			name += "(replanned)"
		}
		names = append(names, name)
	}
	return strings.Join(names, " ")
}

// An operator approved "replicas 3 -> 0"; while the question was open,
// someone set 7. The engine must not write "7 -> 0" on the strength of the
// first answer: it plans again and asks about the new plan.
func TestConfirmedPlanIsWhatIsWritten(t *testing.T) {
	e := newEnv(t, 3)
	var asked []string
	eng := e.engine(func(ctx context.Context, p *change.Plan) error {
		asked = append(asked, p.Summary())
		if len(asked) == 1 {
			e.setReplicas(t, 7) // the race, while the prompt is open
			return nil          // yes, to "replicas 3 -> 0"
		}
		return change.Refusedf("not confirmed") // no, to "replicas 7 -> 0"
	})
	_, err := eng.Run(context.Background(), steps.Scale(e.kind, e.obj, 0, false))
	var refused *change.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("err = %v, want the second question refused", err)
	}
	if want := []string{"replicas 3 -> 0", "replicas 7 -> 0"}; strings.Join(asked, ",") != strings.Join(want, ",") {
		t.Errorf("asked %q, want %q", asked, want)
	}
	if got := e.replicas(t); got != 7 {
		t.Errorf("replicas = %d after the operator refused the new plan, want 7 (untouched)", got)
	}
	if got, want := e.eventNames(), "PlanReady ItemStarted PlanReady(replanned)"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	// The stale attempt is journaled as a conflict, nothing as applied.
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Status == journal.StatusApplied {
			t.Errorf("journal has an applied record: %+v", r)
		}
	}
	if len(recs) != 2 || recs[1].Status != journal.StatusConflict {
		t.Errorf("journal: %+v", recs)
	}
}

// With consent given beforehand (--yes), a target that moved is planned
// again and the new plan applied; the events say so.
func TestYesReplansAndApplies(t *testing.T) {
	e := newEnv(t, 3)
	eng := e.engine(nil)
	first := true
	planner := steps.Scale(e.kind, e.obj, 0, false)
	raced := func(ctx context.Context, id string) (*change.Plan, error) {
		p, err := planner(ctx, id)
		if first {
			first = false
			e.setReplicas(t, 7) // between plan and apply
		}
		return p, err
	}
	p, err := eng.Run(context.Background(), raced)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.replicas(t); got != 0 {
		t.Errorf("replicas = %d, want 0", got)
	}
	if p.Summary() != "replicas 7 -> 0" || p.Items[0].Attempt != 2 {
		t.Errorf("applied plan %q attempt %d, want the re-planned one", p.Summary(), p.Items[0].Attempt)
	}
	if got, want := e.eventNames(), "PlanReady ItemStarted PlanReady(replanned) ItemStarted ItemApplied Applied"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	// Undo puts back what the applied plan replaced: replicas 7, byte for
	// byte.
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	intent, _, err := journal.Applied(recs, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	before := intent.Before.Bytes
	if _, err := eng.Undo(context.Background(), recs, p.ID, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.value(t), before) || e.replicas(t) != 7 {
		t.Errorf("undo did not restore the exact previous value (replicas %d)", e.replicas(t))
	}
}

// A target that keeps moving is refused (exit 4) after a bounded number of
// plans, and nothing is written.
func TestEndlessRaceIsRefused(t *testing.T) {
	e := newEnv(t, 3)
	eng := e.engine(nil)
	eng.MaxPlans = 3
	n := int32(10)
	planner := steps.Scale(e.kind, e.obj, 0, false)
	_, err := eng.Run(context.Background(), func(ctx context.Context, id string) (*change.Plan, error) {
		p, err := planner(ctx, id)
		n++
		e.setReplicas(t, n)
		return p, err
	})
	var refused *change.RefusedError
	if !errors.As(err, &refused) || refused.ExitCode() != 4 {
		t.Fatalf("err = %v, want a refusal", err)
	}
	if e.replicas(t) == 0 {
		t.Error("written although every plan went stale")
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	e := newEnv(t, 3)
	orig := e.value(t)
	eng := e.engine(func(context.Context, *change.Plan) error { t.Error("a dry run asked"); return nil })
	eng.DryRun = true
	eng.OpenJournal = func() (*journal.Journal, error) {
		t.Error("a dry run opened the journal")
		return nil, errors.New("no")
	}
	p, err := eng.Run(context.Background(), steps.Scale(e.kind, e.obj, 0, false))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != change.DryRunID || !strings.Contains(p.Items[0].Diff, "replicas: 0") || !bytes.Equal(e.value(t), orig) {
		t.Errorf("dry run: id %q diff %q", p.ID, p.Items[0].Diff)
	}
}

func TestUndoOfMovedTargetRefused(t *testing.T) {
	e := newEnv(t, 3)
	eng := e.engine(nil)
	p, err := eng.Run(context.Background(), steps.Scale(e.kind, e.obj, 0, false))
	if err != nil {
		t.Fatal(err)
	}
	e.setReplicas(t, 5) // changed since
	recs, _ := journal.Read(e.journal)
	_, err = eng.Undo(context.Background(), recs, p.ID, false)
	var ec interface{ ExitCode() int }
	if !errors.As(err, &ec) || ec.ExitCode() != 4 || e.replicas(t) != 5 {
		t.Fatalf("undo of a moved object: err %v, replicas %d", err, e.replicas(t))
	}
	recs, _ = journal.Read(e.journal)
	if _, err := eng.Undo(context.Background(), recs, p.ID, true); err != nil || e.replicas(t) != 3 {
		t.Fatalf("undo --force: err %v, replicas %d", err, e.replicas(t))
	}
}

// A slow consumer (a TUI) must not stall the work: progress ticks are
// dropped and counted when the queue is full; every other event arrives, in
// order.
func TestStreamDoesNotBlockOnProgress(t *testing.T) {
	release := make(chan struct{})
	var got []change.Event
	s := change.NewStream(4, func(ev change.Event) {
		<-release
		got = append(got, ev)
	})
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			s.Emit(change.Progress{Done: i, Total: 1000})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("emitting progress blocked on a consumer that does not read")
	}
	close(release)
	for i := 0; i < 50; i++ {
		s.Emit(change.ItemApplied{Item: &change.Item{Summary: fmt.Sprint(i)}})
	}
	s.Close()
	if s.Dropped() == 0 {
		t.Error("no progress tick was dropped although the consumer was stuck")
	}
	var applied []string
	for _, ev := range got {
		if a, ok := ev.(change.ItemApplied); ok {
			applied = append(applied, a.Item.Summary)
		}
	}
	if len(applied) != 50 || applied[0] != "0" || applied[49] != "49" {
		t.Errorf("applied events lost or reordered: %v", applied)
	}
}
