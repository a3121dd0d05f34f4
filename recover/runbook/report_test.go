package runbook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/recover/change"
)

const reportRunbook = `name: report-me
parameters:
  to: {type: int, default: "0"}
  fail: {type: bool, default: "false"}
steps:
  - id: web
    type: scale
    title: scale web down
    params: {object: shop/web, replicas: "{{ .params.to }}"}
  - id: ready
    type: wait-until
    params: {check: apiserver, path: /readyz, requests: "1", within: 5s, timeout: 30s, interval: 50ms}
  - id: boom
    type: scale
    when: "{{ .params.fail }}"
    params: {object: shop/missing, replicas: "1"}
  - id: api
    type: scale
    params: {object: shop/api, replicas: "{{ .params.to }}"}
`

// The report of a real run on embedded etcd, failed, resumed and undone
// in part: everything it says comes from the journal.
func TestReportOfARun(t *testing.T) {
	e := newTestEnv(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer srv.Close()
	eng := e.engine(false)
	eng.Session.Env.Inventory.APIServer.URL = srv.URL
	run, err := eng.Start(context.Background(), load(t, reportRunbook), map[string]string{"fail": "true"})
	if err == nil {
		t.Fatal("the run did not fail at boom")
	}
	e.put(t, "missing", 4)
	res := e.engine(false)
	res.Session.Env.Inventory.APIServer.URL = srv.URL
	if _, err := res.Resume(context.Background(), mustRead(t, e.journal), run.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.engine(false).Undo(context.Background(), mustRead(t, e.journal), run.ID, 4); err != nil {
		t.Fatal(err)
	}
	recs := mustRead(t, e.journal)
	r, err := BuildReport(recs, run.ID, ReportOptions{Journal: e.journal})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != "ok" || r.Operator == "" || len(r.Resumes) != 1 || len(r.Undos) != 1 || r.Undos[0].Step != 4 {
		t.Errorf("report: status %s operator %q resumes %v undos %v", r.Status, r.Operator, r.Resumes, r.Undos)
	}
	if r.HealthyStep != 2 || r.TimeToRecovery() <= 0 {
		t.Errorf("time to recovery %s at step %d", r.TimeToRecovery(), r.HealthyStep)
	}
	var got []string
	for _, s := range r.Steps {
		got = append(got, s.ID+"="+s.Status)
	}
	if strings.Join(got, " ") != "web=applied ready=done boom=applied api=applied" {
		t.Errorf("steps %v", got)
	}
	var b strings.Builder
	if err := r.Markdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	// Times vary; the rest is as written.
	times := regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z`)
	durations := regexp.MustCompile(`\b[0-9.]+(ms|s|µs)\b`)
	norm := durations.ReplaceAllString(times.ReplaceAllString(md, "TIME"), "DUR")
	webChange := r.Steps[0].Changes[0].ID
	apiChange := r.Steps[3].Changes[0].ID
	for _, want := range []string{
		"# Incident timeline: runbook report-me, run " + run.ID + "\n",
		"| Runbook | `report-me` (test.yaml) |",
		"| Parameters | `fail=true`, `to=0` |",
		"| Operator | " + r.Operator + " |",
		"| Ended | TIME: ok after DUR |",
		"| Time to recovery | DUR: the apiserver answered within its SLO at TIME (step 2) |",
		"| Resumed | TIME by " + r.Operator + " |",
		"| Undone | TIME: step 4 by " + r.Operator + " |",
		"| Undo the run | `breakglass runbook undo " + run.ID + " --journal " + e.journal + "` |",
		"| TIME | 3 boom | failed: deployments.apps \"missing\" not found",
		"| TIME | 1 web | etcd /registry/deployments/shop/web: replicas 3 -> 0 (applied, change " + webChange + ", by " + r.Operator + ") |",
		"| TIME | 2 | apiserver healthy: it answered within its SLO |",
		"### 1. web: scale web down (scale): applied\n",
		"- observed: `change=" + webChange + "`, `items=1`, `nodes=0`, `summary=replicas 3 -> 0`\n",
		"| " + webChange + " | TIME | " + r.Operator + " | etcd /registry/deployments/shop/web | replicas 3 -> 0 | applied |",
		"- undo " + webChange + " (scale): `breakglass runbook undo " + run.ID + " --step 1 --journal " + e.journal + "`\n",
		"### 2. ready: wait-until ready (wait-until): done\n",
		"- observed: `after=",
		"`detail=1 of 1 answered 2xx",
		"- undo " + apiChange + " (scale): `breakglass runbook undo " + run.ID + " --step 4 --journal " + e.journal + "`; undone since by ",
	} {
		if !strings.Contains(norm, want) {
			t.Errorf("the report has no %q:\n%s", want, norm)
		}
	}
	for _, secret := range []string{"azhz", "\"bytes\""} { // the values the journal holds (k8s protobuf, base64)
		if strings.Contains(md, secret) {
			t.Errorf("the report holds a journaled value (%s)", secret)
		}
	}

	_, err = BuildReport(recs, "rb-20990101T000000-abcdef", ReportOptions{})
	if err == nil || !strings.Contains(err.Error(), "rb-20990101T000000-abcdef") || !strings.Contains(err.Error(), "hint:") {
		t.Errorf("unknown run: %v", err)
	}
	_, err = BuildReport(recs, webChange, ReportOptions{})
	if err == nil || !strings.Contains(err.Error(), "is a change, not a runbook run") {
		t.Errorf("a change ID: %v", err)
	}
}

const skipRunbook = `name: skip-me
steps:
  - id: web
    type: scale
    params: {object: shop/web, replicas: "1"}
    onFailure: continue
  - id: api
    type: scale
    params: {object: shop/api, replicas: "1"}
`

// ErrSkip from the operator skips a step whose onFailure is continue
// (journaled as skipped by the operator, nothing applied, the run goes
// on), and refuses any other.
func TestSkipByTheOperator(t *testing.T) {
	e := newTestEnv(t)
	eng := e.engine(false)
	eng.Confirm = func(ctx context.Context, p *change.Plan) error {
		if strings.Contains(p.Summary(), "3 -> 1") {
			return ErrSkip
		}
		return nil
	}
	run, err := eng.Start(context.Background(), load(t, skipRunbook), nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.replicas(t, "web") != 3 || e.replicas(t, "api") != 1 {
		t.Errorf("web %d api %d: want web untouched and api applied", e.replicas(t, "web"), e.replicas(t, "api"))
	}
	r, err := BuildReport(mustRead(t, e.journal), run.ID, ReportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Steps[0].Status != change.StepSkipped || r.Steps[0].SkippedBy != "operator" || r.Status != "ok" {
		t.Errorf("step web %s by %q, run %s", r.Steps[0].Status, r.Steps[0].SkippedBy, r.Status)
	}

	e.put(t, "api", 2)
	eng = e.engine(false)
	eng.Confirm = func(ctx context.Context, p *change.Plan) error {
		if strings.Contains(p.Summary(), "2 -> 1") {
			return ErrSkip
		}
		return nil
	}
	_, err = eng.Start(context.Background(), load(t, skipRunbook), nil)
	var refused *change.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "cannot be skipped") || e.replicas(t, "api") != 2 {
		t.Errorf("skip of an onFailure stop step: %v, api %d", err, e.replicas(t, "api"))
	}
}

// UndoStep, called while the run waits at the question of a later step
// (the TUI's u), undoes the earlier step on real etcd through the run's
// undo path; the run then goes on with its own step.
func TestUndoStepWhileTheRunWaits(t *testing.T) {
	e := newTestEnv(t)
	eng := e.engine(false)
	var runID string
	emit := eng.Emit
	eng.Emit = func(ev change.Event) {
		if rs, ok := ev.(change.RunStarted); ok && runID == "" {
			runID = rs.RunID
		}
		emit(ev)
	}
	eng.Session.Emit = eng.Emit
	undid := false
	eng.Confirm = func(ctx context.Context, p *change.Plan) error {
		if strings.Contains(p.Summary(), "2 -> 1") && !undid {
			undid = true
			if err := eng.UndoStep(ctx, runID, 1); err != nil {
				return err
			}
			if e.replicas(t, "web") != 3 {
				t.Errorf("web %d after the undo of step 1", e.replicas(t, "web"))
			}
		}
		return nil
	}
	if _, err := eng.Start(context.Background(), load(t, skipRunbook), nil); err != nil {
		t.Fatal(err)
	}
	if !undid || e.replicas(t, "web") != 3 || e.replicas(t, "api") != 1 {
		t.Errorf("undid %v, web %d api %d", undid, e.replicas(t, "web"), e.replicas(t, "api"))
	}
	var finished []string
	for _, f := range e.finished() {
		finished = append(finished, fmt.Sprintf("%d %s=%s", f.Index, f.ID, f.Status))
	}
	if got := strings.Join(finished, ", "); got != "1 web=applied, 2 api=applied" {
		t.Errorf("steps %s", got)
	}
}
