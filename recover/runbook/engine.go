package runbook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// Journal ops of a run. Their records have kind "runbook" and the run's ID
// as their ID; the changes the steps make are journaled by their kinds
// under their own IDs, with the run's ID as RunID.
const (
	KindRunbook = "runbook"
	OpRun       = "runbook-run"
	OpStep      = "runbook-step"
)

// DetailHealthyAt is the detail of a step's outcome record that says when
// its apiserver check first held in the run (RFC 3339), the run's time to
// recovery.
const DetailHealthyAt = "apiserverHealthyAt"

// DetailSkippedBy is the detail of a skipped step's outcome record when a
// person skipped it ("operator"), not its when.
const DetailSkippedBy = "skippedBy"

// ErrSkip is what Confirm (or a Session's Ask) returns when the operator
// skips the step being asked about (the TUI's s key): nothing of it is
// applied, it is journaled as skipped, and the run goes on with the next
// step. Only a Skippable step can be skipped; for any other, ErrSkip is a
// refusal (exit 4) and the run stops there, as a no would stop it.
var ErrSkip = errors.New("skipped by the operator")

// Skippable reports whether the operator may skip the step: its onFailure
// is continue, so the runbook already goes on without it when it fails.
func (s *Step) Skippable() bool { return s.OnFailure == OnFailureContinue }

// DetailStarted is the detail of a step's outcome record that says when
// the step started (RFC 3339); the record's own time is when it ended.
const DetailStarted = "started"

// Engine runs runbooks: every step is planned, then applied through
// recover/change (or, with DryRun, planned only), and the run's progress
// is journaled so that it can be resumed and undone.
type Engine struct {
	Session *Session
	DryRun  bool
	// Confirm asks for consent to each step's plan; nil: given (--yes).
	Confirm change.Confirm
	// OpenJournal opens the journal (never on a dry run).
	OpenJournal func() (*journal.Journal, error)
	// Force lets an undo put back what a change replaced even where the
	// target changed since (a controller updated an object's status).
	Force bool
	Now   func() time.Time
	// Emit receives every event: the run's and each change's.
	Emit func(change.Event)

	journal *journal.Journal
	// reviewed are the steps of a reviewed plan being applied (ApplyPlan).
	reviewed map[int]*PlannedStep
}

// Run is one run of a runbook.
type Run struct {
	ID      string
	Runbook *Runbook
	Params  map[string]string
	// Results are the steps' results by step ID, Status their statuses,
	// Changes their change IDs (by step index).
	Results map[string]map[string]string
	Status  map[int]string
	Changes map[int][]string
	// Plans are the steps' change plans, Rendered their rendered
	// parameters (by step index).
	Plans    map[int]*change.Plan
	Rendered map[int]map[string]string
	started  time.Time
	healthy  time.Duration
	// healthyAt is when the apiserver check first held, healthyStep the
	// step (index) whose check it was: its journal record says so.
	healthyAt   time.Time
	healthyStep int
}

// Healthy is how long after the start of the run the apiserver first
// answered within its SLO (an apiserver check held): the run's time to
// recovery, as its RunFinished event reports it. 0 when no check did.
func (r *Run) Healthy() time.Duration { return r.healthy }

// RunError is a run that did not end well: which step, and why.
type RunError struct {
	Step  int
	ID    string
	Err   error
	Undid bool // a rollback undid the run's changes
}

func (e *RunError) Error() string {
	s := fmt.Sprintf("step %d (%s): %v", e.Step, e.ID, e.Err)
	if e.Undid {
		s += "\nthe run's changes were rolled back (onFailure: rollback)"
	}
	return s
}

func (e *RunError) Unwrap() error { return e.Err }

// ExitCode is the failed step's: 3 for nodes that failed, 4 refused, 130
// cancelled, 1 otherwise.
func (e *RunError) ExitCode() int {
	var coded interface{ ExitCode() int }
	switch {
	case errors.Is(e.Err, context.Canceled):
		return 130
	case errors.As(e.Err, &coded):
		return coded.ExitCode()
	}
	return 1
}

func (e *Engine) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Engine) emit(ev change.Event) {
	if e.Emit != nil {
		e.Emit(ev)
	}
}

func newRun(rb *Runbook, params map[string]string, now time.Time) *Run {
	return &Run{ID: change.DryRunID, Runbook: rb, Params: params, Results: map[string]map[string]string{}, Status: map[int]string{},
		Changes: map[int][]string{}, Plans: map[int]*change.Plan{}, Rendered: map[int]map[string]string{}, started: now}
}

// NewRunID names a run.
func NewRunID(now time.Time) string { return "rb-" + journal.NewID(now) }

// Start runs rb from its first step with the operator's parameters.
func (e *Engine) Start(ctx context.Context, rb *Runbook, given map[string]string) (*Run, error) {
	params, err := rb.ResolveParams(given)
	if err != nil {
		return nil, err
	}
	run := newRun(rb, params, e.now())
	if !e.DryRun {
		run.ID = NewRunID(e.now())
		if err := e.open(run.ID); err != nil {
			return nil, err
		}
		pj, _ := json.Marshal(params)
		if err := e.journal.Append(&journal.Record{Type: journal.TypeIntent, ID: run.ID, Kind: KindRunbook, Op: OpRun, Runbook: rb.Name,
			Status: journal.StatusPending, Summary: "run runbook " + rb.Name,
			Details: map[string]string{"source": rb.Source, "text": string(rb.Text), "params": string(pj)}}); err != nil {
			return nil, err
		}
	}
	e.emit(change.RunStarted{RunID: run.ID, Runbook: rb.Name, Operator: e.operator(), Steps: len(rb.Steps), DryRun: e.DryRun, Time: run.started})
	return run, e.steps(ctx, run, 0)
}

func (e *Engine) operator() string {
	if e.journal != nil {
		return e.journal.Operator()
	}
	return ""
}

func (e *Engine) open(runID string) error {
	if e.journal != nil {
		return nil
	}
	j, err := e.OpenJournal()
	if err != nil {
		return err
	}
	e.journal = j.WithRun(runID)
	return nil
}

// steps runs the steps from index from on, then ends the run.
func (e *Engine) steps(ctx context.Context, run *Run, from int) error {
	var runErr error
	for i := from; i < len(run.Runbook.Steps); i++ {
		st := &run.Runbook.Steps[i]
		err := e.step(ctx, run, i)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			runErr = &RunError{Step: i + 1, ID: st.ID, Err: context.Canceled}
			break
		}
		if st.OnFailure == OnFailureContinue {
			continue
		}
		re := &RunError{Step: i + 1, ID: st.ID, Err: err}
		if st.OnFailure == OnFailureRollback && !e.DryRun {
			e.Session.Note("rolling back the run's changes (onFailure: rollback)")
			if uerr := e.undoRun(ctx, run.ID, 0, e.allChanges(run)); uerr != nil {
				re.Err = fmt.Errorf("%v; and the rollback failed: %w", err, uerr)
			} else {
				re.Undid = true
			}
		}
		runErr = re
		break
	}
	status := "ok"
	switch {
	case e.DryRun:
		status = "planned"
	case runErr != nil && errors.Is(runErr, context.Canceled):
		status = "cancelled"
	case runErr != nil:
		status = "failed"
		var re *RunError
		if errors.As(runErr, &re) && re.Undid {
			status = "rolled-back"
		}
	}
	if e.journal != nil {
		rec := &journal.Record{Type: journal.TypeOutcome, ID: run.ID, Kind: KindRunbook, Op: OpRun, Runbook: run.Runbook.Name,
			Status: status, Summary: "run runbook " + run.Runbook.Name}
		if runErr != nil {
			rec.Error = runErr.Error()
		}
		// Cancelled: the run is interrupted, not ended; resume goes on.
		if status != "cancelled" {
			if err := e.journal.Append(rec); err != nil && runErr == nil {
				runErr = err
			}
		}
	}
	e.emit(change.RunFinished{RunID: run.ID, Runbook: run.Runbook.Name, Status: status, Err: runErr, Elapsed: e.now().Sub(run.started), Healthy: run.healthy})
	return runErr
}

func (e *Engine) allChanges(run *Run) []stepChanges {
	var out []stepChanges
	for i := range run.Runbook.Steps {
		if ids := run.Changes[i]; len(ids) > 0 {
			out = append(out, stepChanges{Index: i + 1, ID: run.Runbook.Steps[i].ID, Changes: ids})
		}
	}
	return out
}

// step runs one step: when, render, prepare, plan and apply (or run), then
// verify; its outcome is journaled and reported.
func (e *Engine) step(ctx context.Context, run *Run, i int) (err error) {
	st := &run.Runbook.Steps[i]
	s := e.Session
	s.runID, s.index, s.stepID = run.ID, i+1, st.ID
	start := e.now()
	e.emit(change.StepStarted{RunID: run.ID, Index: i + 1, ID: st.ID, Type: st.Type, Title: st.Name()})
	status, result := "", map[string]string{}
	skippedBy := ""
	defer func() {
		if errors.Is(err, ErrSkip) {
			if st.Skippable() {
				status, result, err, skippedBy = change.StepSkipped, map[string]string{}, nil, "operator"
				s.Note("skipped by the operator: nothing of it was applied")
			} else {
				err = change.Refusedf("step %d (%s) cannot be skipped: its onFailure is %s, not continue\nhint: answer no to stop the run here, and resume it later", i+1, st.ID, st.OnFailure)
			}
		}
		if err != nil {
			status = change.StepFailed
		}
		run.Status[i] = status
		run.Results[st.ID] = result
		if jerr := e.journalStep(run, i, start, status, skippedBy, result, err); jerr != nil && err == nil {
			err = jerr
		}
		e.emit(change.StepFinished{RunID: run.ID, Index: i + 1, ID: st.ID, Type: st.Type, Status: status, Changes: run.Changes[i],
			Result: result, Err: err, Elapsed: e.now().Sub(start)})
	}()
	sc := &scope{Params: run.Params, Steps: run.Results}
	reviewed := e.reviewed[i]
	if reviewed != nil && reviewed.Status == change.StepSkipped {
		status = change.StepSkipped
		return nil
	}
	if st.When != "" && reviewed == nil {
		w, err := sc.render("when", st.When)
		if err != nil {
			return err
		}
		switch strings.TrimSpace(w) {
		case "true":
		case "false", "":
			status = change.StepSkipped
			return nil
		default:
			return fmt.Errorf("when: rendered %q: want true or false", w)
		}
	}
	vals, err := sc.renderAll("params", st.Params)
	if err != nil {
		return err
	}
	if reviewed != nil && reviewed.Plan != nil {
		vals = reviewed.Params
	}
	run.Rendered[i] = vals
	if ref, ok := unknownIn(vals); ok {
		status = change.StepDeferred
		s.Note("not planned: it needs %s, known only once that step is applied", ref)
		return nil
	}
	t, ok := LookupStep(st.Type)
	if !ok {
		return errors.New(stepTypeError(st.Type))
	}
	specs := t.Params
	if t.CheckParams {
		if c, ok := LookupCheck(vals["check"]); ok {
			specs = append(append([]ParamSpec(nil), specs...), c.Params...)
		}
	}
	args := newArgs(st.Type+" "+st.ID, vals, specs)
	if err := args.check(); err != nil {
		return err
	}
	act, err := t.Prepare(ctx, s, args)
	if err != nil {
		return err
	}
	if act.Close != nil {
		defer act.Close()
	}
	if act.Planner == nil {
		r, err := act.Do(ctx, e.DryRun)
		for k, v := range r {
			result[k] = v
		}
		status = change.StepDone
		if err == nil && !e.DryRun && (st.Type == "verify" || st.Type == "wait-until") {
			e.markHealthy(run, i, vals["check"])
		}
		return err
	}
	if reviewed != nil {
		switch {
		case reviewed.Plan != nil:
			if act.Planner, err = e.reviewedPlanner(ctx, i, reviewed); err != nil {
				return err
			}
		case reviewed.Status == change.StepDeferred:
			return change.Refusedf("step %d (%s) is not in the reviewed plan: a dry run could not plan it (it needs an earlier step's result)\nhint: run it with breakglass runbook resume, which plans it then", i+1, st.ID)
		default:
			// Reviewed as nothing to change: nothing is applied.
			status = change.StepUnchanged
			return nil
		}
	}
	p, err := e.applyChange(ctx, run, i, act)
	run.Plans[i] = p
	if p != nil {
		res := changeResult(p)
		if act.Result != nil {
			res = act.Result(p)
		}
		for k, v := range res {
			result[k] = v
		}
		if e.DryRun {
			result["change"] = unknownValue(st.ID, "change")
		}
	}
	if err != nil {
		return err
	}
	switch {
	case len(p.Items) == 0:
		status = change.StepUnchanged
	case e.DryRun:
		status = change.StepPlanned
	default:
		status = change.StepApplied
	}
	if st.Verify != nil {
		return e.verify(ctx, run, st, sc)
	}
	return nil
}

// markHealthy records when an apiserver check (of step i) first held.
func (e *Engine) markHealthy(run *Run, i int, check string) {
	if check == "apiserver" && run.healthy == 0 {
		now := e.now()
		run.healthy, run.healthyAt, run.healthyStep = now.Sub(run.started), now, i
	}
}

// applyChange plans and applies a step's change through a change engine
// of its own (its kinds), journaling the change's ID under the step
// before the change's first record.
func (e *Engine) applyChange(ctx context.Context, run *Run, i int, act *Action) (*change.Plan, error) {
	st := &run.Runbook.Steps[i]
	ce := &change.Engine{Emit: e.Emit, Confirm: e.Confirm, DryRun: e.DryRun,
		OpenJournal: func() (*journal.Journal, error) { return e.journal, nil }}
	var idErr error
	ce.NewID = func() string {
		id := journal.NewID(e.now())
		run.Changes[i] = append(run.Changes[i], id)
		idErr = e.journal.Append(&journal.Record{Type: journal.TypeIntent, ID: run.ID, Kind: KindRunbook, Op: OpStep, Runbook: run.Runbook.Name,
			Step: st.ID, Status: journal.StatusPending, Summary: st.Name(),
			Details: map[string]string{"index": strconv.Itoa(i + 1), "type": st.Type, "change": id}})
		return id
	}
	for _, k := range act.Kinds {
		if k != nil {
			ce.Register(k)
		}
	}
	p, err := ce.Run(ctx, act.Planner)
	if idErr != nil && err == nil {
		err = idErr
	}
	return p, err
}

func (e *Engine) verify(ctx context.Context, run *Run, st *Step, sc *scope) error {
	vals, err := sc.renderAll("verify.params", st.Verify.Params)
	if err != nil {
		return err
	}
	c, ok := LookupCheck(st.Verify.Check)
	if !ok {
		return fmt.Errorf("verify: unknown check %q", st.Verify.Check)
	}
	args := newArgs("verify "+c.Name, vals, c.Params)
	if err := args.check(); err != nil {
		return err
	}
	f, err := c.Build(ctx, e.Session, args)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if e.DryRun {
		// What it checks for comes from the change, which a dry run does
		// not apply: read once and reported, never failed.
		ok, detail, err := f(ctx)
		e.emit(change.StepCheck{RunID: run.ID, Index: e.Session.index, ID: st.ID, Check: c.Name, OK: ok && err == nil, Detail: checkDetail(detail, err)})
		return nil
	}
	if _, err := waitCheck(ctx, e.Session, c.Name, f, st.Verify.Timeout, st.Verify.Interval); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	e.markHealthy(run, e.Session.index-1, c.Name)
	return nil
}

func (e *Engine) journalStep(run *Run, i int, start time.Time, status, skippedBy string, result map[string]string, stepErr error) error {
	if e.journal == nil {
		return nil
	}
	st := &run.Runbook.Steps[i]
	rj, _ := json.Marshal(result)
	rec := &journal.Record{Type: journal.TypeOutcome, ID: run.ID, Kind: KindRunbook, Op: OpStep, Runbook: run.Runbook.Name, Step: st.ID,
		Status: status, Summary: st.Name(),
		Details: map[string]string{"index": strconv.Itoa(i + 1), "type": st.Type, "changes": strings.Join(run.Changes[i], ","), "result": string(rj),
			DetailStarted: start.UTC().Format(time.RFC3339Nano)}}
	if stepErr != nil {
		rec.Error = stepErr.Error()
	}
	if skippedBy != "" {
		rec.Details[DetailSkippedBy] = skippedBy
	}
	if !run.healthyAt.IsZero() && run.healthyStep == i {
		// The time to recovery, for breakglass report: when the
		// apiserver first answered within its SLO.
		rec.Details[DetailHealthyAt] = run.healthyAt.UTC().Format(time.RFC3339Nano)
	}
	return e.journal.Append(rec)
}
