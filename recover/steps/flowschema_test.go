package steps_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

var flowNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	fsPrefix  = "/registry/flowschemas/"
	plcPrefix = "/registry/prioritylevelconfigurations/"
)

type flowEnv struct {
	srv     *etcdtest.Server
	store   *etcd.Store
	kind    *change.Etcd
	journal string
	eng     *change.Engine
}

// newFlowEnv starts etcd holding the apiserver's mandatory flow-control
// objects (encoded enc) and an engine that knows the etcd kind and the
// flow-control owner, journaling to a temporary file.
func newFlowEnv(t *testing.T, enc etcd.Encoding) *flowEnv {
	t.Helper()
	srv := etcdtest.Start(t)
	s := etcd.NewStoreFromClient(srv.Client, etcd.Config{})
	e := &flowEnv{srv: srv, store: s, kind: &change.Etcd{Store: s}, journal: filepath.Join(t.TempDir(), "journal.jsonl")}
	n := 0
	e.eng = &change.Engine{
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(e.journal, nil) },
		NewID:       func() string { n++; return fmt.Sprintf("change-%d", n) },
	}
	e.eng.Register(e.kind)
	e.eng.Register(&steps.FlowControl{Etcd: e.kind})
	auto := map[string]string{flowcontrolv1.AutoUpdateAnnotationKey: "true"}
	for _, name := range []string{"exempt", "catch-all"} {
		e.put(t, fsPrefix+name, &flowcontrolv1.FlowSchema{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: auto, Generation: 1},
			Spec: flowcontrolv1.FlowSchemaSpec{
				PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: name},
				MatchingPrecedence:         map[string]int32{"exempt": 1, "catch-all": 10000}[name],
				Rules: []flowcontrolv1.PolicyRulesWithSubjects{{Subjects: []flowcontrolv1.Subject{{
					Kind: flowcontrolv1.SubjectKindGroup, Group: &flowcontrolv1.GroupSubject{Name: "system:masters"}}}}},
			},
		}, enc)
		e.put(t, plcPrefix+name, &flowcontrolv1.PriorityLevelConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: auto, Generation: 1},
			Spec:       flowcontrolv1.PriorityLevelConfigurationSpec{Type: flowcontrolv1.PriorityLevelEnablementExempt, Exempt: &flowcontrolv1.ExemptPriorityLevelConfiguration{}},
		}, enc)
	}
	return e
}

// put writes an object as another writer would (the apiserver): a plain
// put.
func (e *flowEnv) put(t *testing.T, key string, obj runtime.Object, enc etcd.Encoding) {
	t.Helper()
	kind := "FlowSchema"
	if _, ok := obj.(*flowcontrolv1.PriorityLevelConfiguration); ok {
		kind = "PriorityLevelConfiguration"
	}
	b, err := e.store.Codec.Encode(obj, flowcontrolv1.SchemeGroupVersion.WithKind(kind), enc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.Client.Put(context.Background(), key, string(b)); err != nil {
		t.Fatal(err)
	}
}

func (e *flowEnv) kv(t *testing.T, key string) *mvccpb.KeyValue {
	t.Helper()
	resp, err := e.srv.Client.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}

func (e *flowEnv) decode(t *testing.T, key string) *etcd.Decoded {
	t.Helper()
	kv := e.kv(t, key)
	if kv == nil {
		t.Fatalf("%s: absent", key)
	}
	d, err := e.store.Codec.Decode(key, kv.Value, kv.ModRevision)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (e *flowEnv) run(t *testing.T, planner change.Planner) *change.Plan {
	t.Helper()
	p, err := e.eng.Run(context.Background(), planner)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *flowEnv) undo(t *testing.T, id string, force bool) (*change.Plan, error) {
	t.Helper()
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	return e.eng.Undo(context.Background(), recs, id, force)
}

func wantRefused(t *testing.T, err error, contains string) {
	t.Helper()
	var refused *change.RefusedError
	if !errors.As(err, &refused) || refused.ExitCode() != 4 {
		t.Fatalf("err = %v, want a refusal (exit 4)", err)
	}
	if !strings.Contains(err.Error(), contains) {
		t.Errorf("refusal %q does not mention %q", err, contains)
	}
}

func saShed() steps.FlowShed {
	return steps.FlowShed{ServiceAccount: "ci/runner", Shares: 5, TTL: 15 * time.Minute, Now: flowNow}
}

func TestFlowShedCreatesBothObjects(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	f := saShed()
	name := f.Name()
	if name != "breakglass-shed-sa-ci-runner" {
		t.Errorf("name %q", name)
	}
	p := e.run(t, steps.PlanFlowShed(e.kind, f))
	if len(p.Items) != 2 || p.Items[0].Target.Key != plcPrefix+name || p.Items[1].Target.Key != fsPrefix+name {
		t.Fatalf("items %+v, want the priority level then the flowschema", p.Items)
	}

	for _, key := range []string{fsPrefix + name, plcPrefix + name} {
		if enc := etcd.DetectEncoding(e.kv(t, key).Value); enc != etcd.EncodingProtobuf {
			t.Errorf("%s stored as %s, want protobuf as the apiserver stores it", key, enc)
		}
	}
	d := e.decode(t, fsPrefix+name)
	fs, ok := d.Object.(*flowcontrolv1.FlowSchema)
	if !ok || d.GVK != flowcontrolv1.SchemeGroupVersion.WithKind("FlowSchema") {
		t.Fatalf("flowschema decodes as %s %T", d.GVK, d.Object)
	}
	if fs.Spec.MatchingPrecedence != steps.FlowShedPrecedence || steps.FlowShedPrecedence <= 2 || steps.FlowShedPrecedence >= 100 {
		t.Errorf("precedence %d (const %d): must be above exempt 1 and probes 2, below system-leader-election 100", fs.Spec.MatchingPrecedence, steps.FlowShedPrecedence)
	}
	if fs.Spec.PriorityLevelConfiguration.Name != name || fs.Spec.DistinguisherMethod == nil || fs.Spec.DistinguisherMethod.Type != flowcontrolv1.FlowDistinguisherMethodByUserType {
		t.Errorf("spec %+v", fs.Spec)
	}
	if len(fs.Spec.Rules) != 1 {
		t.Fatalf("rules %+v", fs.Spec.Rules)
	}
	r := fs.Spec.Rules[0]
	if len(r.Subjects) != 1 || r.Subjects[0].Kind != flowcontrolv1.SubjectKindServiceAccount || r.Subjects[0].ServiceAccount == nil ||
		*r.Subjects[0].ServiceAccount != (flowcontrolv1.ServiceAccountSubject{Namespace: "ci", Name: "runner"}) {
		t.Errorf("subjects %+v", r.Subjects)
	}
	if len(r.ResourceRules) != 1 || fmt.Sprint(r.ResourceRules[0]) != fmt.Sprint(flowcontrolv1.ResourcePolicyRule{
		Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}, ClusterScope: true, Namespaces: []string{"*"}}) {
		t.Errorf("resource rules %+v, want everything", r.ResourceRules)
	}
	if len(r.NonResourceRules) != 1 || fmt.Sprint(r.NonResourceRules[0].Verbs, r.NonResourceRules[0].NonResourceURLs) != "[*] [*]" {
		t.Errorf("non-resource rules %+v, want everything", r.NonResourceRules)
	}

	d = e.decode(t, plcPrefix+name)
	plc, ok := d.Object.(*flowcontrolv1.PriorityLevelConfiguration)
	if !ok {
		t.Fatalf("priority level decodes as %T", d.Object)
	}
	l := plc.Spec.Limited
	if plc.Spec.Type != flowcontrolv1.PriorityLevelEnablementLimited || l == nil || plc.Spec.Exempt != nil {
		t.Fatalf("spec %+v", plc.Spec)
	}
	if ptr.Deref(l.NominalConcurrencyShares, -1) != 5 || ptr.Deref(l.LendablePercent, -1) != 0 || ptr.Deref(l.BorrowingLimitPercent, -1) != 0 {
		t.Errorf("limited %+v: want 5 shares, lendable 0, borrowing 0 (all set)", l)
	}
	if l.LimitResponse.Type != flowcontrolv1.LimitResponseTypeReject || l.LimitResponse.Queuing != nil {
		t.Errorf("limit response %+v, want Reject", l.LimitResponse)
	}

	for _, m := range []metav1.Object{fs, plc} {
		if m.GetName() != name || m.GetLabels()[steps.FlowShedLabel] != "true" {
			t.Errorf("%s: labels %v", m.GetName(), m.GetLabels())
		}
		a := m.GetAnnotations()
		if a[steps.FlowChangeAnnotation] != p.ID || a[steps.FlowExpiresAnnotation] != "2025-03-01T12:15:00Z" {
			t.Errorf("%s: annotations %v", name, a)
		}
		if _, set := a[flowcontrolv1.AutoUpdateAnnotationKey]; set {
			t.Errorf("%s carries %s: the apiserver would delete it", name, flowcontrolv1.AutoUpdateAnnotationKey)
		}
		if m.GetUID() == "" || m.GetGeneration() != 1 || !m.GetCreationTimestamp().Time.Equal(flowNow) {
			t.Errorf("%s: uid %q generation %d created %s", name, m.GetUID(), m.GetGeneration(), m.GetCreationTimestamp())
		}
	}
	if fs.GetUID() == plc.GetUID() {
		t.Error("both objects have the same uid")
	}
}

// With no seats the level must say 0 on the wire: an unset
// nominalConcurrencyShares is defaulted to 30 when the apiserver reads it.
func TestFlowShedRejectWritesZeroShares(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	f := steps.FlowShed{User: "alice", Reject: true, TTL: time.Hour, Now: flowNow}
	p := e.run(t, steps.PlanFlowShed(e.kind, f))
	plc := e.decode(t, plcPrefix+f.Name()).Object.(*flowcontrolv1.PriorityLevelConfiguration)
	if l := plc.Spec.Limited; l.NominalConcurrencyShares == nil || *l.NominalConcurrencyShares != 0 || ptr.Deref(l.BorrowingLimitPercent, -1) != 0 {
		t.Errorf("limited %+v: want nominalConcurrencyShares 0 present and no borrowing", l)
	}
	fs := e.decode(t, fsPrefix+f.Name()).Object.(*flowcontrolv1.FlowSchema)
	if s := fs.Spec.Rules[0].Subjects[0]; s.Kind != flowcontrolv1.SubjectKindUser || s.User == nil || s.User.Name != "alice" {
		t.Errorf("subject %+v", s)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "429") {
		t.Errorf("notes %q do not say what a rejected request gets", p.Notes)
	}
}

func TestFlowShedAgainIsUnchanged(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	f := saShed()
	name := f.Name()
	e.run(t, steps.PlanFlowShed(e.kind, f))

	// The apiserver writes the FlowSchema's status as soon as it sees it.
	fs := e.decode(t, fsPrefix+name).Object.(*flowcontrolv1.FlowSchema)
	fs.Status.Conditions = []flowcontrolv1.FlowSchemaCondition{{Type: flowcontrolv1.FlowSchemaConditionDangling, Status: flowcontrolv1.ConditionFalse}}
	e.put(t, fsPrefix+name, fs, etcd.EncodingProtobuf)
	revs := []int64{e.kv(t, fsPrefix+name).ModRevision, e.kv(t, plcPrefix+name).ModRevision}

	f.Now = flowNow.Add(5 * time.Minute) // a later run, another change ID
	p := e.run(t, steps.PlanFlowShed(e.kind, f))
	if len(p.Items) != 0 || len(p.Unchanged) != 2 {
		t.Errorf("second shed: %d items, %d unchanged; want 0 and 2", len(p.Items), len(p.Unchanged))
	}
	if got := []int64{e.kv(t, fsPrefix+name).ModRevision, e.kv(t, plcPrefix+name).ModRevision}; fmt.Sprint(got) != fmt.Sprint(revs) {
		t.Errorf("revisions %v -> %v: the second shed wrote", revs, got)
	}
}

func TestFlowShedOtherSpecRefused(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	f := saShed()
	e.run(t, steps.PlanFlowShed(e.kind, f))
	before := e.kv(t, plcPrefix+f.Name()).ModRevision

	f.Shares = 7
	_, err := e.eng.Run(context.Background(), steps.PlanFlowShed(e.kind, f))
	wantRefused(t, err, f.Name())
	if e.kv(t, plcPrefix+f.Name()).ModRevision != before {
		t.Error("the priority level was rewritten")
	}

	f.Shares, f.Reject = 0, true
	_, err = e.eng.Run(context.Background(), steps.PlanFlowShed(e.kind, f))
	wantRefused(t, err, "5 shares")
}

// An object of the shed's name that breakglass did not write is never
// replaced, and nothing of the shed is written.
func TestFlowShedForeignObjectRefused(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	f := saShed()
	theirs := &flowcontrolv1.FlowSchema{ObjectMeta: metav1.ObjectMeta{Name: f.Name()}, Spec: flowcontrolv1.FlowSchemaSpec{
		PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "global-default"}, MatchingPrecedence: 500}}
	e.put(t, fsPrefix+f.Name(), theirs, etcd.EncodingProtobuf)
	orig := e.kv(t, fsPrefix+f.Name()).Value

	_, err := e.eng.Run(context.Background(), steps.PlanFlowShed(e.kind, f))
	wantRefused(t, err, "flowschema "+f.Name()+" exists and is not a breakglass shed")
	if !bytes.Equal(e.kv(t, fsPrefix+f.Name()).Value, orig) {
		t.Error("their flowschema was changed")
	}
	if e.kv(t, plcPrefix+f.Name()) != nil {
		t.Error("the priority level was created although the shed was refused")
	}
}

func TestFlowShedDryRunWritesNothing(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	e.eng.DryRun = true
	f := saShed()
	p := e.run(t, steps.PlanFlowShed(e.kind, f))
	if len(p.Items) != 2 || !strings.Contains(p.Items[1].Diff, "matchingPrecedence") {
		t.Errorf("dry run plan: %d items, diff %q", len(p.Items), p.Items[1].Diff)
	}
	if e.kv(t, fsPrefix+f.Name()) != nil || e.kv(t, plcPrefix+f.Name()) != nil {
		t.Error("a dry run wrote")
	}
}

func TestFlowShedFollowsStorageEncoding(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingJSON) // --storage-media-type=application/json
	f := saShed()
	e.run(t, steps.PlanFlowShed(e.kind, f))
	for _, key := range []string{fsPrefix + f.Name(), plcPrefix + f.Name()} {
		if enc := etcd.DetectEncoding(e.kv(t, key).Value); enc != etcd.EncodingJSON {
			t.Errorf("%s stored as %s, want json like the apiserver's own", key, enc)
		}
	}
}

// Undoing a shed removes both objects, even after the apiserver wrote the
// FlowSchema's status; an object that another change created since is not
// the undo's to remove.
func TestFlowShedUndo(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	f := saShed()
	name := f.Name()
	p := e.run(t, steps.PlanFlowShed(e.kind, f))
	fs := e.decode(t, fsPrefix+name).Object.(*flowcontrolv1.FlowSchema)
	fs.Status.Conditions = []flowcontrolv1.FlowSchemaCondition{{Type: flowcontrolv1.FlowSchemaConditionDangling, Status: flowcontrolv1.ConditionFalse}}
	e.put(t, fsPrefix+name, fs, etcd.EncodingProtobuf)

	u, err := e.undo(t, p.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Items) != 2 || u.Items[0].Target.Key != fsPrefix+name || u.Items[0].Undoes != p.ID {
		t.Errorf("undo items %+v, want the flowschema then the priority level", u.Items)
	}
	if e.kv(t, fsPrefix+name) != nil || e.kv(t, plcPrefix+name) != nil {
		t.Fatal("undo left the shed in etcd")
	}
	if e.kv(t, fsPrefix+"exempt") == nil || e.kv(t, plcPrefix+"exempt") == nil {
		t.Fatal("undo removed exempt")
	}

	again := e.run(t, steps.PlanFlowShed(e.kind, f))
	_, err = e.undo(t, p.ID, false)
	wantRefused(t, err, again.ID)
	if e.kv(t, fsPrefix+name) == nil {
		t.Error("undoing an old change removed the new shed")
	}
}

func TestFlowShedLift(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	alice := steps.FlowShed{User: "alice", Reject: true, TTL: time.Hour, Now: flowNow}
	devs := steps.FlowShed{Group: "devs", Shares: 3, TTL: time.Hour, Now: flowNow}
	e.run(t, steps.PlanFlowShed(e.kind, alice))
	e.run(t, steps.PlanFlowShed(e.kind, devs))
	aliceValues := [][]byte{e.kv(t, fsPrefix+alice.Name()).Value, e.kv(t, plcPrefix+alice.Name()).Value}

	p := e.run(t, steps.PlanFlowLift(e.kind, []string{alice.Name()}))
	if len(p.Items) != 2 || p.Items[0].Target.Key != fsPrefix+alice.Name() || p.Items[1].Target.Key != plcPrefix+alice.Name() {
		t.Fatalf("lift items %+v, want the flowschema then the priority level", p.Items)
	}
	if e.kv(t, fsPrefix+alice.Name()) != nil || e.kv(t, plcPrefix+alice.Name()) != nil {
		t.Error("alice's shed is still there")
	}
	if e.kv(t, fsPrefix+devs.Name()) == nil {
		t.Error("lifting alice lifted devs")
	}

	// Undoing the lift puts both objects back byte for byte.
	if _, err := e.undo(t, p.ID, false); err != nil {
		t.Fatal(err)
	}
	for i, key := range []string{fsPrefix + alice.Name(), plcPrefix + alice.Name()} {
		if kv := e.kv(t, key); kv == nil || !bytes.Equal(kv.Value, aliceValues[i]) {
			t.Errorf("%s not restored by the undo of the lift", key)
		}
	}

	// No names: every shed, and nothing else.
	p = e.run(t, steps.PlanFlowLift(e.kind, nil))
	if len(p.Items) != 4 {
		t.Errorf("lift all: %d items, want 4", len(p.Items))
	}
	for _, name := range []string{alice.Name(), devs.Name()} {
		if e.kv(t, fsPrefix+name) != nil || e.kv(t, plcPrefix+name) != nil {
			t.Errorf("%s survived lift all", name)
		}
	}
	for _, key := range []string{fsPrefix + "exempt", plcPrefix + "exempt", fsPrefix + "catch-all", plcPrefix + "catch-all"} {
		if e.kv(t, key) == nil {
			t.Errorf("lift all removed %s", key)
		}
	}
	if p = e.run(t, steps.PlanFlowLift(e.kind, nil)); len(p.Items) != 0 {
		t.Errorf("lift all with no sheds: %d items", len(p.Items))
	}
}

func TestFlowShedLiftRefusals(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	e.put(t, fsPrefix+"mine", &flowcontrolv1.FlowSchema{ObjectMeta: metav1.ObjectMeta{Name: "mine"}, Spec: flowcontrolv1.FlowSchemaSpec{
		PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "global-default"}, MatchingPrecedence: 500}}, etcd.EncodingProtobuf)
	for _, name := range []string{"exempt", "catch-all", "mine"} {
		_, err := e.eng.Run(context.Background(), steps.PlanFlowLift(e.kind, []string{name}))
		wantRefused(t, err, name)
		if e.kv(t, fsPrefix+name) == nil {
			t.Errorf("%s deleted", name)
		}
	}
	// A shed with the label but exempt's name is refused all the same.
	e.put(t, fsPrefix+"exempt", &flowcontrolv1.FlowSchema{ObjectMeta: metav1.ObjectMeta{Name: "exempt", Labels: map[string]string{steps.FlowShedLabel: "true"}}}, etcd.EncodingProtobuf)
	_, err := e.eng.Run(context.Background(), steps.PlanFlowLift(e.kind, []string{"exempt"}))
	wantRefused(t, err, "mandatory")

	_, err = e.eng.Run(context.Background(), steps.PlanFlowLift(e.kind, []string{"breakglass-shed-user-nobody"}))
	var refused *change.RefusedError
	if err == nil || errors.As(err, &refused) || !strings.Contains(err.Error(), "no shed named") {
		t.Errorf("lift of a missing shed: %v", err)
	}
}

func TestListFlowSheds(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	ctx := context.Background()
	sa := saShed() // 15m
	alice := steps.FlowShed{User: "alice", Reject: true, TTL: time.Hour, Now: flowNow.Add(time.Minute)}
	p1 := e.run(t, steps.PlanFlowShed(e.kind, sa))
	p2 := e.run(t, steps.PlanFlowShed(e.kind, alice))
	e.put(t, fsPrefix+"mine", &flowcontrolv1.FlowSchema{ObjectMeta: metav1.ObjectMeta{Name: "mine"}}, etcd.EncodingProtobuf)

	got, err := steps.ListFlowSheds(ctx, e.store, flowNow.Add(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := []steps.FlowShedStatus{
		{Name: sa.Name(), Identity: "serviceaccount ci/runner", Shares: 5, Created: flowNow, ExpiresAt: flowNow.Add(15 * time.Minute), Change: p1.ID},
		{Name: alice.Name(), Identity: "user alice", Reject: true, Created: flowNow.Add(time.Minute), ExpiresAt: flowNow.Add(61 * time.Minute), Change: p2.ID},
	}
	if !sameStatuses(got, want) {
		t.Fatalf("list:\n got %+v\nwant %+v", got, want)
	}

	// Past the first expiry (exactly at it counts): expired, and still there.
	got, err = steps.ListFlowSheds(ctx, e.store, flowNow.Add(15*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want[0].Expired = true
	if !sameStatuses(got, want) {
		t.Fatalf("list after expiry:\n got %+v\nwant %+v", got, want)
	}

	// Half a shed is reported as such.
	if _, err := e.srv.Client.Delete(ctx, plcPrefix+alice.Name()); err != nil {
		t.Fatal(err)
	}
	got, err = steps.ListFlowSheds(ctx, e.store, flowNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !strings.Contains(got[1].Problem, "no prioritylevelconfiguration") || got[0].Problem != "" {
		t.Errorf("half a shed: %+v", got)
	}
}

func sameStatuses(a, b []steps.FlowShedStatus) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if !x.Created.Equal(y.Created) || !x.ExpiresAt.Equal(y.ExpiresAt) {
			return false
		}
		x.Created, x.ExpiresAt, y.Created, y.ExpiresAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if x != y {
			return false
		}
	}
	return true
}

func TestFlowShedValidate(t *testing.T) {
	ok := func(mod func(*steps.FlowShed)) steps.FlowShed {
		f := saShed()
		mod(&f)
		return f
	}
	for _, tc := range []struct {
		name    string
		f       steps.FlowShed
		refused bool   // a safety refusal (exit 4), not a usage error
		err     string // "" = valid
	}{
		{"service account", saShed(), false, ""},
		{"every sa of a namespace", ok(func(f *steps.FlowShed) { f.ServiceAccount = "ci/*" }), false, ""},
		{"user reject", steps.FlowShed{User: "alice", Reject: true, TTL: time.Minute, Now: flowNow}, false, ""},
		{"group 24h", steps.FlowShed{Group: "devs", Shares: 1, TTL: 24 * time.Hour, Now: flowNow}, false, ""},
		{"system:masters", steps.FlowShed{Group: "system:masters", Reject: true, TTL: time.Hour, Now: flowNow}, true, "exempt"},
		{"system:masters forced", steps.FlowShed{Group: "system:masters", Reject: true, TTL: time.Hour, Now: flowNow, Force: true}, true, "exempt"},
		{"kube-system sa", ok(func(f *steps.FlowShed) { f.ServiceAccount = "kube-system/generic-garbage-collector" }), true, "kube-system"},
		{"kube-system sa forced", ok(func(f *steps.FlowShed) { f.ServiceAccount = "kube-system/generic-garbage-collector"; f.Force = true }), false, ""},
		{"kube-system sa as user", steps.FlowShed{User: "system:serviceaccount:kube-system:foo", Shares: 1, TTL: time.Hour, Now: flowNow}, true, "kube-system"},
		{"nodes", steps.FlowShed{Group: "system:nodes", Shares: 1, TTL: time.Hour, Now: flowNow}, true, "--force"},
		{"everyone", steps.FlowShed{Group: "system:authenticated", Shares: 1, TTL: time.Hour, Now: flowNow}, true, "--force"},
		{"controller manager", steps.FlowShed{User: "system:kube-controller-manager", Shares: 1, TTL: time.Hour, Now: flowNow}, true, "--force"},
		{"two identities", ok(func(f *steps.FlowShed) { f.User = "alice" }), false, "exactly one identity"},
		{"no identity", ok(func(f *steps.FlowShed) { f.ServiceAccount = "" }), false, "exactly one identity"},
		{"sa without namespace", ok(func(f *steps.FlowShed) { f.ServiceAccount = "runner" }), false, "NAMESPACE/NAME"},
		{"sa bad namespace", ok(func(f *steps.FlowShed) { f.ServiceAccount = "CI/runner" }), false, "NAMESPACE/NAME"},
		{"sa empty name", ok(func(f *steps.FlowShed) { f.ServiceAccount = "ci/" }), false, "NAMESPACE/NAME"},
		{"ttl too short", ok(func(f *steps.FlowShed) { f.TTL = 59 * time.Second }), false, "--ttl"},
		{"ttl too long", ok(func(f *steps.FlowShed) { f.TTL = 24*time.Hour + time.Second }), false, "--ttl"},
		{"reject and shares", ok(func(f *steps.FlowShed) { f.Reject = true }), false, "exclude"},
		{"neither", ok(func(f *steps.FlowShed) { f.Shares = 0 }), false, "--reject"},
		{"negative shares", ok(func(f *steps.FlowShed) { f.Shares = -1 }), false, "--reject"},
		{"no clock", ok(func(f *steps.FlowShed) { f.Now = time.Time{} }), false, "Now"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("valid shed refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
			}
			var refused *change.RefusedError
			if errors.As(err, &refused) != tc.refused {
				t.Errorf("err %v: refusal = %v, want %v", err, !tc.refused, tc.refused)
			}
		})
	}
}

// The planner refuses what Validate refuses, before reading anything.
func TestFlowShedPlanValidates(t *testing.T) {
	e := newFlowEnv(t, etcd.EncodingProtobuf)
	f := steps.FlowShed{Group: "system:masters", Reject: true, TTL: time.Hour, Now: flowNow}
	_, err := e.eng.Run(context.Background(), steps.PlanFlowShed(e.kind, f))
	wantRefused(t, err, "system:masters")
	if e.kv(t, fsPrefix+f.Name()) != nil {
		t.Error("written")
	}
}

func TestFlowShedName(t *testing.T) {
	long := strings.Repeat("a", 80)
	names := map[string]steps.FlowShed{}
	for _, tc := range []struct {
		f    steps.FlowShed
		want string // exact, or a prefix ending in "*" followed by an 8-hex hash
	}{
		{steps.FlowShed{ServiceAccount: "ci/runner"}, "breakglass-shed-sa-ci-runner"},
		{steps.FlowShed{User: "alice"}, "breakglass-shed-user-alice"},
		{steps.FlowShed{Group: "devs"}, "breakglass-shed-group-devs"},
		{steps.FlowShed{User: "Alice"}, "breakglass-shed-user-alice-*"},
		{steps.FlowShed{User: "alice@example.com"}, "breakglass-shed-user-alice-example-com-*"},
		{steps.FlowShed{ServiceAccount: "ci/*"}, "breakglass-shed-sa-ci-*"},
		{steps.FlowShed{User: "*"}, "breakglass-shed-user-*"},
		{steps.FlowShed{Group: long + "x"}, "breakglass-shed-group-aaaa*"},
		{steps.FlowShed{Group: long + "y"}, "breakglass-shed-group-aaaa*"},
		{steps.FlowShed{User: "system:serviceaccount:ci:runner"}, "breakglass-shed-user-system-serviceaccount-ci-runner-*"},
	} {
		got := tc.f.Name()
		if errs := validation.IsDNS1123Label(got); len(errs) > 0 {
			t.Errorf("%s: %q is not a DNS-1123 label: %v", tc.f.Identity(), got, errs)
		}
		if prefix, hashed := strings.CutSuffix(tc.want, "*"); hashed {
			hash := got[len(got)-8:]
			if !strings.HasPrefix(got, prefix) || strings.Trim(hash, "0123456789abcdef") != "" || got[len(got)-9] != '-' {
				t.Errorf("%s: name %q, want %s<hash>", tc.f.Identity(), got, prefix)
			}
		} else if got != tc.want {
			t.Errorf("%s: name %q, want %q", tc.f.Identity(), got, tc.want)
		}
		if other, dup := names[got]; dup {
			t.Errorf("%s and %s share the name %s", other.Identity(), tc.f.Identity(), got)
		}
		names[got] = tc.f
		if tc.f.Name() != got {
			t.Errorf("%s: name not deterministic", tc.f.Identity())
		}
	}
}
