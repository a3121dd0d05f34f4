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

// Applied finds the etcd write a change ID made: the intent of the attempt
// that was applied, and its outcome.
func Applied(records []Record, id string) (intent, outcome *Record, err error) {
	recs := Find(records, id)
	if len(recs) == 0 {
		return nil, nil, fmt.Errorf("change %s: not in the journal\nhint: check the ID (each write prints it; the journal is JSON lines, one per intent and outcome) and --journal", id)
	}
	// A change may also hold node records (a hold changes its owner in
	// etcd and images on nodes): only its etcd records are read here.
	var last *Record
	etcdRecords := 0
	for i := range recs {
		r := &recs[i]
		if r.Kind != KindEtcd {
			continue
		}
		etcdRecords++
		if r.Type == TypeIntent {
			last = r
			continue
		}
		if r.Status == StatusApplied && last != nil && last.Attempt == r.Attempt {
			return last, r, nil
		}
		if r.Status == StatusUnknown {
			return nil, nil, fmt.Errorf("change %s: its outcome is unknown (%s)\nhint: compare the object with the journal by hand (breakglass get -o yaml)", id, r.Error)
		}
	}
	if etcdRecords == 0 {
		return nil, nil, fmt.Errorf("change %s: a %s change, not an etcd one: undo it with its own command", id, recs[0].Kind)
	}
	return nil, nil, fmt.Errorf("change %s: was never applied: nothing to undo", id)
}

// UndoOptions control PlanUndo.
type UndoOptions struct {
	// ID is the change to undo; NewID names the undo itself.
	ID, NewID string
	// Force restores the previous value even if the object changed since.
	Force bool
}

// PlanUndo plans putting back, byte for byte, the value an applied etcd
// change replaced (deleting the key if the change created it, recreating it
// if the change deleted it). It refuses when the key changed since the
// change, unless Force. The planned undo is applied like any change
// (Store.Apply), journaled as a change that undoes o.ID.
func PlanUndo(ctx context.Context, s *etcd.Store, records []Record, o UndoOptions) (*etcd.Change, error) {
	intent, outcome, err := Applied(records, o.ID)
	if err != nil {
		return nil, err
	}
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
