// Package schematest validates the JSON event lines that `breakglass
// runbook run|resume|undo|apply -o json` prints against the schema in
// docs/schema/runbook-events.schema.json, for the tests that run runbooks:
// the unit tests on embedded etcd and the lab tests.
package schematest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// EventsSchemaPath is the schema file in this source tree. The schema is
// documentation first (docs/json-output.md links it), so it lives in docs/
// and is read from there, not embedded: the tests that use it run from the
// source tree.
func EventsSchemaPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "docs", "schema", "runbook-events.schema.json")
}

var eventsSchema = sync.OnceValues(func() (*jsonschema.Schema, error) { return Compile(EventsSchemaPath()) })

// Compile compiles the JSON Schema (draft 2020-12) in the file at path,
// with "format" asserted (a time must be a date-time).
func Compile(path string) (*jsonschema.Schema, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", path, err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	url := "file://" + filepath.ToSlash(abs)
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("schema %s: %w", path, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", path, err)
	}
	return s, nil
}

// ValidateEvents validates every non-empty line of r (JSON Lines, the stdout
// of a runbook command with -o json) against the events schema. It returns
// how many lines of each type it read, and an error that lists every line
// that is not JSON or does not validate (its number, the line, and why),
// or nil when all of them do.
func ValidateEvents(r io.Reader) (map[string]int, error) {
	s, err := eventsSchema()
	if err != nil {
		return nil, err
	}
	return ValidateLines(s, r)
}

// ValidateLines is ValidateEvents with a schema of the caller's (Compile).
func ValidateLines(s *jsonschema.Schema, r io.Reader) (map[string]int, error) {
	counts := map[string]int{}
	var problems []string
	br := bufio.NewReaderSize(r, 1<<20)
	for n := 1; ; n++ {
		line, rerr := br.ReadBytes('\n')
		if rerr != nil && rerr != io.EOF {
			return counts, rerr
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			if msg := validateLine(s, t, counts); msg != "" {
				problems = append(problems, fmt.Sprintf("line %d: %s\n  %s", n, msg, abbreviate(string(t), 300)))
			}
		}
		if rerr == io.EOF {
			break
		}
	}
	if len(problems) > 0 {
		return counts, errors.New(strings.Join(problems, "\n"))
	}
	return counts, nil
}

func validateLine(s *jsonschema.Schema, line []byte, counts map[string]int) string {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(line))
	if err != nil {
		return "not JSON: " + err.Error()
	}
	if obj, ok := v.(map[string]any); ok {
		if t, ok := obj["type"].(string); ok {
			counts[t]++
		}
	}
	if err := s.Validate(v); err != nil {
		return strings.ReplaceAll(err.Error(), "\n", "\n  ")
	}
	return ""
}

func abbreviate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
