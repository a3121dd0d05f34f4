package inventory

import (
	"cmp"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// UnmarshalYAML reads a duration such as "5s" or "1m30s".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as "5s".
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// decodeStrict checks the YAML tree against the shape of out before decoding
// it, so that an unknown key or a value of the wrong type is reported with
// its file, line and key path, and records the line of every key for later
// checks. yaml.v3's Decoder.KnownFields(true) is not enough: its errors give
// the line but not the key path (nodes[2].adress), name Go types
// ("field adress not found in type inventory.Node", "cannot unmarshal !!str
// into int") and cannot suggest the key that was meant.
func decodeStrict(path string, data []byte, out *Inventory) error {
	out.lines = map[string]int{}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := err.Error()
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &Error{File: path, Line: line, Msg: "not valid YAML: " + m[2]}
		}
		return &Error{File: path, Msg: "not valid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
	}
	if len(doc.Content) == 0 {
		return nil // an empty file is an empty inventory
	}
	root := doc.Content[0]
	w := &walker{file: path, lines: out.lines}
	if err := w.walk(root, reflect.TypeOf(*out), ""); err != nil {
		return err
	}
	if err := root.Decode(out); err != nil {
		// The walk should have caught every type problem; this is a backstop.
		return &Error{File: path, Line: root.Line, Msg: err.Error()}
	}
	return nil
}

type walker struct {
	file  string
	lines map[string]int
}

func (w *walker) errorf(n *yaml.Node, key, format string, a ...any) error {
	return &Error{File: w.file, Line: n.Line, Key: key, Msg: fmt.Sprintf(format, a...)}
}

var durationType = reflect.TypeOf(Duration{})

func (w *walker) walk(n *yaml.Node, t reflect.Type, key string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // an empty value leaves the default
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		if n.Kind != yaml.ScalarNode {
			return w.errorf(n, key, "want a duration such as 10s, got %s", kindName(n))
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			return w.errorf(n, key, "%q is not a duration: write it as 10s, 1m30s or 500ms", n.Value)
		}
		return nil
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return w.errorf(n, key, "want a mapping of keys, got %s", kindName(n))
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := joinKey(key, k.Value)
			f, ok := fields[k.Value]
			if !ok {
				return w.errorf(k, sub, "unknown key%s", suggest(k.Value, fields))
			}
			w.lines[sub] = k.Line
			if err := w.walk(v, f.Type, sub); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return w.errorf(n, key, "want a list, got %s", kindName(n))
		}
		for i, item := range n.Content {
			sub := fmt.Sprintf("%s[%d]", key, i)
			w.lines[sub] = item.Line
			if err := w.walk(item, t.Elem(), sub); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return w.errorf(n, key, "want a mapping, got %s", kindName(n))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := joinKey(key, k.Value)
			w.lines[sub] = k.Line
			if err := w.walk(v, t.Elem(), sub); err != nil {
				return err
			}
		}
		return nil
	case t.Kind() == reflect.String:
		if n.Kind != yaml.ScalarNode {
			return w.errorf(n, key, "want a string, got %s", kindName(n))
		}
		return nil
	case t.Kind() == reflect.Int:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return w.errorf(n, key, "want a whole number, got %s", describe(n))
		}
		return nil
	case t.Kind() == reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return w.errorf(n, key, "want true or false, got %s", describe(n))
		}
		return nil
	}
	return w.errorf(n, key, "internal: no check for %s", t)
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	m := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		m[name] = f
	}
	return m
}

func joinKey(parent, k string) string {
	if parent == "" {
		return k
	}
	return parent + "." + k
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return describe(n)
	}
}

func describe(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return kindName(n)
	}
	return fmt.Sprintf("%q", n.Value)
}

// suggest names the closest known key, or else all of them, so that a typo
// is easy to fix.
func suggest(k string, fields map[string]reflect.StructField) string {
	names := slices.Sorted(maps.Keys(fields))
	if len(names) == 0 {
		return ""
	}
	closest := slices.MinFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(distance(k, a), distance(k, b)), strings.Compare(a, b))
	})
	if distance(k, closest) <= 2 {
		return fmt.Sprintf(" (did you mean %q?)", closest)
	}
	return fmt.Sprintf(" (known keys: %s)", strings.Join(names, ", "))
}

// distance is the Levenshtein distance, case-insensitive.
func distance(a, b string) int {
	a, b = strings.ToLower(a), strings.ToLower(b)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
