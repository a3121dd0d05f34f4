package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
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
	ep := &eventPrinter{d: d, p: newPrinter(d.Out, d.Global.Output)}
	stream := change.NewStream(256, ep.print)
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
			return confirm(ctx, d, fmt.Sprintf("%s (%s)?", p.Title, p.Summary()))
		}
	}
	e.Register(k)
	return e, k, stream, nil
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
	}
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
		w.Revision, _ = strconv.ParseInt(it.Result, 10, 64)
		w.Journal = ep.d.journalPath()
	}
	if !ep.p.Text() {
		ep.p.Object(w)
		return
	}
	what := it.Target.Resource + " " + ref(it.Target.Namespace, it.Target.Name)
	if it.Kind != change.KindEtcd {
		what = it.Target.Node + " " + it.Target.Path
	}
	switch state {
	case "unchanged":
		fmt.Fprintf(d.Out, "%s: unchanged (already as wanted)\n", what)
	case "dry-run":
		fmt.Fprintf(d.Out, "%s: %s (dry run, nothing written)\n", what, it.Summary)
		fmt.Fprint(d.Out, it.Diff)
	default:
		fmt.Fprintf(d.Out, "%s: %s\nchange %s at revision %s (undo: breakglass undo %s)\n", what, it.Summary, p.ID, it.Result, p.ID)
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
