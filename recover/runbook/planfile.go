package runbook

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// PlanFileVersion is the version of the reviewed-plan format.
const PlanFileVersion = 1

// PlanFile is a whole runbook planned, with the state each item was
// planned against: `runbook plan -o plan.json` writes it, a second
// engineer reviews it, `runbook apply plan.json` applies exactly it and
// refuses the steps whose state moved since.
type PlanFile struct {
	Version   int               `json:"version"`
	Runbook   string            `json:"runbook"`
	Source    string            `json:"source"`
	Text      string            `json:"text"`
	Params    map[string]string `json:"params"`
	PlannedAt time.Time         `json:"plannedAt"`
	Steps     []PlannedStep     `json:"steps"`
}

// PlannedStep is one step of a PlanFile: its status in the plan (planned,
// unchanged... or skipped, deferred, done for steps without a change), the
// parameters it was rendered with, and its change.
type PlannedStep struct {
	Index  int               `json:"index"`
	ID     string            `json:"id"`
	Type   string            `json:"type"`
	Status string            `json:"status"`
	Params map[string]string `json:"params,omitempty"`
	Plan   *WirePlan         `json:"plan,omitempty"`
}

// WirePlan is a change.Plan as the file holds it.
type WirePlan struct {
	Op      string           `json:"op"`
	Title   string           `json:"title"`
	Notes   []string         `json:"notes,omitempty"`
	Batch   int              `json:"batch,omitempty"`
	Skipped []change.Skipped `json:"skipped,omitempty"`
	Items   []WireItem       `json:"items"`
}

// WireItem is a change.Item with its kind's payload.
type WireItem struct {
	Kind      string          `json:"kind"`
	Target    journal.Target  `json:"target"`
	Summary   string          `json:"summary"`
	Diff      string          `json:"diff,omitempty"`
	PlannedAt string          `json:"plannedAt"`
	Undoes    string          `json:"undoes,omitempty"`
	Payload   json.RawMessage `json:"payload"`
}

// Plan plans every step of rb and applies none (a dry run), and returns
// the whole plan.
func (e *Engine) Plan(ctx context.Context, rb *Runbook, given map[string]string) (*PlanFile, error) {
	e.DryRun = true
	run, err := e.Start(ctx, rb, given)
	if err != nil {
		return nil, err
	}
	pf := &PlanFile{Version: PlanFileVersion, Runbook: rb.Name, Source: rb.Source, Text: string(rb.Text), Params: run.Params, PlannedAt: e.now().UTC()}
	for i, st := range rb.Steps {
		ps := PlannedStep{Index: i + 1, ID: st.ID, Type: st.Type, Status: run.Status[i], Params: run.Rendered[i]}
		if p := run.Plans[i]; p != nil && len(p.Items) > 0 {
			w := &WirePlan{Op: p.Op, Title: p.Title, Notes: p.Notes, Batch: p.Batch, Skipped: p.Skipped}
			for _, it := range p.Items {
				b, err := json.Marshal(it.Payload)
				if err != nil {
					return nil, fmt.Errorf("step %d (%s): %s item: %w", i+1, st.ID, it.Kind, err)
				}
				w.Items = append(w.Items, WireItem{Kind: it.Kind, Target: it.Target, Summary: it.Summary, Diff: it.Diff,
					PlannedAt: it.PlannedAt, Undoes: it.Undoes, Payload: b})
			}
			ps.Plan = w
		}
		pf.Steps = append(pf.Steps, ps)
	}
	return pf, nil
}

// ApplyPlan applies a reviewed plan: each planned step's items exactly as
// they were planned. Where a target no longer has the state it was planned
// against, the kind writes nothing and the step is refused (exit 4); it is
// not planned again. Steps without a change (notes, checks) run as they
// would; a change the plan could not hold (deferred: it needed an earlier
// step's result) is refused.
func (e *Engine) ApplyPlan(ctx context.Context, pf *PlanFile) (*Run, error) {
	if pf.Version != PlanFileVersion {
		return nil, fmt.Errorf("plan file version %d: this build reads version %d", pf.Version, PlanFileVersion)
	}
	rb, err := Load(pf.Source, []byte(pf.Text))
	if err != nil {
		return nil, fmt.Errorf("the plan's runbook does not load in this build: %w", err)
	}
	if len(rb.Steps) != len(pf.Steps) {
		return nil, fmt.Errorf("the plan has %d steps, its runbook %d: the file was edited", len(pf.Steps), len(rb.Steps))
	}
	e.reviewed = map[int]*PlannedStep{}
	for i := range pf.Steps {
		if pf.Steps[i].ID != rb.Steps[i].ID {
			return nil, fmt.Errorf("plan step %d is %q, its runbook's %q: the file was edited", i+1, pf.Steps[i].ID, rb.Steps[i].ID)
		}
		e.reviewed[i] = &pf.Steps[i]
	}
	return e.Start(ctx, rb, pf.Params)
}

// reviewedPlanner returns the reviewed plan of a step once; asked again
// (its state moved), it refuses.
func (e *Engine) reviewedPlanner(ctx context.Context, i int, ps *PlannedStep) (change.Planner, error) {
	nodes := map[string]nodeops.Target{}
	for _, t := range e.Session.allNodes(ctx) {
		nodes[t.Name] = t
	}
	var items []*change.Item
	for _, w := range ps.Plan.Items {
		payload, err := decodePayload(w, nodes)
		if err != nil {
			return nil, fmt.Errorf("plan step %d (%s): %w", i+1, ps.ID, err)
		}
		items = append(items, &change.Item{Kind: w.Kind, Target: w.Target, Summary: w.Summary, Diff: w.Diff, PlannedAt: w.PlannedAt,
			Undoes: w.Undoes, Payload: payload})
	}
	given := false
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if given {
			return nil, change.Refusedf("step %d (%s): its targets changed since the plan was reviewed: nothing more of it is applied\nhint: make a new plan with breakglass runbook plan and have it reviewed again", i+1, ps.ID)
		}
		given = true
		return &change.Plan{ID: id, Op: ps.Plan.Op, Title: ps.Plan.Title, Notes: ps.Plan.Notes, Batch: ps.Plan.Batch, Skipped: ps.Plan.Skipped, Items: items}, nil
	}, nil
}

// decodePayload reads an item's payload back into its kind's type. The
// node payloads name their node; the target is the inventory's.
func decodePayload(w WireItem, nodes map[string]nodeops.Target) (any, error) {
	target := func(name string) (nodeops.Target, error) {
		t, ok := nodes[name]
		if !ok {
			return t, fmt.Errorf("node %s of the plan is not in the inventory", name)
		}
		return t, nil
	}
	var err error
	switch w.Kind {
	case change.KindEtcd:
		var c etcd.Change
		err = json.Unmarshal(w.Payload, &c)
		return &c, err
	case steps.KindPods:
		var c steps.NodeChange
		if err = json.Unmarshal(w.Payload, &c); err == nil {
			c.Target, err = target(c.Node)
		}
		return &c, err
	case steps.KindNft:
		var c steps.NftChange
		if err = json.Unmarshal(w.Payload, &c); err == nil {
			c.Target, err = target(c.Node)
		}
		return &c, err
	case steps.KindExec:
		var c steps.ExecChange
		err = json.Unmarshal(w.Payload, &c)
		return &c, err
	}
	return nil, fmt.Errorf("a %s item: this build cannot apply that kind from a plan file", w.Kind)
}
