package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// Printer is the one output interface of the commands: a text table for
// people, JSON lines or YAML documents for programs. Wire structs passed to
// Object carry a "type" field (see docs/json-output.md). get -o json|yaml
// prints Kubernetes objects in kubectl's shape instead, with kubePrinter.
type Printer interface {
	// Table prints a header row and rows (text output only; JSON and YAML
	// printers ignore it, commands call Object for each row instead).
	Table(header []string, rows [][]string) error
	// Object prints one wire struct (JSON and YAML printers only).
	Object(v any) error
	// Text reports whether this printer wants tables.
	Text() bool
}

func newPrinter(w io.Writer, format string) Printer {
	switch format {
	case "json":
		return &jsonPrinter{w: w}
	case "yaml":
		return &yamlPrinter{w: w}
	default:
		return &tablePrinter{w: w}
	}
}

type tablePrinter struct{ w io.Writer }

func (p *tablePrinter) Text() bool       { return true }
func (p *tablePrinter) Object(any) error { return nil }
func (p *tablePrinter) Table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(p.w, 0, 4, 3, ' ', 0)
	if len(header) > 0 {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

type jsonPrinter struct{ w io.Writer }

func (p *jsonPrinter) Text() bool                       { return false }
func (p *jsonPrinter) Table([]string, [][]string) error { return nil }
func (p *jsonPrinter) Object(v any) error               { return printJSON(p.w, v) }

type yamlPrinter struct {
	w     io.Writer
	count int
}

func (p *yamlPrinter) Text() bool                       { return false }
func (p *yamlPrinter) Table([]string, [][]string) error { return nil }
func (p *yamlPrinter) Object(v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	if p.count > 0 {
		io.WriteString(p.w, "---\n")
	}
	p.count++
	_, err = p.w.Write(b)
	return err
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// kubePrinter prints Kubernetes objects as kubectl get -o json|yaml does, so
// that jq, yq and kubectl apply -f - take them: the object alone when one
// was asked for by name, else one List of them all. Its bytes are those of
// kubectl's printers (k8s.io/cli-runtime/pkg/printers): the object as the
// API server serves it, read back unstructured (keys sorted), through
// json.MarshalIndent with four spaces or sigs.k8s.io/yaml.
//
// The List is written item by item, so that a listing of a big cluster is
// never held in memory; Close ends it. A listing that fails before Close
// leaves an unfinished List behind (invalid JSON, YAML without its kind),
// which no consumer takes for a whole one.
type kubePrinter struct {
	w      io.Writer
	yaml   bool
	single bool
	items  int
}

// Print prints one object.
func (p *kubePrinter) Print(obj runtime.Object) error {
	u, err := kubeView(obj)
	if err != nil {
		return err
	}
	var b []byte
	switch {
	case p.single && p.yaml:
		b, err = yaml.Marshal(u)
	case p.single:
		if b, err = json.MarshalIndent(u, "", "    "); err == nil {
			b = append(b, '\n')
		}
	case p.yaml:
		// A one-item sequence sits at the column of the List's items: the
		// same bytes as yaml.Marshal of the whole List.
		b, err = yaml.Marshal([]any{u.Object})
		if err == nil && p.items == 0 {
			b = append([]byte("apiVersion: v1\nitems:\n"), b...)
		}
	default:
		b, err = json.MarshalIndent(u, "        ", "    ")
		sep := ",\n        "
		if p.items == 0 {
			sep = "{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n        "
		}
		b = append([]byte(sep), b...)
	}
	if err != nil {
		return err
	}
	p.items++
	_, err = p.w.Write(b)
	return err
}

// Close ends the List (a single object needs nothing more).
func (p *kubePrinter) Close() error {
	if p.single {
		return nil
	}
	var s string
	switch {
	case p.yaml && p.items == 0:
		s = "apiVersion: v1\nitems: []\n"
	case p.yaml:
	case p.items == 0:
		s = "{\n    \"apiVersion\": \"v1\",\n    \"items\": [],\n"
	default:
		s = "\n    ],\n"
	}
	if p.yaml {
		s += "kind: List\nmetadata:\n  resourceVersion: \"\"\n"
	} else {
		s += "    \"kind\": \"List\",\n    \"metadata\": {\n        \"resourceVersion\": \"\"\n    }\n}\n"
	}
	_, err := io.WriteString(p.w, s)
	return err
}

// kubeView returns obj as kubectl holds it before printing: the JSON the
// API server would serve, decoded unstructured (integers stay integers).
func kubeView(obj runtime.Object) (*unstructured.Unstructured, error) {
	if obj.GetObjectKind().GroupVersionKind().Empty() {
		return nil, fmt.Errorf("%T has no apiVersion or kind", obj)
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		return nil, err
	}
	return u, nil
}
