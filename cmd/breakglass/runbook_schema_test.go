package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/breakglass/breakglass/nodeops/sshdtest"
	"github.com/breakglass/breakglass/recover/runbook/schematest"
)

// schemaRunbook has a step of each sort that prints JSON lines of its own:
// an etcd change with a verify, a change on nodes (real sshd), one on a
// node that does not answer, a wait-until that waits, a note, a skipped
// step, and one that fails when asked to.
const schemaRunbook = `name: schema-tour
parameters:
  to: {type: int, default: "0"}
  fail: {type: bool, default: "false"}
steps:
  - id: web
    type: scale
    params: {object: shop/web, replicas: "{{ .params.to }}"}
    verify: {check: apiserver, params: {path: /readyz, requests: "1", within: 5s}, timeout: 30s, interval: 50ms}
  - id: probe
    type: exec
    params: {command: "true", nodes: [node*]}
  - id: gone
    type: exec
    params: {command: "true", nodes: [gone]}
    onFailure: continue
  - id: ready
    type: wait-until
    params: {check: apiserver, path: /readyz, requests: "1", within: 5s, timeout: 30s, interval: 50ms}
  - id: tell
    type: note
    params: {message: "web is change {{ .steps.web.change }}"}
  - id: never
    type: note
    when: "false"
    params: {message: "not shown"}
  - id: boom
    type: scale
    when: "{{ .params.fail }}"
    params: {object: shop/missing, replicas: "1"}
  - id: api
    type: scale
    params: {object: shop/api, replicas: "{{ .params.to }}"}
`

// Every line that runbook run, resume, undo and apply print with -o json,
// from real runs on embedded etcd and real sshd, validates against
// docs/schema/runbook-events.schema.json, and every type of line the
// schema knows is seen.
func TestRunbookJSONMatchesSchema(t *testing.T) {
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "web", 3)
	e.putDeploy(t, "shop", "api", 2)
	fx := sshdtest.Start(t, 2, sshdtest.Options{})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	// The apiserver answers from its third request on: the checks wait.
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if asked.Add(1) < 3 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	inv := writeInventory(t, fx, "gone "+dead)
	b, err := os.ReadFile(inv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(inv, append(b, []byte("apiserver:\n  url: "+srv.URL+"\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	rb := writeFile(t, "tour.yaml", schemaRunbook)
	plan := filepath.Join(t.TempDir(), "plan.json")
	args := func(a ...string) []string {
		return append(a, "--inventory", inv, "--journal", e.journal, "--retries", "0")
	}
	var all strings.Builder
	step := func(name string, wantCode int, a ...string) string {
		t.Helper()
		out, errOut, code := e.run(t, args(a...)...)
		if code != wantCode {
			t.Fatalf("%s: exit %d, want %d\n%s\n%s", name, code, wantCode, out, errOut)
		}
		if _, err := schematest.ValidateEvents(strings.NewReader(out)); err != nil {
			t.Errorf("%s: lines that do not match the schema:\n%v", name, err)
		}
		all.WriteString(out)
		return out
	}
	step("dry run", 0, "runbook", "run", rb, "--dry-run", "-o", "json")
	out := step("run that fails", 1, "runbook", "run", rb, "--param", "fail=true", "--yes", "-o", "json")
	var runID string
	for _, l := range jsonLines(t, out) {
		if l["type"] == "runStarted" {
			runID, _ = l["runId"].(string)
		}
	}
	e.putDeploy(t, "shop", "missing", 4)
	step("resume", 0, "runbook", "resume", runID, "--yes", "-o", "json")
	step("undo", 0, "runbook", "undo", runID, "--yes", "-o", "json")
	if _, errOut, code := e.run(t, args("runbook", "plan", rb, "-o", plan)...); code != 0 {
		t.Fatalf("plan: exit %d\n%s", code, errOut)
	}
	step("apply", 0, "runbook", "apply", plan, "--yes", "-o", "json")

	counts, err := schematest.ValidateEvents(strings.NewReader(all.String()))
	if err != nil {
		t.Fatal(err)
	}
	// Not made here: replanned (an object that moves between the plan and
	// its apply) and skipped (a node that does not answer while a pods
	// change is planned, which needs containerd).
	for _, typ := range []string{"runStarted", "stepStarted", "stepCheck", "stepNote", "stepFinished", "runFinished", "change", "changeFailed"} {
		if counts[typ] == 0 {
			t.Errorf("no %s line in the runs:\n%s", typ, all.String())
		}
	}
}

// The schema documents each wire struct exactly: every JSON field of the
// struct is a property of its type, the fields without omitempty are
// required, and the schema lists no property the struct does not have. A
// field added to a wire struct, or a type added to the output, fails here
// until docs/schema says what it is.
func TestRunbookSchemaDocumentsWireStructs(t *testing.T) {
	b, err := os.ReadFile(schematest.EventsSchemaPath())
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Properties struct {
			Type struct {
				Enum []string `json:"enum"`
			} `json:"type"`
		} `json:"properties"`
		Defs map[string]struct {
			Required   []string                   `json:"required"`
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	wires := map[string]any{
		"runStarted": runStartedWire{}, "stepStarted": stepStartedWire{}, "stepCheck": stepCheckWire{}, "stepNote": stepNoteWire{},
		"stepFinished": stepFinishedWire{}, "runFinished": runFinishedWire{}, "change": changeWire{}, "replanned": replannedWire{},
		"skipped": skippedWire{}, "changeFailed": failedWire{},
	}
	var names []string
	for name := range wires {
		names = append(names, name)
	}
	sort.Strings(names)
	enum := append([]string(nil), doc.Properties.Type.Enum...)
	sort.Strings(enum)
	if strings.Join(enum, " ") != strings.Join(names, " ") {
		t.Errorf("schema types %v, wire structs %v", enum, names)
	}
	for name, w := range wires {
		def, ok := doc.Defs[name]
		if !ok {
			t.Errorf("%s: no $defs entry", name)
			continue
		}
		fields := map[string]bool{}
		var required []string
		rt := reflect.TypeOf(w)
		for i := 0; i < rt.NumField(); i++ {
			tag := rt.Field(i).Tag.Get("json")
			field, opts, _ := strings.Cut(tag, ",")
			fields[field] = true
			if _, ok := def.Properties[field]; !ok {
				t.Errorf("%s: field %s (%s.%s) is not in the schema", name, field, rt.Name(), rt.Field(i).Name)
			}
			if !strings.Contains(opts, "omitempty") {
				required = append(required, field)
			}
		}
		for p := range def.Properties {
			if !fields[p] {
				t.Errorf("%s: the schema has %s, which %s has not", name, p, rt.Name())
			}
		}
		sort.Strings(required)
		got := append([]string(nil), def.Required...)
		sort.Strings(got)
		if strings.Join(got, " ") != strings.Join(required, " ") {
			t.Errorf("%s: schema requires %v, the struct always prints %v", name, got, required)
		}
	}
}
