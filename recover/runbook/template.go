package runbook

import (
	"fmt"
	"sort"
	"strings"
	"text/template"
)

// unknownMark starts a value a dry run cannot know (an earlier step's
// change ID before that change exists): a step whose parameters hold it
// is not planned but reported as deferred.
const unknownMark = "<unknown:"

func unknownValue(step, key string) string { return unknownMark + step + "." + key + ">" }

// scope is what templates see: {{ .params.NAME }} and
// {{ .steps.ID.KEY }}.
type scope struct {
	Params map[string]string
	Steps  map[string]map[string]string
}

func (s *scope) data() map[string]any {
	steps := map[string]any{}
	for id, r := range s.Steps {
		steps[id] = r
	}
	return map[string]any{"params": s.Params, "steps": steps}
}

// render expands a template against the scope. A key that is not there
// is an error, not an empty string.
func (s *scope) render(field, text string) (string, error) {
	if !strings.Contains(text, "{{") {
		return text, nil
	}
	t, err := template.New(field).Option("missingkey=error").Parse(text)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	var b strings.Builder
	if err := t.Execute(&b, s.data()); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return b.String(), nil
}

// renderAll renders every value of m.
func (s *scope) renderAll(where string, m map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(m))
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, err := s.render(where+"."+k, m[k])
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

// unknownIn returns the first unknown value among vals.
func unknownIn(vals map[string]string) (string, bool) {
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if i := strings.Index(vals[k], unknownMark); i >= 0 {
			rest := vals[k][i+len(unknownMark):]
			ref, _, _ := strings.Cut(rest, ">")
			return ref, true
		}
	}
	return "", false
}

// ResolveParams merges the operator's values (--param k=v) with the
// runbook's defaults: unknown names, missing required parameters and
// values of the wrong type are errors.
func (r *Runbook) ResolveParams(given map[string]string) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range given {
		p := r.Param(k)
		if p == nil {
			var names []string
			for _, p := range r.Parameters {
				names = append(names, p.Name)
			}
			return nil, fmt.Errorf("--param %s: runbook %s has no such parameter (it has: %s)", k, r.Name, strings.Join(names, ", "))
		}
		if err := checkValue(p.Type, v); err != nil {
			return nil, fmt.Errorf("--param %s: %v", k, err)
		}
		out[k] = v
	}
	for _, p := range r.Parameters {
		if _, ok := out[p.Name]; ok {
			continue
		}
		if p.Required {
			return nil, fmt.Errorf("--param %s is required: %s", p.Name, p.Description)
		}
		out[p.Name] = p.Default
	}
	return out, nil
}
