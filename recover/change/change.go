// Package change is the one path of every change breakglass makes: a
// change is planned (read the state, return the exact per-target changes),
// shown, confirmed, applied exactly as planned, journaled, and undone, and
// every step of it is reported as an event. Commands and the runbook
// engine build plans and hand them to an Engine; kinds of change (an etcd
// object today; node files, nft tables, containers and kubelets as the
// levers add them) register how they are applied and undone.
package change

import (
	"context"
	"fmt"

	"github.com/breakglass/breakglass/recover/journal"
)

// Item is one planned change to one target: what a kind applies.
type Item struct {
	// Kind names the registered kind that applies and undoes it ("etcd").
	Kind string
	// Target is what is changed, as the journal records it.
	Target journal.Target
	// Summary says in a few words what changes ("replicas 3 -> 0").
	Summary string
	// Diff shows the change to a person (a unified diff for etcd objects).
	Diff string
	// PlannedAt is the state the item was planned against, in the kind's
	// terms (an etcd ModRevision, a file's hash): apply refuses to write
	// when the target no longer has it.
	PlannedAt string
	// Undoes is the ID of the change this item reverts, if any.
	Undoes string
	// Payload is the kind's own description of the change (*etcd.Change
	// for etcd items).
	Payload any
	// Result is what applying produced, in the kind's terms (the etcd
	// revision written); set by Apply.
	Result string
	// Attempt counts how often the change was planned (1 unless the state
	// moved between plan and apply).
	Attempt int
}

// Plan is what the operator sees and confirms: every item of one change.
type Plan struct {
	// ID names the change in the journal and in `breakglass undo ID`.
	ID string
	// Op says what the change is for: "scale", "daemonset-pause",
	// "delete", "undo"...
	Op string
	// Title is the question put to the operator, without the "?"
	// ("scale deployments.apps shop/web to 0").
	Title string
	// Items are the changes; an empty plan means nothing needs to change.
	Items []*Item
	// Unchanged are the targets looked at that are already as wanted
	// (their items have no payload to apply).
	Unchanged []*Item
	// Notes are facts the operator should know before confirming
	// ("its finalizers will not run").
	Notes []string
	// Batch bounds how many items of a batch kind are applied at once
	// (each batch finished before the next starts); 0 applies all at once.
	Batch int
	// Skipped are targets the plan could not cover (a node whose
	// containerd did not answer), with why. The change goes ahead on the
	// others, and Run then returns a *PartialError (exit 3).
	Skipped []Skipped
}

// Skipped is a target left out of a plan.
type Skipped struct {
	Target string `json:"target"`
	Reason string `json:"reason"`
}

// Nodes counts the distinct nodes of the plan's items and unchanged items
// (what a PartialError counts skipped nodes against).
func (p *Plan) Nodes() int {
	seen := map[string]bool{}
	for _, list := range [][]*Item{p.Items, p.Unchanged} {
		for _, it := range list {
			if it.Target.Node != "" {
				seen[it.Target.Node] = true
			}
		}
	}
	return len(seen)
}

// Summary joins the items' summaries.
func (p *Plan) Summary() string {
	s := ""
	for i, it := range p.Items {
		if i > 0 {
			s += "; "
		}
		s += it.Summary
	}
	return s
}

// Planner reads the current state and returns the plan of a change with
// the given ID. The engine calls it again when the state moved between the
// plan and its apply, so it must read afresh each time.
type Planner func(ctx context.Context, id string) (*Plan, error)

// Kind applies and undoes one kind of item. The journal and undo know
// kinds only through this interface.
type Kind interface {
	// Name is the kind's name in items and journal records ("etcd").
	Name() string
	// Apply makes the item exactly as planned, journaling it in j under
	// the plan's ID and op. When the target no longer has the state the
	// item was planned against it writes nothing and returns a
	// *StaleError.
	Apply(ctx context.Context, p *Plan, it *Item, j *journal.Journal) error
	// Undo plans the items that put back what the applied change id
	// replaced, from its journal records. Unless force, it refuses
	// (RefusedError) when the target changed since.
	Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*Item, error)
}

// BatchKind is a Kind whose items are applied together: one item per
// node, worked on many nodes at once through the fan-out. The engine hands
// it every consecutive item of its kind in one call. It reports each item
// as it ends through report (ItemStarted, ItemApplied, ItemFailed, and
// Progress ticks), journals every item, and returns a *PartialError when
// some items failed and others were applied. It never stops at the first
// failed node.
type BatchKind interface {
	Kind
	ApplyBatch(ctx context.Context, p *Plan, items []*Item, j *journal.Journal, report func(Event)) error
}

// ChangeOwner is a Kind that undoes whole changes of some ops, whatever
// kinds their records are: a hold changes its owner in etcd and images on
// nodes, and its undo resumes the owner rather than restoring its bytes.
type ChangeOwner interface {
	Kind
	OwnsOp(op string) bool
}

// PartialError says that some items of a batch failed (their nodes are
// named by their ItemFailed events) while the others were applied. It
// exits 3, as a fan-out with failed nodes does.
type PartialError struct {
	Failed, Total int
	// What names the change ("stop pods").
	What string
	// ReadOnly is set for a command that changes nothing (a listing).
	ReadOnly bool
}

func (e *PartialError) Error() string {
	if e.ReadOnly {
		return fmt.Sprintf("%s: %d of %d nodes failed", e.What, e.Failed, e.Total)
	}
	return fmt.Sprintf("%s: %d of %d nodes failed or were left out (the others were changed; the journal has both)", e.What, e.Failed, e.Total)
}

// ExitCode makes a partial change exit with code 3.
func (e *PartialError) ExitCode() int { return 3 }

// StaleError says that a target moved between the plan the operator saw
// and the apply: nothing was written.
type StaleError struct {
	Target  journal.Target
	Planned string // the state planned against
	Now     string // the state found
}

func (e *StaleError) Error() string {
	what := e.Target.Key
	if what == "" {
		what = e.Target.Node + ":" + e.Target.Path
	}
	return fmt.Sprintf("%s changed since it was planned (%s, now %s): nothing was written", what, e.Planned, e.Now)
}

// RefusedError is a change the engine or a kind will not make: a stale
// plan that cannot be confirmed again, an undo of a target that changed
// since, a protected object. It exits 4.
type RefusedError struct{ Err error }

func (e *RefusedError) Error() string { return e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// ExitCode makes a refusal exit with code 4.
func (e *RefusedError) ExitCode() int { return 4 }

// Refusedf returns a RefusedError.
func Refusedf(format string, a ...any) error { return &RefusedError{fmt.Errorf(format, a...)} }
