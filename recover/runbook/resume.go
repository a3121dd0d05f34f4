package runbook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// OpUndo is the journal op of a run's undo, OpResume of each resume (a
// record of its own, for the report: readRun passes over it).
const (
	OpUndo   = "runbook-undo"
	OpResume = "runbook-resume"
)

// runLog is what the journal says about one run.
type runLog struct {
	id      string
	start   *journal.Record
	end     *journal.Record
	undone  bool
	status  map[int]string            // last outcome per step index (from 1)
	results map[int]map[string]string // per step index
	changes map[int][]string          // change IDs per step index, in order
}

func readRun(records []journal.Record, id string) (*runLog, error) {
	l := &runLog{id: id, status: map[int]string{}, results: map[int]map[string]string{}, changes: map[int][]string{}}
	for i := range records {
		r := &records[i]
		if r.ID != id || r.Kind != KindRunbook {
			continue
		}
		idx, _ := strconv.Atoi(r.Details["index"])
		switch {
		case r.Op == OpRun && r.Type == journal.TypeIntent:
			l.start = r
		case r.Op == OpRun:
			l.end = r
		case r.Op == OpUndo:
			l.undone = true
		case r.Op == OpStep && r.Type == journal.TypeIntent:
			if c := r.Details["change"]; c != "" && !contains(l.changes[idx], c) {
				l.changes[idx] = append(l.changes[idx], c)
			}
		case r.Op == OpStep:
			l.status[idx] = r.Status
			res := map[string]string{}
			json.Unmarshal([]byte(r.Details["result"]), &res)
			l.results[idx] = res
			for _, c := range strings.Split(r.Details["changes"], ",") {
				if c != "" && !contains(l.changes[idx], c) {
					l.changes[idx] = append(l.changes[idx], c)
				}
			}
		}
	}
	if l.start == nil {
		return nil, fmt.Errorf("run %s: not in the journal\nhint: check the run ID (runbook run prints it) and --journal", id)
	}
	return l, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Resume goes on with an interrupted (or failed) run: the steps that
// finished are not run again; their results are read back from the
// journal for the steps that refer to them. The runbook is the one the run
// started with (the journal keeps its text).
func (e *Engine) Resume(ctx context.Context, records []journal.Record, id string) (*Run, error) {
	l, err := readRun(records, id)
	if err != nil {
		return nil, err
	}
	if l.undone {
		return nil, change.Refusedf("run %s was undone: it is not resumed\nhint: start a new run with breakglass runbook run %s", id, l.start.Runbook)
	}
	if l.end != nil && (l.end.Status == "ok" || l.end.Status == "rolled-back") {
		return nil, change.Refusedf("run %s already ended (%s): there is nothing to resume", id, l.end.Status)
	}
	rb, err := Load(l.start.Details["source"], []byte(l.start.Details["text"]))
	if err != nil {
		return nil, fmt.Errorf("run %s: its runbook no longer loads in this build: %w", id, err)
	}
	params := map[string]string{}
	json.Unmarshal([]byte(l.start.Details["params"]), &params)
	run := newRun(rb, params, e.now())
	run.ID = id
	from := len(rb.Steps)
	for i := range rb.Steps {
		run.Changes[i] = l.changes[i+1]
		st := l.status[i+1]
		if from == len(rb.Steps) && !finished(st) {
			from = i
		}
		if i < from {
			run.Status[i] = st
			run.Results[rb.Steps[i].ID] = l.results[i+1]
		}
	}
	if !e.DryRun {
		if err := e.open(id); err != nil {
			return nil, err
		}
		if err := e.journal.Append(&journal.Record{Type: journal.TypeIntent, ID: id, Kind: KindRunbook, Op: OpResume, Runbook: rb.Name,
			Status: journal.StatusPending, Summary: "resume run " + id, Details: map[string]string{"from": strconv.Itoa(from + 1)}}); err != nil {
			return nil, err
		}
	}
	e.emit(change.RunStarted{RunID: id, Runbook: rb.Name, Operator: e.operator(), Steps: len(rb.Steps), DryRun: e.DryRun, Resumed: true, Done: from, Time: run.started})
	for i := 0; i < from; i++ {
		e.Session.runID, e.Session.index, e.Session.stepID = id, i+1, rb.Steps[i].ID
		e.Session.Note("finished before (%s): not run again", run.Status[i])
	}
	return run, e.steps(ctx, run, from)
}

func finished(status string) bool {
	switch status {
	case change.StepApplied, change.StepUnchanged, change.StepDone, change.StepSkipped:
		return true
	}
	return false
}

type stepChanges struct {
	Index   int
	ID      string
	Changes []string
}

// Undo reverses a run: the changes of its steps (of step only, when step
// is not 0), the last first, each through change.Engine.Undo with every
// kind registered. A change that cannot be undone (exec) or has nothing to
// put back (a stop) is reported and passed over.
func (e *Engine) Undo(ctx context.Context, records []journal.Record, id string, step int) error {
	l, err := readRun(records, id)
	if err != nil {
		return err
	}
	var list []stepChanges
	idx := make([]int, 0, len(l.changes))
	for i := range l.changes {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		if step == 0 || step == i {
			list = append(list, stepChanges{Index: i, Changes: l.changes[i]})
		}
	}
	if step != 0 && len(list) == 0 {
		return fmt.Errorf("run %s: step %d made no change to undo", id, step)
	}
	if !e.DryRun {
		if err := e.open(id); err != nil {
			return err
		}
	}
	e.emit(change.RunStarted{RunID: id, Runbook: l.start.Runbook, Operator: e.operator(), Steps: len(list), DryRun: e.DryRun, Time: e.now()})
	err = e.undoRun(ctx, id, step, list)
	status := "undone"
	if err != nil {
		status = "undo-failed"
	}
	if e.journal != nil && !e.DryRun && err == nil {
		if jerr := e.journal.Append(&journal.Record{Type: journal.TypeOutcome, ID: id, Kind: KindRunbook, Op: OpUndo, Runbook: l.start.Runbook,
			Status: journal.StatusApplied, Summary: "undo run " + id, Details: map[string]string{"step": strconv.Itoa(step)}}); jerr != nil {
			err = jerr
		}
	}
	e.emit(change.RunFinished{RunID: id, Runbook: l.start.Runbook, Status: status, Err: err})
	return err
}

// undoRun undoes the changes of list, the last first.
func (e *Engine) undoRun(ctx context.Context, id string, step int, list []stepChanges) error {
	s := e.Session
	ce := &change.Engine{Emit: e.Emit, Confirm: e.Confirm, DryRun: e.DryRun,
		OpenJournal: func() (*journal.Journal, error) { return e.journal, nil },
		NewID:       func() string { return journal.NewID(e.now()) }}
	nodes := s.allNodes(ctx)
	ce.Register(s.Env.Nft(nodes))
	ce.Register(&steps.Exec{Runner: s.Env.Runner, Options: s.Env.Fanout})
	// The kinds on the control plane's files and services: their records
	// carry the paths, backups and phases the undo needs.
	ce.Register(runbookManifest{s.Env.Manifest(nodes, "", "")})
	ce.Register(runbookMember{s.Env.APIServerMember(steps.MemberPeers(nodes, ""), "", "")})
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	_, storeErr := s.Store(ctx)
	// After the Store: started kubelets are waited for until their lease
	// is renewed, where etcd answers.
	ce.Register(runbookService{s.Env.Service(nodes, steps.ServiceOptions{})})
	if storeErr == nil {
		via, _ := steps.ContainerdVia(s.Env.Inventory, "")
		pk := s.Env.Pods(nodes, via)
		closers = append(closers, pk.Close)
		ce.Register(pk)
		ce.Register(pk.Etcd)
		ce.Register(&steps.FlowControl{Etcd: pk.Etcd})
	}
	var failed []string
	for i := len(list) - 1; i >= 0; i-- {
		sc := list[i]
		for j := len(sc.Changes) - 1; j >= 0; j-- {
			cid := sc.Changes[j]
			s.runID, s.index, s.stepID = id, sc.Index, sc.ID
			records, err := s.Records()
			if err != nil {
				return err
			}
			recs := journal.Find(records, cid)
			if len(recs) == 0 {
				s.Note("change %s of step %d wrote nothing: nothing to undo", cid, sc.Index)
				continue
			}
			if recs[0].Op == steps.OpExec {
				s.Note("change %s of step %d ran a command on nodes (exec): it cannot be undone; passed over", cid, sc.Index)
				continue
			}
			if recs[0].Op == steps.OpKubeletStart || recs[0].Op == steps.OpControllerManagerRestore {
				s.Note("change %s of step %d started components (%s): it is not undone by stopping them again; passed over", cid, sc.Index, recs[0].Op)
				continue
			}
			if recs[0].Op == steps.OpPodsStop {
				s.Note("change %s of step %d stopped pods: nothing to put back (kubelet starts them again)", cid, sc.Index)
				continue
			}
			if _, err := ce.Undo(ctx, records, cid, e.Force); err != nil {
				var partial *change.PartialError
				if errors.As(err, &partial) {
					failed = append(failed, fmt.Sprintf("step %d change %s: %v", sc.Index, cid, err))
					continue
				}
				return fmt.Errorf("undo step %d (change %s): %w", sc.Index, cid, err)
			}
		}
	}
	if len(failed) > 0 {
		return &change.PartialError{What: "runbook undo", Failed: len(failed), Total: len(list)}
	}
	return nil
}

// UndoStep undoes the changes of one step of run id, as `runbook undo
// --step N` does, while the run itself may still be going on in this
// process: the TUI's undo key, pressed while the run waits at a question.
// It works on a Session of its own, so that the waiting step keeps its
// own, and asks through the same Confirm.
func (e *Engine) UndoStep(ctx context.Context, id string, step int) error {
	records, err := e.Session.Records()
	if err != nil {
		return err
	}
	u := &Engine{Session: e.Session.fork(), DryRun: e.DryRun, Confirm: e.Confirm, OpenJournal: e.OpenJournal, Force: e.Force,
		Now: e.Now, Emit: e.Emit, journal: e.journal}
	return u.Undo(ctx, records, id, step)
}
