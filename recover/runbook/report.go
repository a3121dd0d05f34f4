package runbook

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// Report is the incident timeline of one run, read from the journal alone
// (breakglass report RUN-ID): what ran, who ran it, each step and each
// change with where and when it was made and how to undo it, what the
// checks saw, and the time to recovery. It carries only what the journal
// holds, and never a change's before or after values.
type Report struct {
	RunID    string
	Runbook  string
	Source   string
	Params   map[string]string
	Operator string
	Started  time.Time
	// Ended is zero for a run that has not ended (interrupted, or still
	// running); Status is then "interrupted".
	Ended  time.Time
	Status string
	Error  string
	// Resumes are the times the run was resumed, and by whom.
	Resumes []ReportEvent
	// HealthyAt is when the apiserver first answered within its SLO (an
	// apiserver check held), in step HealthyStep; zero when none did.
	HealthyAt   time.Time
	HealthyStep int
	Steps       []ReportStep
	Undos       []ReportUndo
	// Undo is the command that undoes the whole run.
	Undo string
}

// TimeToRecovery is the time from the start to HealthyAt (0: not known).
func (r *Report) TimeToRecovery() time.Duration {
	if r.HealthyAt.IsZero() {
		return 0
	}
	return r.HealthyAt.Sub(r.Started)
}

// ReportStep is one step of the run as the journal has it.
type ReportStep struct {
	Index int
	ID    string
	Type  string
	Title string
	// Status is the step's last outcome, "" when it never ran (the run
	// ended or stopped before it).
	Status   string
	Error    string
	Started  time.Time
	Finished time.Time
	// Result is what the step observed or made (a diagnosis's suspect, a
	// check's detail, a change's summary).
	Result  map[string]string
	Changes []ReportChange
	// SkippedBy is "operator" when a person skipped it in the TUI.
	SkippedBy string
	// Outcomes are every end of the step the journal has, in order: a
	// step that failed and was resumed has two.
	Outcomes []ReportOutcome
}

// ReportOutcome is one end of a step.
type ReportOutcome struct {
	Started  time.Time
	Finished time.Time
	Status   string
	Error    string
	Operator string
}

// ReportChange is one change a step made, target by target.
type ReportChange struct {
	ID      string
	Op      string
	Targets []ReportTarget
	// Undo is the exact command that undoes it, or why there is none.
	Undo string
	// UndoneBy are the changes that reverted it since (their IDs).
	UndoneBy []string
}

// ReportTarget is what a change did to one target (an etcd key, a node).
type ReportTarget struct {
	Time     time.Time
	Operator string
	// Where is "node NAME" (and a path) or "etcd KEY".
	Where   string
	Kind    string
	Summary string
	// Status is the last outcome (applied, failed, conflict, unknown), or
	// pending when only the intent was written (the process died).
	Status string
	Error  string
}

// ReportEvent is something done to the run: when, and by whom.
type ReportEvent struct {
	Time     time.Time
	Operator string
}

// ReportUndo is one `runbook undo` of the run (Step 0: the whole run).
type ReportUndo struct {
	Time     time.Time
	Operator string
	Step     int
}

// ReportOptions say how the commands in a report are written.
type ReportOptions struct {
	// Journal, when set, is added to every command as --journal FILE.
	Journal string
}

// BuildReport reads the run id from the journal's records.
func BuildReport(records []journal.Record, id string, o ReportOptions) (*Report, error) {
	l, err := readRun(records, id)
	if err != nil {
		if len(journal.Find(records, id)) > 0 {
			return nil, fmt.Errorf("%s is a change, not a runbook run\nhint: runbook runs have IDs rb-...; breakglass runbook run prints its run ID at the start and at the end", id)
		}
		return nil, err
	}
	rb, _ := Load(l.start.Details["source"], []byte(l.start.Details["text"]))
	jflag := ""
	if o.Journal != "" {
		jflag = " --journal " + o.Journal
	}
	r := &Report{RunID: id, Runbook: l.start.Runbook, Source: l.start.Details["source"], Operator: l.start.Operator, Started: l.start.Time,
		Status: "interrupted", Params: map[string]string{}, Undo: "breakglass runbook undo " + id + jflag}
	json.Unmarshal([]byte(l.start.Details["params"]), &r.Params)
	if l.end != nil {
		r.Ended, r.Status, r.Error = l.end.Time, l.end.Status, l.end.Error
	}

	byIndex := map[int]*ReportStep{}
	step := func(idx int) *ReportStep {
		if s := byIndex[idx]; s != nil {
			return s
		}
		s := &ReportStep{Index: idx}
		if rb != nil && idx >= 1 && idx <= len(rb.Steps) {
			st := &rb.Steps[idx-1]
			s.ID, s.Type, s.Title = st.ID, st.Type, st.Name()
		}
		byIndex[idx] = s
		return s
	}
	if rb != nil {
		for i := range rb.Steps {
			step(i + 1)
		}
	}
	for i := range records {
		rec := &records[i]
		if rec.ID != id || rec.Kind != KindRunbook {
			continue
		}
		idx, _ := strconv.Atoi(rec.Details["index"])
		switch {
		case rec.Op == OpResume:
			r.Resumes = append(r.Resumes, ReportEvent{Time: rec.Time, Operator: rec.Operator})
		case rec.Op == OpUndo:
			n, _ := strconv.Atoi(rec.Details["step"])
			r.Undos = append(r.Undos, ReportUndo{Time: rec.Time, Operator: rec.Operator, Step: n})
		case rec.Op == OpStep && rec.Type == journal.TypeIntent:
			s := step(idx)
			if s.ID == "" {
				s.ID, s.Type, s.Title = rec.Step, rec.Details["type"], rec.Summary
			}
			if s.Started.IsZero() {
				s.Started = rec.Time
			}
		case rec.Op == OpStep:
			s := step(idx)
			if s.ID == "" {
				s.ID, s.Type, s.Title = rec.Step, rec.Details["type"], rec.Summary
			}
			s.Status, s.Error, s.Finished = rec.Status, rec.Error, rec.Time
			s.SkippedBy = rec.Details[DetailSkippedBy]
			if t, err := time.Parse(time.RFC3339Nano, rec.Details[DetailStarted]); err == nil {
				s.Started = t
			}
			s.Outcomes = append(s.Outcomes, ReportOutcome{Started: s.Started, Finished: rec.Time, Status: rec.Status, Error: rec.Error, Operator: rec.Operator})
			s.Result = map[string]string{}
			json.Unmarshal([]byte(rec.Details["result"]), &s.Result)
			if t, err := time.Parse(time.RFC3339Nano, rec.Details[DetailHealthyAt]); err == nil && (r.HealthyAt.IsZero() || t.Before(r.HealthyAt)) {
				r.HealthyAt, r.HealthyStep = t, idx
			}
		}
	}
	undoneBy := map[string][]string{}
	for _, rec := range records {
		if rec.Undoes != "" && rec.Type == journal.TypeOutcome && rec.Status == journal.StatusApplied && !contains(undoneBy[rec.Undoes], rec.ID) {
			undoneBy[rec.Undoes] = append(undoneBy[rec.Undoes], rec.ID)
		}
	}
	for idx, ids := range l.changes {
		s := step(idx)
		for _, cid := range ids {
			c := ReportChange{ID: cid, UndoneBy: undoneBy[cid]}
			recs := journal.Find(records, cid)
			c.Targets = changeTargets(recs)
			if len(recs) > 0 {
				c.Op = recs[0].Op
			}
			switch c.Op {
			case "":
				c.Undo = "nothing to undo: the change wrote nothing"
			case steps.OpExec:
				c.Undo = "cannot be undone: a command ran on the nodes"
			case steps.OpPodsStop:
				c.Undo = "nothing to undo: kubelet starts stopped pods again"
			default:
				c.Undo = fmt.Sprintf("breakglass runbook undo %s --step %d%s", id, idx, jflag)
			}
			s.Changes = append(s.Changes, c)
		}
	}
	for _, s := range byIndex {
		r.Steps = append(r.Steps, *s)
	}
	sort.Slice(r.Steps, func(i, j int) bool { return r.Steps[i].Index < r.Steps[j].Index })
	return r, nil
}

// changeTargets is each target of a change with its last outcome (or its
// intent, when no outcome was written), in the order they were first
// journaled.
func changeTargets(recs []journal.Record) []ReportTarget {
	var order []string
	byWhere := map[string]*ReportTarget{}
	for _, rec := range recs {
		where := targetWhere(rec.Target)
		t := byWhere[where]
		if t == nil {
			t = &ReportTarget{Where: where, Kind: rec.Kind, Status: journal.StatusPending}
			byWhere[where] = t
			order = append(order, where)
		}
		t.Time, t.Operator = rec.Time, rec.Operator
		if rec.Summary != "" {
			t.Summary = rec.Summary
		}
		if rec.Type == journal.TypeOutcome {
			t.Status, t.Error = rec.Status, rec.Error
		}
	}
	out := make([]ReportTarget, 0, len(order))
	for _, w := range order {
		out = append(out, *byWhere[w])
	}
	return out
}

func targetWhere(t journal.Target) string {
	switch {
	case t.Node != "" && t.Path != "":
		return "node " + t.Node + " " + t.Path
	case t.Node != "":
		return "node " + t.Node
	case t.Key != "":
		return "etcd " + t.Key
	case t.Name != "":
		return t.Resource + " " + strings.TrimPrefix(t.Namespace+"/"+t.Name, "/")
	}
	return "-"
}
