package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// nodeBatch is how a node kind applies one item: what applyNodes needs of
// it. R is the typed result of one node.
type nodeBatch[R any] struct {
	// kind is the change kind, recorded in the journal's details.
	kind string
	// opts tune the fan-out (concurrency, timeout per node, retries).
	opts   fanout.OptionsOf[R]
	target func(it *change.Item) nodeops.Target
	apply  func(ctx context.Context, it *change.Item) (R, error)
	// result says in a few words what applying did; via, how the node was
	// reached (optional).
	result func(R) string
	via    func(R) string
}

// applyNodes applies one item per node through the fan-out: every intent
// is journaled (one write, the item's payload as its before-value) before
// any node is touched, every outcome after (one write, the node's result as
// its after-value). Failed nodes do not stop the others. With a plan's
// Batch, the items are applied that many at a time, each batch finished
// before the next starts; a batch with a failed node ends the change.
func applyNodes[R any](ctx context.Context, p *change.Plan, items []*change.Item, j *journal.Journal, report func(change.Event), b nodeBatch[R]) error {
	intents := make([]*journal.Record, len(items))
	for i, it := range items {
		before, err := json.Marshal(it.Payload)
		if err != nil {
			return fmt.Errorf("internal: %s item of %s: %w", b.kind, it.Target.Node, err)
		}
		intents[i] = &journal.Record{Type: journal.TypeIntent, ID: p.ID, Kind: journal.KindNode, Op: p.Op, Attempt: it.Attempt,
			Target: it.Target, Summary: it.Summary, Undoes: it.Undoes, Status: journal.StatusPending,
			Before: &journal.Value{Bytes: before}, Details: map[string]string{"kind": b.kind}}
	}
	if err := j.AppendAll(intents); err != nil {
		return fmt.Errorf("journal: %w\nhint: nothing was changed; fix the journal (--journal FILE) and retry", err)
	}
	batch := len(items)
	if p.Batch > 0 && p.Batch < batch {
		batch = p.Batch
	}
	failed, done := 0, 0
	var outcomes []*journal.Record
	for start := 0; start < len(items); start += batch {
		chunk := items[start:min(start+batch, len(items))]
		if ctx.Err() != nil || (failed > 0 && batch < len(items)) {
			// A batch failed (or the run was cancelled): later batches
			// are not started.
			for _, it := range chunk {
				err := errors.New("not started: an earlier batch failed")
				if ctx.Err() != nil {
					err = fmt.Errorf("not started: %w", ctx.Err())
				}
				report(change.ItemFailed{Plan: p, Item: it, Err: err})
				outcomes = append(outcomes, b.outcome(p, it, journal.StatusFailed, nil, err))
				failed++
			}
			continue
		}
		targets := make([]nodeops.Target, len(chunk))
		for i, it := range chunk {
			targets[i] = b.target(it)
		}
		opts := b.opts
		opts.OnEvent = func(ev fanout.EventOf[R]) {
			it := chunk[ev.Index]
			switch ev.Type {
			case fanout.EventStarted:
				report(change.ItemStarted{Plan: p, Item: it})
			case fanout.EventFinished:
				done++
				it.Result = b.result(ev.Result.Output)
				report(change.ItemApplied{Plan: p, Item: it})
				report(change.Progress{Plan: p, Done: done, Total: len(items)})
			case fanout.EventFailed, fanout.EventCancelled:
				done++
				report(change.ItemFailed{Plan: p, Item: it, Err: ev.Result.Err})
				report(change.Progress{Plan: p, Done: done, Total: len(items)})
			}
		}
		// The fan-out gives each node its index in targets; items are in
		// the same order.
		byName := make(map[string]*change.Item, len(chunk))
		for i, it := range chunk {
			byName[targets[i].Name] = it
		}
		results := fanout.RunOf(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (R, error) {
			return b.apply(ctx, byName[t.Name])
		})
		for i, r := range results {
			status := journal.StatusApplied
			if r.Status != nodeops.StatusOK {
				status = journal.StatusFailed
				if r.Status == nodeops.StatusCancelled && !r.Start.IsZero() {
					// Cancelled while working: it may or may not be done.
					status = journal.StatusUnknown
				}
				failed++
			}
			out := r.Output
			outcomes = append(outcomes, b.outcome(p, chunk[i], status, &out, r.Err))
		}
	}
	if err := j.AppendAll(outcomes); err != nil {
		return fmt.Errorf("journal: the nodes were changed but their outcomes were not recorded: %w", err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed > 0 {
		return &change.PartialError{What: p.Op, Failed: failed, Total: len(items)}
	}
	return nil
}

func (b nodeBatch[R]) outcome(p *change.Plan, it *change.Item, status string, out *R, err error) *journal.Record {
	r := &journal.Record{Type: journal.TypeOutcome, ID: p.ID, Kind: journal.KindNode, Op: p.Op, Attempt: it.Attempt,
		Target: it.Target, Summary: it.Summary, Undoes: it.Undoes, Status: status, Details: map[string]string{"kind": b.kind}}
	if out != nil {
		bs, _ := json.Marshal(out)
		r.After = &journal.Value{Bytes: bs}
		if b.via != nil {
			if v := b.via(*out); v != "" {
				r.Details["via"] = v
			}
		}
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}
