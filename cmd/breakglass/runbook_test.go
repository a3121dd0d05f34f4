package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/breakglass/breakglass/etcd"
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
	key := "/registry/deployments/shop/web"
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

func TestRunbookValidate(t *testing.T) {
	good := writeFile(t, "good.yaml", cliRunbook)
	bad := writeFile(t, "bad.yaml", "name: x\nsteps:\n  - id: a\n    type: kubelet-stop\n")
	code, out, _ := run(t, testDeps(), "runbook", "validate", good)
	if code != 0 || !strings.Contains(out, "ok: runbook scale-web, 2 steps") {
		t.Errorf("good: exit %d, %q", code, out)
	}
	code, _, errOut := run(t, testDeps(), "runbook", "validate", good, bad)
	if code != 2 || !strings.Contains(errOut, bad+":4: steps[0].type: step type \"kubelet-stop\"") || !strings.Contains(errOut, "not available in this build") {
		t.Errorf("bad: exit %d, stderr %q", code, errOut)
	}
}

func TestRunbookListAndShow(t *testing.T) {
	code, out, _ := run(t, testDeps(), "runbook", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, `"name":"apiserver-overload"`) || !strings.Contains(out, `"name":"priority-preemption-cascade"`) {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, testDeps(), "runbook", "show", "apiserver-overload")
	if code != 0 || !strings.Contains(out, "shed-network") || !strings.Contains(out, "(required)") {
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
