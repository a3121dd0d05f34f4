package change

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/breakglass/breakglass/recover/journal"
)

// Confirm asks the operator to consent to exactly the plan shown. It
// returns nil for yes, an error (exit 4 or, on a signal, 130) otherwise.
type Confirm func(ctx context.Context, p *Plan) error

// Engine runs changes: plan, show, confirm, apply exactly what was
// confirmed, journal, undo.
type Engine struct {
	// Emit receives every event (a Stream's Emit, or a test recorder).
	Emit func(Event)
	// Confirm asks for consent; nil means consent was given beforehand
	// (--yes).
	Confirm Confirm
	// DryRun plans and reports, and changes nothing.
	DryRun bool
	// OpenJournal opens the journal on the first write (never on a dry
	// run).
	OpenJournal func() (*journal.Journal, error)
	// NewID names a change.
	NewID func() string
	// MaxPlans bounds how often a change is planned again when its
	// targets keep moving between plan and apply (5 when 0).
	MaxPlans int

	kinds map[string]Kind
}

// Register adds a kind of change.
func (e *Engine) Register(k Kind) {
	if e.kinds == nil {
		e.kinds = map[string]Kind{}
	}
	e.kinds[k.Name()] = k
}

// Kinds lists the registered kinds.
func (e *Engine) Kinds() []string {
	var out []string
	for k := range e.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// DryRunID is the change ID a dry run plans with: nothing is journaled, so
// no ID is taken.
const DryRunID = "<change-id>"

// Run plans a change, reports the plan, asks for consent, and applies it
// exactly as planned. When a target moved between the plan and its apply
// (another writer, a controller), nothing is written for it: the change is
// planned again from the new state, reported as a new plan, and confirmed
// again (with --yes, applied as re-planned). It returns the plan that was
// applied (or, with DryRun, that would be).
func (e *Engine) Run(ctx context.Context, planner Planner) (*Plan, error) {
	p, err := e.run(ctx, planner)
	if err == nil && p != nil && len(p.Skipped) > 0 {
		err = &PartialError{What: p.Op, Failed: len(p.Skipped), Total: len(p.Skipped) + p.Nodes()}
	}
	return p, err
}

func (e *Engine) run(ctx context.Context, planner Planner) (*Plan, error) {
	id := DryRunID
	if !e.DryRun {
		id = e.NewID()
	}
	plan, err := planner(ctx, id)
	if err != nil {
		return nil, err
	}
	e.emit(PlanReady{Plan: plan, DryRun: e.DryRun})
	if len(plan.Items) == 0 {
		e.emit(Unchanged{Plan: plan})
		return plan, nil
	}
	if e.DryRun {
		return plan, nil
	}
	if err := e.confirm(ctx, plan); err != nil {
		return plan, err
	}
	j, err := e.OpenJournal()
	if err != nil {
		return plan, err
	}
	maxPlans := e.MaxPlans
	if maxPlans <= 0 {
		maxPlans = 5
	}
	for attempt := 1; ; attempt++ {
		stale, err := e.apply(ctx, plan, j, attempt)
		if stale == nil {
			if err == nil {
				e.emit(Applied{Plan: plan, Journal: j.Path()})
			}
			return plan, err
		}
		if attempt == maxPlans {
			return plan, Refusedf("%v\nhint: %d plans in a row went stale: something keeps changing it (a controller?); stop it or retry", stale, attempt)
		}
		next, err := planner(ctx, plan.ID)
		if err != nil {
			return plan, fmt.Errorf("planning again after %v: %w", stale, err)
		}
		plan = next
		for _, it := range plan.Items {
			it.Attempt = attempt + 1
		}
		e.emit(PlanReady{Plan: plan, Replanned: true, Reason: stale.Error()})
		if len(plan.Items) == 0 {
			e.emit(Unchanged{Plan: plan})
			return plan, nil
		}
		if err := e.confirm(ctx, plan); err != nil {
			return plan, err
		}
	}
}

// apply applies every item in order; it stops at the first failure. The
// consecutive items of a BatchKind are applied in one batch, which runs
// all of them even when some fail.
func (e *Engine) apply(ctx context.Context, p *Plan, j *journal.Journal, attempt int) (*StaleError, error) {
	for i := 0; i < len(p.Items); i++ {
		it := p.Items[i]
		if it.Attempt == 0 {
			it.Attempt = attempt
		}
		k, ok := e.kinds[it.Kind]
		if !ok {
			return nil, fmt.Errorf("internal: no kind %q registered (have %v)", it.Kind, e.Kinds())
		}
		if bk, ok := k.(BatchKind); ok {
			end := i + 1
			for end < len(p.Items) && p.Items[end].Kind == it.Kind {
				if p.Items[end].Attempt == 0 {
					p.Items[end].Attempt = attempt
				}
				end++
			}
			if err := bk.ApplyBatch(ctx, p, p.Items[i:end], j, e.emit); err != nil {
				return nil, err
			}
			i = end - 1
			continue
		}
		e.emit(ItemStarted{Plan: p, Item: it})
		err := k.Apply(ctx, p, it, j)
		var stale *StaleError
		if errors.As(err, &stale) {
			return stale, nil
		}
		if err != nil {
			e.emit(ItemFailed{Plan: p, Item: it, Err: err})
			return nil, err
		}
		e.emit(ItemApplied{Plan: p, Item: it})
	}
	return nil, nil
}

func (e *Engine) confirm(ctx context.Context, p *Plan) error {
	if e.Confirm == nil {
		return nil
	}
	return e.Confirm(ctx, p)
}

func (e *Engine) emit(ev Event) {
	if e.Emit != nil {
		e.Emit(ev)
	}
}

// Undo plans and runs the change that reverts the applied change id, from
// the journal's records, through the kind that made it.
func (e *Engine) Undo(ctx context.Context, records []journal.Record, id string, force bool) (*Plan, error) {
	recs := journal.Find(records, id)
	if len(recs) == 0 {
		return nil, fmt.Errorf("change %s: not in the journal\nhint: check the ID (each change prints it) and --journal", id)
	}
	// A change may hold items of several kinds (a hold changes its owner
	// in etcd, then images on nodes): each kind plans the undo of its own
	// items, and the kinds are undone in the reverse of the order they
	// were applied in.
	var kinds []Kind
	seen := map[string]bool{}
	for _, name := range e.Kinds() {
		if o, ok := e.kinds[name].(ChangeOwner); ok && o.OwnsOp(recs[0].Op) {
			kinds = []Kind{o}
			break
		}
	}
	for _, r := range recs {
		if kinds != nil && len(seen) == 0 {
			break // an owner undoes the whole change
		}
		if seen[r.Kind] {
			continue
		}
		seen[r.Kind] = true
		k, ok := e.kinds[r.Kind]
		if !ok {
			return nil, fmt.Errorf("change %s: a %s change, and this command cannot undo that kind (it knows %v)", id, r.Kind, e.Kinds())
		}
		kinds = append(kinds, k)
	}
	op := recs[0].Op
	return e.Run(ctx, func(ctx context.Context, newID string) (*Plan, error) {
		var items []*Item
		for i := len(kinds) - 1; i >= 0; i-- {
			its, err := kinds[i].Undo(ctx, records, id, force)
			if err != nil {
				return nil, err
			}
			items = append(items, its...)
		}
		return &Plan{ID: newID, Op: "undo", Title: fmt.Sprintf("undo change %s (%s)", id, op), Items: items}, nil
	})
}
