package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/journal"
)

const cliRunbook = `name: scale-web
parameters:
  to: {type: int, required: true}
steps:
  - id: web
    type: scale
    params: {object: shop/web, replicas: "{{ .params.to }}"}
  - id: tell
    type: note
    params: {message: "change {{ .steps.web.change }}"}
`

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *etcdEnv) webReplicas(t *testing.T) int32 {
	t.Helper()
	return e.replicasOf(t, "web")
}

func TestRunbookValidate(t *testing.T) {
	good := writeFile(t, "good.yaml", cliRunbook)
	bad := writeFile(t, "bad.yaml", "name: x\nsteps:\n  - id: a\n    type: apiserver-addd\n")
	code, out, _ := run(t, testDeps(), "runbook", "validate", good)
	if code != 0 || !strings.Contains(out, "ok: runbook scale-web, 2 steps") {
		t.Errorf("good: exit %d, %q", code, out)
	}
	code, _, errOut := run(t, testDeps(), "runbook", "validate", good, bad)
	if code != 2 || !strings.Contains(errOut, bad+":4: steps[0].type: unknown step type \"apiserver-addd\"") {
		t.Errorf("bad: exit %d, stderr %q", code, errOut)
	}
}

func TestRunbookListAndShow(t *testing.T) {
	code, out, _ := run(t, testDeps(), "runbook", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, `"name":"apiserver-overload"`) || !strings.Contains(out, `"name":"priority-preemption-cascade"`) {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, testDeps(), "runbook", "show", "apiserver-overload")
	if code != 0 || !strings.Contains(out, "shed-network") || !strings.Contains(out, "default the one diagnose names") {
		t.Errorf("show: exit %d\n%s", code, out)
	}
	if code, _, _ := run(t, testDeps(), "runbook", "show", "no-such"); code != 2 {
		t.Errorf("show of an unknown runbook: exit %d, want 2", code)
	}
}

// A scripted run (--yes -o json) against real etcd: JSON event lines on
// stdout, the change made and journaled; a dry run changes nothing; undo
// puts it back; a missing parameter is a usage error.
func TestRunbookRunUndoDryRun(t *testing.T) {
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "web", 3)
	rb := writeFile(t, "scale.yaml", cliRunbook)
	jnl := []string{"--journal", e.journal}

	if _, errOut, code := e.run(t, append([]string{"runbook", "run", rb, "--yes"}, jnl...)...); code != 2 || !strings.Contains(errOut, "--param to is required") {
		t.Errorf("without the required param: exit %d, %q", code, errOut)
	}
	out, _, code := e.run(t, append([]string{"runbook", "run", rb, "--param", "to=0", "--dry-run", "-o", "json"}, jnl...)...)
	if code != 0 || !strings.Contains(out, `"status":"planned"`) || e.webReplicas(t) != 3 {
		t.Fatalf("dry run: exit %d, replicas %d\n%s", code, e.webReplicas(t), out)
	}
	out, errOut, code := e.run(t, append([]string{"runbook", "run", rb, "--param", "to=0", "--yes", "-o", "json"}, jnl...)...)
	if code != 0 || e.webReplicas(t) != 0 {
		t.Fatalf("run: exit %d, replicas %d\n%s\n%s", code, e.webReplicas(t), out, errOut)
	}
	var runID string
	types := map[string]bool{}
	for _, l := range jsonLines(t, out) {
		types[l["type"].(string)] = true
		if l["type"] == "runFinished" {
			runID, _ = l["runId"].(string)
			if l["status"] != "ok" {
				t.Errorf("runFinished %v", l)
			}
		}
	}
	for _, typ := range []string{"runStarted", "stepStarted", "change", "stepNote", "stepFinished", "runFinished"} {
		if !types[typ] {
			t.Errorf("no %s line:\n%s", typ, out)
		}
	}
	if !strings.HasPrefix(runID, "rb-") {
		t.Fatalf("run ID %q", runID)
	}
	if _, errOut, code := e.run(t, append([]string{"runbook", "undo", runID, "--yes"}, jnl...)...); code != 0 || e.webReplicas(t) != 3 {
		t.Fatalf("undo: exit %d, replicas %d\n%s", code, e.webReplicas(t), errOut)
	}
	if _, _, code := e.run(t, append([]string{"runbook", "resume", runID}, jnl...)...); code != 4 {
		t.Errorf("resume of an undone run: exit %d, want 4", code)
	}
}

// A reviewed plan is applied as it is; when its object moved, apply
// refuses (exit 4) and writes nothing.
func TestRunbookPlanApply(t *testing.T) {
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "web", 3)
	rb := writeFile(t, "scale.yaml", cliRunbook)
	plan := filepath.Join(t.TempDir(), "plan.json")
	jnl := []string{"--journal", e.journal}
	if _, errOut, code := e.run(t, append([]string{"runbook", "plan", rb, "--param", "to=1", "-o", plan}, jnl...)...); code != 0 {
		t.Fatalf("plan: exit %d\n%s", code, errOut)
	}
	if e.webReplicas(t) != 3 {
		t.Fatal("plan changed etcd")
	}
	// -o -: stdout is the plan and nothing else.
	out, errOut, code := e.run(t, append([]string{"runbook", "plan", rb, "--param", "to=1", "-o", "-"}, jnl...)...)
	var pf map[string]any
	if err := json.Unmarshal([]byte(out), &pf); code != 0 || err != nil || pf["runbook"] != "scale-web" {
		t.Fatalf("plan -o -: exit %d, %v\n%s\n%s", code, err, out, errOut)
	}
	e.putDeploy(t, "shop", "web", 5)
	if _, errOut, code := e.run(t, append([]string{"runbook", "apply", plan, "--yes"}, jnl...)...); code != 4 || e.webReplicas(t) != 5 {
		t.Fatalf("apply of a stale plan: exit %d, replicas %d\n%s", code, e.webReplicas(t), errOut)
	}
	if _, errOut, code := e.run(t, append([]string{"runbook", "plan", rb, "--param", "to=1", "-o", plan}, jnl...)...); code != 0 {
		t.Fatalf("plan: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := e.run(t, append([]string{"runbook", "apply", plan, "--yes"}, jnl...)...); code != 0 || e.webReplicas(t) != 1 {
		t.Fatalf("apply: exit %d, replicas %d\n%s", code, e.webReplicas(t), errOut)
	}
}

// A run killed with SIGKILL in the middle (after its first step, while it
// waits for a check) is resumed by another process to the same end state
// without redoing the finished step, and then undone to the start.
func TestRunbookResumeAfterSIGKILL(t *testing.T) {
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "web", 3)
	e.putDeploy(t, "shop", "api", 2)
	var healthy atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	inv := writeFile(t, "inventory.yaml", "apiserver:\n  url: "+srv.URL+"\n")
	rb := writeFile(t, "resume.yaml", `name: resume-me
steps:
  - id: web
    type: scale
    params: {object: shop/web, replicas: "0"}
  - id: ready
    type: wait-until
    params: {check: apiserver, path: /healthz, requests: "1", within: 5s, timeout: 10m, interval: 100ms}
  - id: api
    type: scale
    params: {object: shop/api, replicas: "0"}
`)
	args := func(a ...string) []string {
		return append(a, "--inventory", inv, "--endpoints", e.srv.Endpoint, "--journal", e.journal, "--yes", "-o", "json")
	}
	cmd, _, _ := startBinary(t, nil, args("runbook", "run", rb)...)
	// Killed once the first step is journaled as finished, while the run
	// waits for the check.
	var runID string
	waitFor(t, "the first step to finish", time.Minute, func() (bool, error) {
		recs, err := journal.Read(e.journal)
		if err != nil {
			return false, err
		}
		for _, r := range recs {
			if r.Kind == "runbook" && r.Op == "runbook-step" && r.Step == "web" && r.Type == journal.TypeOutcome {
				runID = r.ID
				return true, nil
			}
		}
		return false, nil
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if e.webReplicas(t) != 0 {
		t.Fatalf("web %d before the kill", e.webReplicas(t))
	}
	healthy.Store(true)

	res := runBinary(t, nil, args("runbook", "resume", runID)...)
	if res.code != 0 {
		t.Fatalf("resume: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
	}
	for _, l := range jsonLines(t, res.stdout) {
		if l["type"] == "stepStarted" && l["id"] == "web" {
			t.Errorf("resume ran the finished step web again")
		}
	}
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	changes := map[string]int{}
	for _, r := range recs {
		if r.ID == runID && r.Op == "runbook-step" && r.Type == journal.TypeIntent {
			changes[r.Step]++
		}
	}
	if changes["web"] != 1 || changes["api"] != 1 {
		t.Errorf("changes per step %v, want one for web and one for api", changes)
	}
	if got := e.replicasOf(t, "api"); got != 0 {
		t.Errorf("api %d after resume", got)
	}

	res = runBinary(t, nil, args("runbook", "undo", runID)...)
	if res.code != 0 || e.webReplicas(t) != 3 || e.replicasOf(t, "api") != 2 {
		t.Fatalf("undo: exit %d, web %d, api %d\n%s", res.code, e.webReplicas(t), e.replicasOf(t, "api"), res.stderr)
	}
}

func (e *etcdEnv) replicasOf(t *testing.T, name string) int32 {
	t.Helper()
	key := "/registry/deployments/shop/" + name
	kv, _, err := e.store.Get(context.Background(), key, etcd.Linearizable)
	if err != nil || kv == nil {
		t.Fatalf("%s: %v", key, err)
	}
	d, err := e.store.Codec.Decode(key, kv.Value, kv.ModRevision)
	if err != nil {
		t.Fatal(err)
	}
	return *d.Object.(*appsv1.Deployment).Spec.Replicas
}
