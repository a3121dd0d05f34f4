// Package runbook is the runbook side of breakglass: the runbook model and
// its YAML loader, the registry of step types (one per lever), the built-in
// runbooks, and the engine that plans and applies each step through
// recover/change, journals the run, resumes it and undoes it.
package runbook

import (
	"fmt"
	"time"
)

// Runbook is a loaded, validated runbook.
type Runbook struct {
	Name        string
	Description string
	Parameters  []Parameter
	Steps       []Step
	// Source names where it was loaded from ("builtin:NAME" or a path).
	Source string
	// Text is the YAML it was loaded from: the journal keeps it, so that a
	// resume or an undo runs the runbook as it ran.
	Text []byte
}

// Parameter is one input of a runbook.
type Parameter struct {
	Name        string
	Type        string // string, int, bool, duration, list
	Default     string
	HasDefault  bool
	Required    bool
	Description string
	Line        int
}

// Parameter types.
var paramTypes = []string{"string", "int", "bool", "duration", "list"}

// Step is one step of a runbook.
type Step struct {
	ID    string
	Type  string
	Title string
	// Params are the step's parameters as written: templates rendered at
	// run time against the runbook's parameters and earlier steps' results.
	Params map[string]string
	// ParamLines says where each parameter was written.
	ParamLines map[string]int
	// When, if set, is a template: the step runs when it renders "true"
	// and is skipped when it renders "false" or "".
	When string
	// Verify, if set, is checked after the step applied.
	Verify    *Verify
	OnFailure string // stop, continue, rollback
	Line      int
}

// Verify is a check run after a step, until it holds or Timeout passes.
type Verify struct {
	Check    string
	Params   map[string]string
	Timeout  time.Duration
	Interval time.Duration
	Line     int
}

// On-failure policies.
const (
	OnFailureStop     = "stop"
	OnFailureContinue = "continue"
	OnFailureRollback = "rollback"
)

// Title is the step's title, or what it is when the runbook gives none.
func (s *Step) Name() string {
	if s.Title != "" {
		return s.Title
	}
	return s.Type + " " + s.ID
}

// Step returns the step with the given ID.
func (r *Runbook) Step(id string) (int, *Step) {
	for i := range r.Steps {
		if r.Steps[i].ID == id {
			return i, &r.Steps[i]
		}
	}
	return -1, nil
}

// Param returns the parameter named name.
func (r *Runbook) Param(name string) *Parameter {
	for i := range r.Parameters {
		if r.Parameters[i].Name == name {
			return &r.Parameters[i]
		}
	}
	return nil
}

// LoadError is a runbook that does not load or validate: each problem
// names the file, the line and the field.
type LoadError struct {
	File     string
	Problems []Problem
}

// Problem is one error in a runbook file.
type Problem struct {
	Line  int
	Field string
	Msg   string
}

func (e *LoadError) Error() string {
	s := ""
	for i, p := range e.Problems {
		if i > 0 {
			s += "\n"
		}
		s += fmt.Sprintf("%s:%d: %s: %s", e.File, p.Line, p.Field, p.Msg)
	}
	return s
}

// ExitCode makes a runbook that does not validate a usage error (2).
func (e *LoadError) ExitCode() int { return 2 }
