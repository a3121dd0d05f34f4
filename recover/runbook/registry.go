package runbook

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/breakglass/breakglass/recover/change"
)

// ParamSpec describes one parameter of a step type or a check.
type ParamSpec struct {
	Name     string
	Type     string // string, int, bool, duration, list
	Required bool
	Default  string
	Doc      string
	// Check, when set, checks a value of the right type further (an
	// enumeration, NAMESPACE/NAME, a range): on literal values when the
	// runbook is loaded, on rendered ones before the step is prepared.
	Check func(v string) error
}

// StepType is one kind of step a runbook can use: a lever (shed-network,
// hold-pods...), a check (wait-until, verify) or a step for people
// (confirm, note). Capabilities register theirs with RegisterStep.
type StepType struct {
	Name    string
	Summary string
	Params  []ParamSpec
	// CheckParams: the step runs a check (wait-until, verify); the params
	// not in Params are the check's, validated against it.
	CheckParams bool
	// Prepare builds what the step does from its rendered parameters. It
	// reads nothing that a dry run must not read and writes nothing: the
	// change is planned by the Action's Planner and applied by the
	// engine.
	Prepare func(ctx context.Context, s *Session, a Args) (*Action, error)
}

// Action is what a prepared step does: a change (Planner, with the Kinds
// that apply it), or, for a step that changes nothing, Do.
type Action struct {
	Kinds   []change.Kind
	Planner change.Planner
	// Result is what later steps may refer to, from the plan that was
	// applied (or, in a dry run, planned).
	Result func(p *change.Plan) map[string]string
	// Do runs a step that changes nothing: a note, a question, a check.
	Do func(ctx context.Context, dryRun bool) (map[string]string, error)
	// Close releases what Prepare opened (containerd connections).
	Close func()
}

// CheckType is a condition a verify or wait-until evaluates, read from
// the nodes, etcd or the apiserver itself, never assumed.
type CheckType struct {
	Name    string
	Summary string
	Params  []ParamSpec
	Build   func(ctx context.Context, s *Session, a Args) (CheckFunc, error)
}

// CheckFunc evaluates a check once: whether it holds, and what was seen.
type CheckFunc func(ctx context.Context) (ok bool, detail string, err error)

var registry = struct {
	sync.Mutex
	steps  map[string]*StepType
	checks map[string]*CheckType
}{steps: map[string]*StepType{}, checks: map[string]*CheckType{}}

// RegisterStep adds a step type. Each capability registers its steps from
// an init function of its own file; runbooks that name one then validate.
func RegisterStep(t StepType) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.steps[t.Name]; dup {
		panic("runbook: step type " + t.Name + " registered twice")
	}
	registry.steps[t.Name] = &t
}

// RegisterCheck adds a check.
func RegisterCheck(c CheckType) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.checks[c.Name]; dup {
		panic("runbook: check " + c.Name + " registered twice")
	}
	registry.checks[c.Name] = &c
}

// LookupStep returns the step type named name.
func LookupStep(name string) (*StepType, bool) {
	registry.Lock()
	defer registry.Unlock()
	t, ok := registry.steps[name]
	return t, ok
}

// LookupCheck returns the check named name.
func LookupCheck(name string) (*CheckType, bool) {
	registry.Lock()
	defer registry.Unlock()
	c, ok := registry.checks[name]
	return c, ok
}

// StepTypes lists the registered step types by name.
func StepTypes() []*StepType {
	registry.Lock()
	defer registry.Unlock()
	var out []*StepType
	for _, t := range registry.steps {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// CheckTypes lists the registered checks by name.
func CheckTypes() []*CheckType {
	registry.Lock()
	defer registry.Unlock()
	var out []*CheckType
	for _, c := range registry.checks {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func stepTypeError(name string) string {
	var names []string
	for _, t := range StepTypes() {
		names = append(names, t.Name)
	}
	return fmt.Sprintf("unknown step type %q (this build has: %s)", name, strings.Join(names, ", "))
}

// Args are a step's or a check's parameters, rendered, with the
// defaults of its spec filled in.
type Args struct {
	what  string
	vals  map[string]string
	specs []ParamSpec
}

func newArgs(what string, vals map[string]string, specs []ParamSpec) Args {
	a := Args{what: what, vals: map[string]string{}, specs: specs}
	for _, s := range specs {
		if s.Default != "" {
			a.vals[s.Name] = s.Default
		}
	}
	for k, v := range vals {
		a.vals[k] = v
	}
	return a
}

// Has reports whether name has a value.
func (a Args) Has(name string) bool { return strings.TrimSpace(a.vals[name]) != "" }

// String returns name's value.
func (a Args) String(name string) string { return strings.TrimSpace(a.vals[name]) }

// Int returns name's value as an integer (0 when empty).
func (a Args) Int(name string) (int, error) {
	v := a.String(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %s %q: want an integer", a.what, name, v)
	}
	return n, nil
}

// Bool returns name's value as a boolean (false when empty).
func (a Args) Bool(name string) (bool, error) {
	v := a.String(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s: %s %q: want true or false", a.what, name, v)
	}
	return b, nil
}

// Duration returns name's value as a duration (0 when empty).
func (a Args) Duration(name string) (time.Duration, error) {
	v := a.String(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %s %q: want a duration such as 90s or 15m", a.what, name, v)
	}
	return d, nil
}

// List returns name's value as a list: items separated by commas or
// newlines, blanks dropped.
func (a Args) List(name string) []string { return splitList(a.vals[name]) }

func splitList(v string) []string {
	var out []string
	for _, line := range strings.Split(v, "\n") {
		for _, s := range strings.Split(line, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// checkValue says whether v is a value of type typ.
func checkValue(typ, v string) error {
	v = strings.TrimSpace(v)
	switch typ {
	case "int":
		if _, err := strconv.Atoi(v); err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
	case "bool":
		if _, err := strconv.ParseBool(v); err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
	case "duration":
		if _, err := time.ParseDuration(v); err != nil {
			return fmt.Errorf("%q is not a duration (90s, 15m)", v)
		}
	}
	return nil
}
