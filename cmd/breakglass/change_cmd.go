package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// changeWire is the JSON output of a change (type "change"): one line per
// target, when it was applied, found unchanged, or planned in a dry run.
type changeWire struct {
	Type           string   `json:"type"`
	ID             string   `json:"id,omitempty"`
	Op             string   `json:"op"`
	Kind           string   `json:"kind"`
	Resource       string   `json:"resource,omitempty"`
	Namespace      string   `json:"namespace,omitempty"`
	Name           string   `json:"name,omitempty"`
	Key            string   `json:"key,omitempty"`
	Node           string   `json:"node,omitempty"`
	Path           string   `json:"path,omitempty"`
	Summary        string   `json:"summary"`
	DryRun         bool     `json:"dryRun,omitempty"`
	Unchanged      bool     `json:"unchanged,omitempty"`
	BeforeRevision int64    `json:"beforeRevision,omitempty"`
	Revision       int64    `json:"revision,omitempty"`
	Attempts       int      `json:"attempts,omitempty"`
	Diff           string   `json:"diff,omitempty"`
	Journal        string   `json:"journal,omitempty"`
	Undoes         string   `json:"undoes,omitempty"`
	Notes          []string `json:"notes,omitempty"`
	// Result says what applying did on a node ("1 image held, 1 pod
	// stopped").
	Result string `json:"result,omitempty"`
}

// replannedWire says that a target moved between the plan and its apply,
// and the change was planned again (type "replanned").
type replannedWire struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	Op      string `json:"op"`
	Reason  string `json:"reason"`
	Summary string `json:"summary"`
	Diff    string `json:"diff,omitempty"`
}

// changeEngine returns the engine for this command with the etcd kind
// registered, and the stream its events go through. The caller closes the
// stream (which waits until every event was printed).
func (d *Deps) changeEngine(ctx context.Context) (*change.Engine, *change.Etcd, *change.Stream, error) {
	s, err := d.Etcd(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	k := &change.Etcd{Store: s}
	e, stream := d.newEngine()
	e.Register(k)
	return e, k, stream, nil
}

// newEngine returns an engine with no kinds registered, printing its
// events through a stream.
func (d *Deps) newEngine() (*change.Engine, *change.Stream) {
	ep := &eventPrinter{d: d, p: newPrinter(d.Out, d.Global.Output)}
	return d.newEngineWith(ep.print)
}

// newEngineWith is newEngine with a printer of the command's own (exec
// prints its nodes' output).
func (d *Deps) newEngineWith(print func(change.Event)) (*change.Engine, *change.Stream) {
	stream := change.NewStream(256, print)
	emit := stream.Emit
	if tap := testEventTap; tap != nil {
		emit = func(ev change.Event) { tap(ev); stream.Emit(ev) }
	}
	e := &change.Engine{
		Emit:        emit,
		DryRun:      d.Global.DryRun,
		OpenJournal: d.openJournal,
		NewID:       func() string { return journal.NewID(d.Now()) },
	}
	if !d.Global.Yes {
		e.Confirm = func(ctx context.Context, p *change.Plan) error {
			// The plan's diff is printed by the stream: let it finish
			// before the question.
			stream.Flush()
			return confirm(ctx, d, fmt.Sprintf("%s (%s)?", p.Title, shortSummary(p)))
		}
	}
	return e, stream
}

// shortSummary is the plan's summary for the question: every item's for a
// few items, a count for many (the diff above lists them all).
func shortSummary(p *change.Plan) string {
	if len(p.Items) <= 3 {
		return p.Summary()
	}
	return fmt.Sprintf("%d changes, listed above", len(p.Items))
}

// testEventTap, when a test sets it, sees every event the engine emits.
var testEventTap func(change.Event)

// runChange runs one change through the engine and prints its events.
func runChange(ctx context.Context, d *Deps, planner func(*change.Etcd) change.Planner) (*change.Plan, error) {
	e, k, stream, err := d.changeEngine(ctx)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	return e.Run(ctx, planner(k))
}

// eventPrinter prints the engine's events: text for people, JSON lines or
// YAML documents for programs. Diffs for the operator to confirm go to
// stderr; what was done goes to stdout.
type eventPrinter struct {
	d *Deps
	p Printer
}

func (ep *eventPrinter) print(ev change.Event) {
	d := ep.d
	switch ev := ev.(type) {
	case change.PlanReady:
		if ev.Replanned {
			ep.replanned(ev)
			return
		}
		ep.skipped(ev.Plan)
		if ev.DryRun {
			for _, it := range ev.Plan.Items {
				ep.outcome(ev.Plan, it, "dry-run")
			}
			ep.notes(d.Out, ev.Plan)
			return
		}
		if !ep.p.Text() {
			return
		}
		// Before the question: what will change, exactly.
		if d.Global.Verbose > 0 || (!d.Global.Yes && d.InIsTTY) {
			for _, it := range ev.Plan.Items {
				fmt.Fprint(d.ErrOut, it.Diff)
			}
		}
		ep.notes(d.ErrOut, ev.Plan)
	case change.Unchanged:
		for _, it := range ev.Plan.Unchanged {
			ep.outcome(ev.Plan, it, "unchanged")
		}
	case change.ItemApplied:
		ep.outcome(ev.Plan, ev.Item, "applied")
	case change.ItemFailed:
		ep.failed(ev.Plan, ev.Item, ev.Err)
	case change.Applied:
		ep.applied(ev.Plan)
	}
}

// skippedWire is a target a plan left out (type "skipped"): a node whose
// containerd did not answer, say.
type skippedWire struct {
	Type   string `json:"type"`
	Op     string `json:"op"`
	Target string `json:"target"`
	Reason string `json:"reason"`
}

// skipped reports the targets a plan left out: the change goes ahead
// without them and exits 3.
func (ep *eventPrinter) skipped(p *change.Plan) {
	for _, s := range p.Skipped {
		if !ep.p.Text() {
			ep.p.Object(skippedWire{Type: "skipped", Op: p.Op, Target: s.Target, Reason: s.Reason})
			continue
		}
		fmt.Fprintf(ep.d.ErrOut, "%s: left out: %s\n", s.Target, s.Reason)
	}
}

// failedWire is a target a change failed on (type "changeFailed").
type failedWire struct {
	Type  string `json:"type"`
	ID    string `json:"id"`
	Op    string `json:"op"`
	Kind  string `json:"kind"`
	Node  string `json:"node,omitempty"`
	Key   string `json:"key,omitempty"`
	Error string `json:"error"`
}

// failed reports a target a change failed on. Only node kinds report
// here: an etcd failure ends the change and is the command's error.
func (ep *eventPrinter) failed(p *change.Plan, it *change.Item, err error) {
	if it.Kind == change.KindEtcd {
		return
	}
	if !ep.p.Text() {
		ep.p.Object(failedWire{Type: "changeFailed", ID: p.ID, Op: p.Op, Kind: it.Kind, Node: it.Target.Node, Key: it.Target.Key, Error: err.Error()})
		return
	}
	fmt.Fprintf(ep.d.ErrOut, "%s: failed: %v\n", it.Target.Node, err)
}

// applied closes a change on nodes with its ID and how to undo it (an etcd
// item prints both on its own line).
func (ep *eventPrinter) applied(p *change.Plan) {
	if !ep.p.Text() {
		return
	}
	for _, it := range p.Items {
		if it.Kind != change.KindEtcd {
			fmt.Fprintf(ep.d.Out, "change %s: %d node%s (journal %s; %s)\n", p.ID, nodeItems(p), plural(nodeItems(p)), ep.d.journalPath(), undoHint(p))
			return
		}
	}
}

func nodeItems(p *change.Plan) int {
	n := 0
	for _, it := range p.Items {
		if it.Kind != change.KindEtcd {
			n++
		}
	}
	return n
}

func (ep *eventPrinter) notes(w io.Writer, p *change.Plan) {
	if !ep.p.Text() {
		return
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func (ep *eventPrinter) replanned(ev change.PlanReady) {
	d := ep.d
	if !ep.p.Text() {
		var diff strings.Builder
		for _, it := range ev.Plan.Items {
			diff.WriteString(it.Diff)
		}
		ep.p.Object(replannedWire{Type: "replanned", ID: ev.Plan.ID, Op: ev.Plan.Op, Reason: ev.Reason, Summary: ev.Plan.Summary(), Diff: diff.String()})
		return
	}
	// Always shown: the operator confirmed another plan.
	fmt.Fprintf(d.ErrOut, "note: %s; planned again from what is there now:\n", ev.Reason)
	for _, it := range ev.Plan.Items {
		fmt.Fprint(d.ErrOut, it.Diff)
	}
	if len(ev.Plan.Items) == 0 {
		fmt.Fprintln(d.ErrOut, "note: it is already as wanted now")
	}
}

// outcome prints one target's result: state is dry-run, unchanged or
// applied.
func (ep *eventPrinter) outcome(p *change.Plan, it *change.Item, state string) {
	d := ep.d
	w := changeWire{Type: "change", Op: p.Op, Kind: it.Kind, Resource: it.Target.Resource, Namespace: it.Target.Namespace,
		Name: it.Target.Name, Key: it.Target.Key, Node: it.Target.Node, Path: it.Target.Path, Summary: it.Summary,
		Undoes: it.Undoes, Notes: p.Notes}
	if r, err := strconv.ParseInt(it.PlannedAt, 10, 64); err == nil {
		w.BeforeRevision = r
	}
	switch state {
	case "dry-run":
		w.DryRun, w.Diff = true, it.Diff
	case "unchanged":
		w.Unchanged = true
	case "applied":
		w.ID, w.Attempts = p.ID, it.Attempt
		if it.Kind == change.KindEtcd {
			w.Revision, _ = strconv.ParseInt(it.Result, 10, 64)
		} else {
			w.Result = it.Result
		}
		w.Journal = ep.d.journalPath()
	}
	if !ep.p.Text() {
		ep.p.Object(w)
		return
	}
	what := it.Target.Resource + " " + ref(it.Target.Namespace, it.Target.Name)
	if it.Kind != change.KindEtcd {
		// A node item's summary starts with its node.
		switch state {
		case "dry-run":
			fmt.Fprintf(d.Out, "%s (dry run, nothing changed)\n", it.Summary)
			fmt.Fprint(d.Out, it.Diff)
		case "applied":
			if it.Result == "" {
				fmt.Fprintf(d.Out, "%s: done\n", it.Summary)
			} else {
				fmt.Fprintf(d.Out, "%s: done: %s\n", it.Summary, it.Result)
			}
		default:
			fmt.Fprintf(d.Out, "%s: unchanged\n", it.Summary)
		}
		return
	}
	switch state {
	case "unchanged":
		fmt.Fprintf(d.Out, "%s: unchanged (already as wanted)\n", what)
	case "dry-run":
		fmt.Fprintf(d.Out, "%s: %s (dry run, nothing written)\n", what, it.Summary)
		fmt.Fprint(d.Out, it.Diff)
	default:
		fmt.Fprintf(d.Out, "%s: %s\nchange %s at revision %s (%s)\n", what, it.Summary, p.ID, it.Result, undoHint(p))
		if it.Attempt > 1 {
			fmt.Fprintf(d.ErrOut, "note: the object changed after it was planned; applied as planned again (plan %d)\n", it.Attempt)
		}
	}
}

func ref(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// undoHint says how the change p is undone.
func undoHint(p *change.Plan) string {
	switch p.Op {
	case steps.OpPodsStop:
		return "nothing to undo: kubelet starts stopped pods again; breakglass pods hold keeps them stopped"
	case steps.OpPodsHold:
		return "lift: breakglass pods hold lift " + p.ID
	case steps.OpPodsLift:
		return "hold again with breakglass pods hold"
	case steps.OpKubeletStart, steps.OpControllerManagerRestore:
		return "not undone by stopping again: breakglass kubelet stop (which moves the controller-manager aside first)"
	}
	return "undo: breakglass undo " + p.ID
}
