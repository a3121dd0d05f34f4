package runbook

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/template"
	"time"

	"gopkg.in/yaml.v3"
)

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	stepIDRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]*$`)
	refRE    = regexp.MustCompile(`\.(params|steps)\.([A-Za-z0-9_]+)`)
)

// LoadFile reads and validates the runbook at path.
func LoadFile(path string) (*Runbook, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("runbook: %w", err)
	}
	return Load(path, b)
}

// Load parses and validates a runbook; file names it in errors. Every
// problem found is reported, each with its line and field.
func Load(file string, data []byte) (*Runbook, error) {
	l := &loader{file: file}
	rb := l.load(data)
	if len(l.problems) > 0 {
		return nil, &LoadError{File: file, Problems: l.problems}
	}
	rb.Source, rb.Text = file, data
	return rb, nil
}

type loader struct {
	file     string
	problems []Problem
}

func (l *loader) errorf(n *yaml.Node, field, format string, a ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	l.problems = append(l.problems, Problem{Line: line, Field: field, Msg: fmt.Sprintf(format, a...)})
}

// fields walks a mapping node, reporting keys not in known.
func (l *loader) fields(n *yaml.Node, where string, known []string, each func(key string, k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		l.errorf(n, where, "want a mapping")
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := join(where, k.Value)
		if seen[k.Value] {
			l.errorf(k, field, "given twice")
			continue
		}
		seen[k.Value] = true
		if known != nil && !slices.Contains(known, k.Value) {
			l.errorf(k, field, "unknown field (want one of %s)", strings.Join(known, ", "))
			continue
		}
		each(k.Value, k, v)
	}
}

func join(where, key string) string {
	if where == "" {
		return key
	}
	return where + "." + key
}

// scalar returns a scalar's value; a sequence of scalars is joined with
// newlines (a list).
func (l *loader) scalar(n *yaml.Node, field string) string {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Value
	case yaml.SequenceNode:
		var items []string
		for _, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				l.errorf(c, field, "want a list of plain values")
				continue
			}
			items = append(items, c.Value)
		}
		return strings.Join(items, "\n")
	}
	l.errorf(n, field, "want a value or a list of values")
	return ""
}

func (l *loader) load(data []byte) *Runbook {
	rb := &Runbook{}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line := 0
		var te *yaml.TypeError
		if _, err2 := fmt.Sscanf(err.Error(), "yaml: line %d:", &line); err2 != nil && !asTypeError(err, &te) {
			line = 1
		}
		l.problems = append(l.problems, Problem{Line: line, Field: "(yaml)", Msg: err.Error()})
		return rb
	}
	if len(doc.Content) == 0 {
		l.problems = append(l.problems, Problem{Line: 1, Field: "(file)", Msg: "empty: a runbook needs a name and steps"})
		return rb
	}
	root := doc.Content[0]
	var stepsNode *yaml.Node
	l.fields(root, "", []string{"name", "description", "parameters", "steps"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "name":
			rb.Name = l.scalar(v, "name")
			if !nameRE.MatchString(rb.Name) {
				l.errorf(v, "name", "%q: want lowercase letters, digits and dashes", rb.Name)
			}
		case "description":
			rb.Description = l.scalar(v, "description")
		case "parameters":
			l.fields(v, "parameters", nil, func(name string, k, pv *yaml.Node) {
				rb.Parameters = append(rb.Parameters, l.parameter(name, k, pv))
			})
		case "steps":
			stepsNode = v
		}
	})
	if root.Kind != yaml.MappingNode {
		return rb
	}
	if rb.Name == "" {
		l.errorf(root, "name", "missing: every runbook has a name")
	}
	if stepsNode == nil {
		l.errorf(root, "steps", "missing: a runbook needs at least one step")
		return rb
	}
	if stepsNode.Kind != yaml.SequenceNode || len(stepsNode.Content) == 0 {
		l.errorf(stepsNode, "steps", "want a list of at least one step")
		return rb
	}
	for i, sn := range stepsNode.Content {
		rb.Steps = append(rb.Steps, l.step(rb, i, sn))
	}
	return rb
}

func asTypeError(err error, te **yaml.TypeError) bool {
	t, ok := err.(*yaml.TypeError)
	if ok {
		*te = t
	}
	return ok
}

func (l *loader) parameter(name string, k, v *yaml.Node) Parameter {
	field := "parameters." + name
	p := Parameter{Name: name, Type: "string", Line: k.Line}
	if !stepIDRE.MatchString(name) {
		l.errorf(k, field, "parameter names are letters, digits and _ (templates refer to them as {{ .params.NAME }})")
	}
	var defNode *yaml.Node
	l.fields(v, field, []string{"type", "default", "required", "description"}, func(key string, k, fv *yaml.Node) {
		switch key {
		case "type":
			p.Type = l.scalar(fv, field+".type")
			if !slices.Contains(paramTypes, p.Type) {
				l.errorf(fv, field+".type", "%q: want one of %s", p.Type, strings.Join(paramTypes, ", "))
			}
		case "default":
			p.Default, p.HasDefault, defNode = l.scalar(fv, field+".default"), true, fv
		case "required":
			p.Required = fv.Value == "true"
			if fv.Value != "true" && fv.Value != "false" {
				l.errorf(fv, field+".required", "%q: want true or false", fv.Value)
			}
		case "description":
			p.Description = l.scalar(fv, field+".description")
		}
	})
	if defNode != nil {
		if err := checkValue(p.Type, p.Default); err != nil {
			l.errorf(defNode, field+".default", "%v", err)
		}
		if p.Required {
			l.errorf(defNode, field+".required", "a parameter with a default is not required")
		}
	}
	return p
}

func (l *loader) step(rb *Runbook, i int, n *yaml.Node) Step {
	where := fmt.Sprintf("steps[%d]", i)
	s := Step{Line: n.Line, OnFailure: OnFailureStop, Params: map[string]string{}, ParamLines: map[string]int{}}
	var typeNode, paramsNode *yaml.Node
	l.fields(n, where, []string{"id", "type", "title", "params", "when", "verify", "onFailure"}, func(key string, k, v *yaml.Node) {
		f := where + "." + key
		switch key {
		case "id":
			s.ID = l.scalar(v, f)
			if !stepIDRE.MatchString(s.ID) {
				l.errorf(v, f, "%q: step ids are letters, digits and _ (templates refer to them as {{ .steps.ID.KEY }})", s.ID)
			} else if j, _ := rb.Step(s.ID); j >= 0 {
				l.errorf(v, f, "%q: already the id of steps[%d]", s.ID, j)
			}
		case "type":
			s.Type, typeNode = l.scalar(v, f), v
		case "title":
			s.Title = l.scalar(v, f)
		case "params":
			paramsNode = v
			l.fields(v, f, nil, func(name string, pk, pv *yaml.Node) {
				s.Params[name] = l.scalar(pv, f+"."+name)
				s.ParamLines[name] = pv.Line
				l.template(rb, i, pv, f+"."+name, s.Params[name])
			})
		case "when":
			s.When = l.scalar(v, f)
			l.template(rb, i, v, f, s.When)
		case "verify":
			s.Verify = l.verify(rb, i, v, f)
		case "onFailure":
			s.OnFailure = l.scalar(v, f)
			if !slices.Contains([]string{OnFailureStop, OnFailureContinue, OnFailureRollback}, s.OnFailure) {
				l.errorf(v, f, "%q: want stop, continue or rollback", s.OnFailure)
			}
		}
	})
	if n.Kind != yaml.MappingNode {
		return s
	}
	if s.ID == "" {
		l.errorf(n, where+".id", "missing: every step has an id")
	}
	if s.Type == "" {
		l.errorf(n, where+".type", "missing: every step has a type")
		return s
	}
	t, ok := LookupStep(s.Type)
	if !ok {
		l.errorf(typeNode, where+".type", "%s", stepTypeError(s.Type))
		return s
	}
	if paramsNode == nil {
		paramsNode = n
	}
	specs := t.Params
	if t.CheckParams {
		specs = l.checkSpecs(s.Params["check"], paramsNode, where+".params.check", specs)
	}
	l.params(s.Params, s.ParamLines, specs, paramsNode, where+".params")
	return s
}

// checkSpecs adds the parameters of the check named name to specs.
func (l *loader) checkSpecs(name string, n *yaml.Node, field string, specs []ParamSpec) []ParamSpec {
	if name == "" {
		return specs // reported as a missing required parameter
	}
	c, ok := LookupCheck(name)
	if !ok {
		l.errorf(n, field, "unknown check %q (this build has: %s)", name, checkNames())
		return nil
	}
	return append(slices.Clone(specs), c.Params...)
}

func checkNames() string {
	var names []string
	for _, c := range CheckTypes() {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}

// params checks a step's or a check's parameters against specs: unknown
// names, missing required ones, and literal values of the wrong type
// (templates are checked when rendered). A nil specs skips the check (the
// check was unknown, which is reported).
func (l *loader) params(vals map[string]string, lines map[string]int, specs []ParamSpec, n *yaml.Node, where string) {
	if specs == nil {
		return
	}
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
	}
	for name, v := range vals {
		at := &yaml.Node{Line: lines[name]}
		i := slices.IndexFunc(specs, func(s ParamSpec) bool { return s.Name == name })
		if i < 0 {
			l.errorf(at, where+"."+name, "unknown parameter (want one of %s)", strings.Join(names, ", "))
			continue
		}
		if !strings.Contains(v, "{{") {
			if err := checkParam(specs[i], v); err != nil {
				l.errorf(at, where+"."+name, "%v", err)
			}
		}
	}
	for _, s := range specs {
		if _, ok := vals[s.Name]; s.Required && !ok {
			l.errorf(n, where+"."+s.Name, "missing: %s", s.Doc)
		}
	}
}

func (l *loader) verify(rb *Runbook, i int, n *yaml.Node, where string) *Verify {
	v := &Verify{Line: n.Line, Params: map[string]string{}, Timeout: time.Minute, Interval: 2 * time.Second}
	lines := map[string]int{}
	var paramsNode *yaml.Node
	l.fields(n, where, []string{"check", "params", "timeout", "interval"}, func(key string, k, fv *yaml.Node) {
		f := where + "." + key
		switch key {
		case "check":
			v.Check = l.scalar(fv, f)
		case "params":
			paramsNode = fv
			l.fields(fv, f, nil, func(name string, pk, pv *yaml.Node) {
				v.Params[name] = l.scalar(pv, f+"."+name)
				lines[name] = pv.Line
				l.template(rb, i, pv, f+"."+name, v.Params[name])
			})
		case "timeout", "interval":
			d, err := time.ParseDuration(l.scalar(fv, f))
			if err != nil || d < 0 {
				l.errorf(fv, f, "%q: want a duration such as 90s or 2m", fv.Value)
			}
			if key == "timeout" {
				v.Timeout = d
			} else {
				v.Interval = d
			}
		}
	})
	if n.Kind != yaml.MappingNode {
		return v
	}
	if v.Check == "" {
		l.errorf(n, where+".check", "missing: the check to run (one of %s)", checkNames())
		return v
	}
	if paramsNode == nil {
		paramsNode = n
	}
	l.params(v.Params, lines, l.checkSpecs(v.Check, n, where+".check", []ParamSpec{}), paramsNode, where+".params")
	return v
}

// template checks a value's template syntax and that what it refers to
// exists: a declared parameter, or an earlier step.
func (l *loader) template(rb *Runbook, step int, n *yaml.Node, field, text string) {
	if !strings.Contains(text, "{{") {
		return
	}
	if _, err := template.New(field).Option("missingkey=error").Parse(text); err != nil {
		l.errorf(n, field, "template: %v", err)
		return
	}
	for _, m := range refRE.FindAllStringSubmatch(text, -1) {
		switch m[1] {
		case "params":
			if rb.Param(m[2]) == nil {
				l.errorf(n, field, "refers to parameter %q, which the runbook does not declare", m[2])
			}
		case "steps":
			if j, _ := rb.Step(m[2]); j < 0 || j >= step {
				l.errorf(n, field, "refers to step %q, which is not an earlier step", m[2])
			}
		}
	}
}
