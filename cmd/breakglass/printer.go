package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Printer is the one output interface of the commands: a text table for
// people, JSON lines or YAML documents for programs. Wire structs passed to
// Object carry a "type" field (see docs/json-output.md).
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
