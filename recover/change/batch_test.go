package change_test

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// fakeBatch is a batch kind on pretend nodes: the nodes in fail fail.
type fakeBatch struct {
	fail    map[string]bool
	batches [][]string
	owns    string
	undone  []string
}

func (k *fakeBatch) Name() string { return "fake" }
func (k *fakeBatch) Apply(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	return errors.New("the engine must call ApplyBatch")
}
func (k *fakeBatch) ApplyBatch(ctx context.Context, p *change.Plan, items []*change.Item, j *journal.Journal, report func(change.Event)) error {
	var names []string
	failed := 0
	for _, it := range items {
		names = append(names, it.Target.Node)
		report(change.ItemStarted{Plan: p, Item: it})
		if k.fail[it.Target.Node] {
			failed++
			report(change.ItemFailed{Plan: p, Item: it, Err: errors.New("boom")})
			continue
		}
		report(change.ItemApplied{Plan: p, Item: it})
	}
	k.batches = append(k.batches, names)
	if failed > 0 {
		return &change.PartialError{What: p.Op, Failed: failed, Total: len(items)}
	}
	return nil
}
func (k *fakeBatch) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	k.undone = append(k.undone, id)
	return nil, nil
}
func (k *fakeBatch) OwnsOp(op string) bool { return op == k.owns }

// singleKind records the order items are applied in.
type singleKind struct{ applied *[]string }

func (k *singleKind) Name() string { return "single" }
func (k *singleKind) Apply(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	*k.applied = append(*k.applied, it.Target.Key)
	return nil
}
func (k *singleKind) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	return nil, errors.New("single kind cannot undo")
}

func nodeItem(n string) *change.Item {
	return &change.Item{Kind: "fake", Target: journal.Target{Node: n}, Summary: n}
}

func batchEngine(t *testing.T, kinds ...change.Kind) (*change.Engine, *[]change.Event) {
	var events []change.Event
	e := &change.Engine{
		Emit:        func(ev change.Event) { events = append(events, ev) },
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(filepath.Join(t.TempDir(), "j.jsonl"), nil) },
		NewID:       func() string { return "c1" },
	}
	for _, k := range kinds {
		e.Register(k)
	}
	return e, &events
}

// TestEngineBatchKind: consecutive items of a batch kind go to the kind in
// one call, a failed node does not stop the other nodes of the batch, the
// change then exits 3 and the items after the batch are not applied.
func TestEngineBatchKind(t *testing.T) {
	var applied []string
	fk := &fakeBatch{fail: map[string]bool{"n2": true}}
	e, events := batchEngine(t, fk, &singleKind{&applied})
	plan := &change.Plan{Op: "test", Items: []*change.Item{
		{Kind: "single", Target: journal.Target{Key: "k1"}},
		nodeItem("n1"), nodeItem("n2"), nodeItem("n3"),
		{Kind: "single", Target: journal.Target{Key: "k2"}},
	}}
	_, err := e.Run(context.Background(), func(ctx context.Context, id string) (*change.Plan, error) { plan.ID = id; return plan, nil })
	var pe *change.PartialError
	if !errors.As(err, &pe) || pe.ExitCode() != 3 || pe.Failed != 1 || pe.Total != 3 {
		t.Fatalf("err %v, want a PartialError of 1 of 3 nodes (exit 3)", err)
	}
	if want := [][]string{{"n1", "n2", "n3"}}; !reflect.DeepEqual(fk.batches, want) {
		t.Fatalf("batches %v, want %v", fk.batches, want)
	}
	if !reflect.DeepEqual(applied, []string{"k1"}) {
		t.Fatalf("applied %v: the item after a failed batch must not be applied", applied)
	}
	failed := 0
	for _, ev := range *events {
		if f, ok := ev.(change.ItemFailed); ok {
			failed++
			if f.Item.Target.Node != "n2" {
				t.Errorf("failed event for %s", f.Item.Target.Node)
			}
		}
		if _, ok := ev.(change.Applied); ok {
			t.Error("Applied emitted for a change with a failed node")
		}
	}
	if failed != 1 {
		t.Fatalf("%d ItemFailed events, want 1", failed)
	}
}

// TestEngineSkippedTargets: a plan that left targets out is applied on the
// others and then exits 3, also as a dry run.
func TestEngineSkippedTargets(t *testing.T) {
	for _, dry := range []bool{false, true} {
		fk := &fakeBatch{}
		e, _ := batchEngine(t, fk)
		e.DryRun = dry
		_, err := e.Run(context.Background(), func(ctx context.Context, id string) (*change.Plan, error) {
			return &change.Plan{ID: id, Op: "test", Items: []*change.Item{nodeItem("n1")},
				Skipped: []change.Skipped{{Target: "n2", Reason: "timeout"}}}, nil
		})
		var pe *change.PartialError
		if !errors.As(err, &pe) || pe.Failed != 1 || pe.Total != 2 {
			t.Fatalf("dry run %v: err %v, want a PartialError of 1 of 2", dry, err)
		}
		if wantBatches := !dry; (len(fk.batches) == 1) != wantBatches {
			t.Fatalf("dry run %v: batches %v", dry, fk.batches)
		}
	}
}

// TestEngineUndoOwner: a kind that owns a change's op undoes the whole
// change, whatever kinds its records are; otherwise each kind undoes its
// own records.
func TestEngineUndoOwner(t *testing.T) {
	var applied []string
	fk := &fakeBatch{owns: "hold"}
	e, _ := batchEngine(t, fk, &singleKind{&applied})
	recs := []journal.Record{
		{Type: journal.TypeIntent, ID: "h1", Kind: "single", Op: "hold"},
		{Type: journal.TypeIntent, ID: "h1", Kind: "fake", Op: "hold"},
	}
	if _, err := e.Undo(context.Background(), recs, "h1", false); err != nil {
		t.Fatalf("undo of an owned op: %v", err)
	}
	if !reflect.DeepEqual(fk.undone, []string{"h1"}) {
		t.Fatalf("owner undid %v", fk.undone)
	}
	// Not owned: the single kind's Undo is asked too, and refuses.
	recs[0].Op, recs[1].Op = "other", "other"
	if _, err := e.Undo(context.Background(), recs, "h1", false); err == nil {
		t.Fatal("an undo of records of a kind that cannot undo succeeded")
	}
}
