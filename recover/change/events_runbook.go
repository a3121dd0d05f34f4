package change

import "time"

// The events of a runbook run. The runbook engine emits them into the same
// stream as the change events of each step's change (PlanReady,
// ItemApplied, Progress...), so that one printer, the JSON output and the
// TUI read one sequence: RunStarted, then per step StepStarted, the step's
// change events or checks, StepFinished, and RunFinished at the end. They
// carry plain values, not runbook types, so that this package needs no
// knowledge of runbooks.

// RunStarted: a runbook run began (or was resumed).
type RunStarted struct {
	RunID    string
	Runbook  string
	Operator string
	Steps    int
	DryRun   bool
	// Resumed is set for `runbook resume`; Done counts the steps already
	// finished, which are not run again.
	Resumed bool
	Done    int
	Time    time.Time
}

// StepStarted: a step is about to be planned and applied.
type StepStarted struct {
	RunID string
	// Index is the step's position in the runbook, from 1.
	Index int
	ID    string
	Type  string
	Title string
}

// StepCheck: a check (a step's verify, a wait-until or verify step) was
// evaluated once.
type StepCheck struct {
	RunID  string
	Index  int
	ID     string
	Check  string
	OK     bool
	Detail string
}

// StepNote: a message for the operator (a note step, or what a step in a
// dry run would do).
type StepNote struct {
	RunID string
	Index int
	ID    string
	Text  string
}

// Step statuses, as StepFinished and the journal carry them.
const (
	StepApplied   = "applied"   // its change was applied (and verified)
	StepUnchanged = "unchanged" // nothing needed to change
	StepPlanned   = "planned"   // a dry run or a reviewed plan: planned, not applied
	StepDone      = "done"      // a step that changes nothing finished (note, confirm, check)
	StepSkipped   = "skipped"   // its when was false, or the operator skipped it
	StepDeferred  = "deferred"  // a dry run could not plan it: it needs an earlier step's result
	StepFailed    = "failed"
)

// StepFinished: a step ended.
type StepFinished struct {
	RunID  string
	Index  int
	ID     string
	Type   string
	Status string
	// Changes are the IDs of the changes the step made (for undo).
	Changes []string
	// Result is what later steps may refer to ({{ .steps.ID.KEY }}).
	Result  map[string]string
	Err     error
	Elapsed time.Duration
}

// RunFinished: the run ended. Healthy is how long after the start the
// last verify of the apiserver passed (0: none did).
type RunFinished struct {
	RunID   string
	Runbook string
	Status  string // ok, failed, cancelled, planned, rolled-back
	Err     error
	Elapsed time.Duration
	Healthy time.Duration
}

func (RunStarted) isEvent()   {}
func (StepStarted) isEvent()  {}
func (StepCheck) isEvent()    {}
func (StepNote) isEvent()     {}
func (StepFinished) isEvent() {}
func (RunFinished) isEvent()  {}
