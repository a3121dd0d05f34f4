package journal

import (
	"context"
	"errors"
	"fmt"

	"github.com/breakglass/breakglass/etcd"
)

// ForEtcd returns an etcd.Journal that records etcd writes in j. undoes is
// the ID of the change being undone ("" for other writes); runbook and step
// tie the records to a runbook step.
func (j *Journal) ForEtcd(undoes string) etcd.Journal { return &etcdJournal{j: j, undoes: undoes} }

type etcdJournal struct {
	j      *Journal
	undoes string
}

func (e *etcdJournal) record(c *etcd.Change, typ string) *Record {
	r := &Record{
		Type: typ, ID: c.ID, Kind: KindEtcd, Op: c.Op, Attempt: c.Attempt, Summary: c.Summary, Undoes: e.undoes,
		Target: Target{Key: c.Key, Resource: c.Resource.GroupResource(), Namespace: c.Namespace, Name: c.Name},
		Before: &Value{Bytes: c.Before, Revision: c.BeforeRevision, Absent: c.Before == nil},
	}
	if c.Delete {
		r.After = &Value{Absent: true}
	} else {
		r.After = &Value{Bytes: c.After}
	}
	return r
}

func (e *etcdJournal) Intent(_ context.Context, c *etcd.Change) error {
	r := e.record(c, TypeIntent)
	r.Status = StatusPending
	return e.j.Append(r)
}

func (e *etcdJournal) Outcome(_ context.Context, c *etcd.Change, err error) error {
	r := e.record(c, TypeOutcome)
	// The outcome does not repeat the values: the intent before it has them.
	r.Before = &Value{Revision: c.BeforeRevision, Absent: c.Before == nil}
	r.After = &Value{Revision: c.Revision, Absent: c.Delete}
	var conflict *etcd.ConflictError
	var unknown *etcd.UnknownOutcomeError
	switch {
	case err == nil:
		r.Status = StatusApplied
	case errors.As(err, &conflict):
		r.Status = StatusConflict
	case errors.As(err, &unknown):
		r.Status = StatusUnknown
	default:
		r.Status = StatusFailed
	}
	if err != nil {
		r.Error = err.Error()
	}
	return e.j.Append(r)
}

// Write is one etcd key an applied change wrote: the intent of the attempt
// that was applied (it has the bytes before and after) and its outcome (it
// has the revision written).
type Write struct{ Intent, Outcome *Record }

// AppliedWrites finds every etcd key change id wrote, in the order they
// were written. A key written more than once in the change (it should not
// be) is one Write: the first write's intent, which has the bytes before
// the change, and the last write's outcome.
func AppliedWrites(records []Record, id string) ([]Write, error) {
	recs := Find(records, id)
	if len(recs) == 0 {
		return nil, fmt.Errorf("change %s: not in the journal\nhint: check the ID (each write prints it; the journal is JSON lines, one per intent and outcome) and --journal", id)
	}
	// A change may also hold node records (a hold changes its owner in
	// etcd and images on nodes): only its etcd records are read here.
	var out []Write
	index := map[string]int{}
	pending := map[string]*Record{} // key -> the latest intent not yet answered
	etcdRecords := 0
	for i := range recs {
		r := &recs[i]
		if r.Kind != KindEtcd {
			continue
		}
		etcdRecords++
		if r.Type == TypeIntent {
			pending[r.Target.Key] = r
			continue
		}
		if r.Status == StatusUnknown {
			return nil, fmt.Errorf("change %s: the outcome of its write of %s is unknown (%s)\nhint: compare the object with the journal by hand (breakglass get -o yaml)", id, r.Target.Key, r.Error)
		}
		intent := pending[r.Target.Key]
		if r.Status != StatusApplied || intent == nil || intent.Attempt != r.Attempt {
			continue
		}
		if at, ok := index[r.Target.Key]; ok {
			out[at].Outcome = r
			continue
		}
		index[r.Target.Key] = len(out)
		out = append(out, Write{Intent: intent, Outcome: r})
	}
	if etcdRecords == 0 {
		return nil, fmt.Errorf("change %s: a %s change, not an etcd one: undo it with its own command", id, recs[0].Kind)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("change %s: was never applied: nothing to undo", id)
	}
	return out, nil
}

// Applied finds the first etcd write a change ID made: the intent of the
// attempt that was applied, and its outcome.
func Applied(records []Record, id string) (intent, outcome *Record, err error) {
	w, err := AppliedWrites(records, id)
	if err != nil {
		return nil, nil, err
	}
	return w[0].Intent, w[0].Outcome, nil
}

// UndoOptions control PlanUndo.
type UndoOptions struct {
	// ID is the change to undo; NewID names the undo itself.
	ID, NewID string
	// Force restores the previous values even if the objects changed since.
	Force bool
}

// PlanUndo plans putting back, byte for byte, every value an applied etcd
// change replaced (deleting a key the change created, recreating one it
// deleted), the last written first. It refuses when any key changed since
// the change, unless Force: then nothing is planned. The planned undo is
// applied like any change (Store.Apply), journaled as a change that undoes
// o.ID.
func PlanUndo(ctx context.Context, s *etcd.Store, records []Record, o UndoOptions) ([]*etcd.Change, error) {
	writes, err := AppliedWrites(records, o.ID)
	if err != nil {
		return nil, err
	}
	var out []*etcd.Change
	for i := len(writes) - 1; i >= 0; i-- {
		c, err := planRestore(ctx, s, writes[i], o)
		if errors.Is(err, etcd.ErrNoChange) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, etcd.ErrNoChange
	}
	return out, nil
}

func planRestore(ctx context.Context, s *etcd.Store, w Write, o UndoOptions) (*etcd.Change, error) {
	intent, outcome := w.Intent, w.Outcome
	r, err := s.Resolve(ctx, intent.Target.Resource)
	if err != nil {
		var ok bool
		if r, ok = s.Layout.ResourceOfKey(intent.Target.Key); !ok {
			return nil, fmt.Errorf("change %s: %w", o.ID, err)
		}
	}
	var before []byte
	if intent.Before != nil && !intent.Before.Absent {
		before = intent.Before.Bytes
		if before == nil {
			before = []byte{}
		}
	}
	expect := outcome.After.Revision
	if outcome.After.Absent {
		expect = 0
	}
	return s.PlanRestore(ctx, r, intent.Target.Key, before, expect, o.Force, etcd.WriteOptions{ID: o.NewID, Op: "undo"})
}
