package runbook

import (
	"context"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/diagnose"
)

const diagnoseRunbook = `name: diagnose-then-act
steps:
  - id: find
    type: diagnose
    params: {since: 1h}
  - id: said
    type: note
    params: {message: "suspect={{ .steps.find.ref }} daemonset={{ .steps.find.daemonset }}"}
  - id: must
    type: diagnose
    params: {require: true}
`

// The diagnose step runs diagnose.Run against etcd (here a healthy one:
// two Deployments, no node) and gives later steps its top suspect's
// names, empty when there is none; require fails the step then.
func TestDiagnoseStep(t *testing.T) {
	e := newTestEnv(t)
	_, err := e.engine(false).Start(context.Background(), load(t, diagnoseRunbook), nil)
	if err == nil || !strings.Contains(err.Error(), "no suspect above threshold") {
		t.Fatalf("run: %v, want the required diagnosis to fail", err)
	}
	var statuses []string
	for _, f := range e.finished() {
		statuses = append(statuses, f.ID+"="+f.Status)
	}
	if got := strings.Join(statuses, " "); got != "find=done said=done must=failed" {
		t.Errorf("steps: %s", got)
	}
	found := false
	e.mu.Lock()
	for _, ev := range e.events {
		if n, ok := ev.(change.StepNote); ok && n.ID == "said" && strings.Contains(n.Text, "suspect= daemonset=") {
			found = true
		}
	}
	e.mu.Unlock()
	if !found {
		t.Error("the note did not render the (empty) suspect results")
	}
	if got := suspectResult(nil); len(got) != 10 || got["daemonset"] != "" || got["preemptor"] != "" {
		t.Errorf("no suspect: %v", got)
	}
}

// The cascade's class and preemptor come from any suspect above
// threshold, the best of each; those below it are not used.
func TestAddPreemption(t *testing.T) {
	res := suspectResult(nil)
	addPreemption(res, []diagnose.Suspect{
		{Kind: "PriorityClass", Name: "medium", AboveThreshold: true},
		{Kind: "Deployment", Namespace: "new", Name: "cluster", Runbook: "stop-preemptor", AboveThreshold: true},
		{Kind: "Deployment", Namespace: "other", Name: "x", Runbook: "stop-preemptor", AboveThreshold: true},
		{Kind: "PriorityClass", Name: "low", AboveThreshold: false},
	})
	if res["priorityclass"] != "medium" || res["preemptor"] != "new/cluster" {
		t.Errorf("results %v", res)
	}
	res = suspectResult(nil)
	addPreemption(res, []diagnose.Suspect{{Kind: "PriorityClass", Name: "low"}, {Kind: "Pod", Namespace: "a", Name: "b", Runbook: "stop-preemptor", AboveThreshold: true}})
	if res["priorityclass"] != "" || res["preemptor"] != "" {
		t.Errorf("below threshold or a bare pod: %v", res)
	}
}
