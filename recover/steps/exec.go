package steps

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// OpExec is the journal op of a command run on nodes.
const OpExec = "exec"

// ExecAudit is the journal's record of a command run on nodes, for the
// incident review: what ran, where, as whom, and how it ended on each node.
// An exec cannot be undone; its records say what to look at.
type ExecAudit struct {
	j       *journal.Journal
	id      string
	command string
}

// StartExec journals, before anything runs, the command and the nodes it is
// about to run on. Nothing may run if it fails.
func StartExec(j *journal.Journal, id, command string, nodes []nodeops.Target) (*ExecAudit, error) {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	err := j.Append(&journal.Record{
		Type: journal.TypeIntent, ID: id, Kind: journal.KindNode, Op: OpExec, Status: journal.StatusPending,
		Summary: fmt.Sprintf("run %q on %d nodes", command, len(nodes)),
		Details: map[string]string{"command": command, "nodes": strings.Join(names, ",")},
	})
	if err != nil {
		return nil, fmt.Errorf("journal: %w\nhint: nothing was run; fix the journal (--journal FILE) and retry", err)
	}
	return &ExecAudit{j: j, id: id, command: command}, nil
}

// Finish journals every node's outcome (one record per node, in one write
// and one sync): applied when the command exited 0, failed otherwise, with
// the exit code, status and reason.
func (a *ExecAudit) Finish(results []fanout.Result) error {
	recs := make([]*journal.Record, 0, len(results))
	for _, r := range results {
		status := journal.StatusApplied
		if r.Status != nodeops.StatusOK {
			status = journal.StatusFailed
		}
		if r.Status == nodeops.StatusCancelled && !r.Start.IsZero() {
			// Cancelled while running: it may or may not have done its work.
			status = journal.StatusUnknown
		}
		rec := &journal.Record{
			Type: journal.TypeOutcome, ID: a.id, Kind: journal.KindNode, Op: OpExec, Status: status,
			Target:  journal.Target{Node: r.Target.Name},
			Summary: fmt.Sprintf("%q on %s: %s", a.command, r.Target.Name, r.Status),
			Details: map[string]string{"address": r.Target.Address, "exitCode": strconv.Itoa(r.ExitCode), "status": string(r.Status)},
		}
		if r.Reason != "" {
			rec.Details["reason"] = r.Reason
		}
		if r.Err != nil {
			rec.Error = r.Err.Error()
		}
		recs = append(recs, rec)
	}
	return a.j.AppendAll(recs)
}

// KindExec is the change kind of a command run on nodes.
const KindExec = "exec"

// Exec is the change kind of a command run on nodes: one item per node,
// run through the fan-out in one batch. It is journaled as an audit (the
// command and the nodes before anything runs, each node's status and exit
// code after) and has no undo.
type Exec struct {
	Runner  nodeops.Runner
	Options fanout.Options
	// Results are every node's result, in item order, once applied.
	Results []fanout.Result
}

// ExecChange is the payload of one exec item.
type ExecChange struct {
	Target  nodeops.Target
	Command string
	// Outcome is how the node ended, set before the item's ItemApplied or
	// ItemFailed event is reported.
	Outcome *fanout.Result
}

// Name implements change.Kind.
func (k *Exec) Name() string { return KindExec }

// PlanExec plans running command on every node. There is nothing to read
// first: the plan is the command and the nodes.
func PlanExec(command string, nodes []nodeops.Target) change.Planner {
	return func(_ context.Context, id string) (*change.Plan, error) {
		p := &change.Plan{ID: id, Op: OpExec, Title: fmt.Sprintf("run %q on %d nodes", command, len(nodes))}
		for _, n := range nodes {
			p.Items = append(p.Items, &change.Item{
				Kind:    KindExec,
				Target:  journal.Target{Node: n.Name},
				Summary: fmt.Sprintf("%s: run %q", n.Name, command),
				Payload: &ExecChange{Target: n, Command: command},
			})
		}
		return p, nil
	}
}

// ApplyBatch implements change.BatchKind: the audit record, the command on
// every node through the fan-out, every node's outcome.
func (k *Exec) ApplyBatch(ctx context.Context, p *change.Plan, items []*change.Item, j *journal.Journal, report func(change.Event)) error {
	changes := make([]*ExecChange, len(items))
	targets := make([]nodeops.Target, len(items))
	for i, it := range items {
		c, ok := it.Payload.(*ExecChange)
		if !ok || (i > 0 && c.Command != changes[0].Command) {
			return fmt.Errorf("internal: exec items of one batch must run one command")
		}
		changes[i], targets[i] = c, c.Target
	}
	command := changes[0].Command
	audit, err := StartExec(j, p.ID, command, targets)
	if err != nil {
		return err
	}
	opts := k.Options
	hook := opts.OnEvent
	done := 0
	opts.OnEvent = func(ev fanout.Event) {
		it := items[ev.Index]
		switch ev.Type {
		case fanout.EventStarted:
			report(change.ItemStarted{Plan: p, Item: it})
		case fanout.EventFinished, fanout.EventFailed, fanout.EventCancelled:
			done++
			r := *ev.Result
			changes[ev.Index].Outcome = &r
			if ev.Type == fanout.EventFinished {
				it.Result = fmt.Sprintf("exit %d", r.ExitCode)
				report(change.ItemApplied{Plan: p, Item: it})
			} else {
				report(change.ItemFailed{Plan: p, Item: it, Err: r.Err})
			}
			report(change.Progress{Plan: p, Done: done, Total: len(items)})
		}
		if hook != nil {
			hook(ev)
		}
	}
	k.Results = fanout.RunCommand(ctx, k.Runner, targets, nodeops.Command{Line: command}, opts)
	if err := audit.Finish(k.Results); err != nil {
		return fmt.Errorf("journal: the command ran but its outcomes were not recorded: %w", err)
	}
	failed := 0
	for _, r := range k.Results {
		if r.Status != nodeops.StatusOK {
			failed++
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed > 0 {
		return &change.PartialError{What: OpExec, Failed: failed, Total: len(items)}
	}
	return nil
}

// Apply implements change.Kind: exec items are applied in batches only.
func (k *Exec) Apply(context.Context, *change.Plan, *change.Item, *journal.Journal) error {
	return errors.New("internal: exec items are applied as a batch")
}

// Undo implements change.Kind: a command run on nodes cannot be undone.
func (k *Exec) Undo(_ context.Context, _ []journal.Record, id string, _ bool) ([]*change.Item, error) {
	return nil, change.Refusedf("change %s ran a command on nodes (exec): it cannot be undone\nhint: its journal records say what ran where, as whom, and how it ended on each node", id)
}

// OwnsOp implements change.ChangeOwner: every exec record is this kind's.
func (k *Exec) OwnsOp(op string) bool { return op == OpExec }
