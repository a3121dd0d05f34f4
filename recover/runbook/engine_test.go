package runbook

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// The engine against a real (embedded) etcd: scale steps write real
// objects, through recover/change, journaled.

type testEnv struct {
	srv     *etcdtest.Server
	store   *etcd.Store
	journal string
	mu      sync.Mutex
	events  []change.Event
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	srv := etcdtest.Start(t)
	e := &testEnv{srv: srv, store: etcd.NewStoreFromClient(srv.Client, etcd.Config{}), journal: filepath.Join(t.TempDir(), "journal.jsonl")}
	e.put(t, "web", 3)
	e.put(t, "api", 2)
	return e
}

func (e *testEnv) put(t *testing.T, name string, n int32) {
	t.Helper()
	b, err := e.store.Codec.Encode(&appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Generation: 1},
		Spec:       appsv1.DeploymentSpec{Replicas: &n},
	}, schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, etcd.EncodingProtobuf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.Client.Put(context.Background(), "/registry/deployments/shop/"+name, string(b)); err != nil {
		t.Fatal(err)
	}
}

func (e *testEnv) replicas(t *testing.T, name string) int32 {
	t.Helper()
	key := "/registry/deployments/shop/" + name
	kv, _, err := e.store.Get(context.Background(), key, etcd.Linearizable)
	if err != nil || kv == nil {
		t.Fatalf("%s: %v", key, err)
	}
	d, err := e.store.Codec.Decode(key, kv.Value, kv.ModRevision)
	if err != nil {
		t.Fatal(err)
	}
	return *d.Object.(*appsv1.Deployment).Spec.Replicas
}

// dump is every key and value under /registry: what a dry run must leave
// byte for byte.
func (e *testEnv) dump(t *testing.T) string {
	t.Helper()
	resp, err := e.srv.Client.Get(context.Background(), "/registry/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		b.WriteString(string(kv.Key) + "=" + string(kv.Value) + "\n")
	}
	return b.String()
}

func (e *testEnv) engine(dryRun bool) *Engine {
	s := &Session{Env: &steps.Env{Inventory: inventory.Empty(), Store: e.store, Now: time.Now},
		Records: func() ([]journal.Record, error) { return journal.Read(e.journal) }}
	emit := func(ev change.Event) {
		e.mu.Lock()
		e.events = append(e.events, ev)
		e.mu.Unlock()
	}
	s.Emit = emit
	return &Engine{Session: s, DryRun: dryRun, Emit: emit, Now: time.Now,
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(e.journal, time.Now) }}
}

func (e *testEnv) finished() []change.StepFinished {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []change.StepFinished
	for _, ev := range e.events {
		if f, ok := ev.(change.StepFinished); ok {
			out = append(out, f)
		}
	}
	return out
}

const scaleRunbook = `name: scale-two
parameters:
  to: {type: int, default: "0"}
  fail: {type: bool, default: "false"}
steps:
  - id: web
    type: scale
    params: {object: shop/web, replicas: "{{ .params.to }}"}
  - id: said
    type: note
    params: {message: "web is change {{ .steps.web.change }}"}
  - id: boom
    type: scale
    when: "{{ .params.fail }}"
    params: {object: shop/missing, replicas: "1"}
  - id: api
    type: scale
    params: {object: shop/api, replicas: "{{ .params.to }}"}
`

func load(t *testing.T, text string) *Runbook {
	t.Helper()
	rb, err := Load("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return rb
}

func TestRunAppliesJournalsAndUndoes(t *testing.T) {
	e := newTestEnv(t)
	before := e.dump(t)
	eng := e.engine(false)
	run, err := eng.Start(context.Background(), load(t, scaleRunbook), nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.replicas(t, "web") != 0 || e.replicas(t, "api") != 0 {
		t.Fatalf("replicas web %d api %d", e.replicas(t, "web"), e.replicas(t, "api"))
	}
	var statuses []string
	for _, f := range e.finished() {
		statuses = append(statuses, f.ID+"="+f.Status)
	}
	if got := strings.Join(statuses, " "); got != "web=applied said=done boom=skipped api=applied" {
		t.Errorf("steps: %s", got)
	}
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	// The changes carry the run's ID; the run's own records say which
	// step made which change.
	l, err := readRun(recs, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.changes[1]) != 1 || len(l.changes[4]) != 1 || l.end == nil || l.end.Status != "ok" {
		t.Fatalf("run log: changes %v end %+v", l.changes, l.end)
	}
	for _, r := range journal.Find(recs, l.changes[1][0]) {
		if r.RunID != run.ID || r.Operator == "" {
			t.Errorf("change record without the run or the operator: %+v", r)
		}
	}

	// Undo of one step, then of the whole run: back to the start.
	if err := e.engine(false).Undo(context.Background(), mustRead(t, e.journal), run.ID, 4); err != nil {
		t.Fatal(err)
	}
	if e.replicas(t, "api") != 2 || e.replicas(t, "web") != 0 {
		t.Fatalf("after undo --step 4: web %d api %d", e.replicas(t, "web"), e.replicas(t, "api"))
	}
	if err := e.engine(false).Undo(context.Background(), mustRead(t, e.journal), run.ID, 1); err != nil {
		t.Fatal(err)
	}
	if e.replicas(t, "web") != 3 {
		t.Fatalf("after undo: web %d", e.replicas(t, "web"))
	}
	if e.dump(t) != before {
		t.Errorf("undo did not restore etcd byte for byte")
	}
}

func mustRead(t *testing.T, path string) []journal.Record {
	t.Helper()
	recs, err := journal.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestDryRunChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	before := e.dump(t)
	if _, err := e.engine(true).Start(context.Background(), load(t, scaleRunbook), nil); err != nil {
		t.Fatal(err)
	}
	if after := e.dump(t); after != before {
		t.Errorf("a dry run changed etcd")
	}
	if _, err := journal.Read(e.journal); err == nil {
		t.Errorf("a dry run wrote a journal")
	}
	var statuses []string
	for _, f := range e.finished() {
		statuses = append(statuses, f.ID+"="+f.Status)
	}
	if got := strings.Join(statuses, " "); got != "web=planned said=deferred boom=skipped api=planned" {
		t.Errorf("steps: %s", got)
	}
}

func TestFailedRunResumesWithoutRedoing(t *testing.T) {
	e := newTestEnv(t)
	eng := e.engine(false)
	run, err := eng.Start(context.Background(), load(t, scaleRunbook), map[string]string{"fail": "true"})
	var re *RunError
	if !errors.As(err, &re) || re.Step != 3 {
		t.Fatalf("want step 3 to fail, got %v", err)
	}
	if e.replicas(t, "web") != 0 || e.replicas(t, "api") != 2 {
		t.Fatalf("web %d api %d", e.replicas(t, "web"), e.replicas(t, "api"))
	}
	// Someone fixes web by hand; a resume must not scale it again.
	e.put(t, "web", 5)
	e.put(t, "missing", 4)
	e.events = nil
	if _, err := e.engine(false).Resume(context.Background(), mustRead(t, e.journal), run.ID); err != nil {
		t.Fatal(err)
	}
	if e.replicas(t, "web") != 5 || e.replicas(t, "api") != 0 || e.replicas(t, "missing") != 1 {
		t.Fatalf("after resume: web %d api %d missing %d", e.replicas(t, "web"), e.replicas(t, "api"), e.replicas(t, "missing"))
	}
	for _, f := range e.finished() {
		if f.ID == "web" {
			t.Errorf("resume ran the finished step web again")
		}
	}
	// An ended run is not resumed again.
	_, err = e.engine(false).Resume(context.Background(), mustRead(t, e.journal), run.ID)
	var refused *change.RefusedError
	if !errors.As(err, &refused) {
		t.Errorf("resume of an ended run: %v", err)
	}
}

const rollbackRunbook = `name: rollback
steps:
  - id: web
    type: scale
    params: {object: shop/web, replicas: "1"}
  - id: boom
    type: scale
    params: {object: shop/missing, replicas: "1"}
    onFailure: rollback
`

func TestRollbackUndoesTheRun(t *testing.T) {
	e := newTestEnv(t)
	_, err := e.engine(false).Start(context.Background(), load(t, rollbackRunbook), nil)
	var re *RunError
	if !errors.As(err, &re) || !re.Undid {
		t.Fatalf("want a rolled back failure, got %v", err)
	}
	if e.replicas(t, "web") != 3 {
		t.Errorf("web %d after rollback", e.replicas(t, "web"))
	}
}

// A reviewed plan is applied exactly; a step whose object moved since is
// refused, not planned again.
func TestReviewedPlanRefusesMovedState(t *testing.T) {
	e := newTestEnv(t)
	pf, err := e.engine(true).Plan(context.Background(), load(t, scaleRunbook), map[string]string{"to": "1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(pf)
	if err != nil {
		t.Fatal(err)
	}
	var back PlanFile
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	e.put(t, "api", 7) // moved after the review
	_, err = e.engine(false).ApplyPlan(context.Background(), &back)
	var refused *change.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("want the moved step refused, got %v", err)
	}
	if e.replicas(t, "web") != 1 {
		t.Errorf("web %d: the reviewed step before the moved one was not applied", e.replicas(t, "web"))
	}
	if e.replicas(t, "api") != 7 {
		t.Errorf("api %d: the moved object was written", e.replicas(t, "api"))
	}
}
