package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// breakglass report of a real run on embedded etcd: Markdown with the
// run, its steps and changes and their undo commands; -o json the same as
// one report object; an unknown run ID is an error that names it.
func TestReportCommand(t *testing.T) {
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "web", 3)
	rb := writeFile(t, "scale.yaml", cliRunbook)
	jnl := []string{"--journal", e.journal}
	out, errOut, code := e.run(t, append([]string{"runbook", "run", rb, "--param", "to=1", "--yes", "-o", "json"}, jnl...)...)
	if code != 0 {
		t.Fatalf("run: exit %d\n%s", code, errOut)
	}
	var runID, changeID string
	for _, l := range jsonLines(t, out) {
		if l["type"] == "runFinished" {
			runID = l["runId"].(string)
		}
		if l["type"] == "change" {
			changeID = l["id"].(string)
		}
	}
	code, md, errOut := run(t, testDeps(), append([]string{"report", runID}, jnl...)...)
	if code != 0 {
		t.Fatalf("report: exit %d\n%s", code, errOut)
	}
	for _, want := range []string{
		"# Incident timeline: runbook scale-web, run " + runID,
		"| Parameters | `to=1` |",
		"| Time to recovery | not recorded: no apiserver check held during the run |",
		"### 1. web: scale web (scale): applied",
		"| " + changeID + " | ",
		"| etcd /registry/deployments/shop/web | replicas 3 -> 1 | applied |",
		"- undo " + changeID + " (scale): `breakglass runbook undo " + runID + " --step 1 --journal " + e.journal + "`",
		"### 2. tell: note tell (note): done",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report has no %q:\n%s", want, md)
		}
	}
	code, js, errOut := run(t, testDeps(), append([]string{"report", runID, "-o", "json"}, jnl...)...)
	var w map[string]any
	if code != 0 || json.Unmarshal([]byte(js), &w) != nil || w["type"] != "report" || w["status"] != "ok" || len(w["steps"].([]any)) != 2 {
		t.Fatalf("report -o json: exit %d\n%s\n%s", code, js, errOut)
	}

	code, _, errOut = run(t, testDeps(), append([]string{"report", "rb-20990101T000000-abcdef"}, jnl...)...)
	if code != 1 || !strings.Contains(errOut, "run rb-20990101T000000-abcdef: not in the journal") || !strings.Contains(errOut, "hint:") {
		t.Errorf("unknown run: exit %d, %q", code, errOut)
	}
	code, _, errOut = run(t, testDeps(), "report", runID, "--journal", e.journal+".missing")
	if code != 1 || !strings.Contains(errOut, "no such file") {
		t.Errorf("missing journal: exit %d, %q", code, errOut)
	}
	if code, _, _ := run(t, testDeps(), append([]string{"report", runID, "-o", "wide"}, jnl...)...); code != 2 {
		t.Errorf("-o wide: exit %d, want 2", code)
	}
}
