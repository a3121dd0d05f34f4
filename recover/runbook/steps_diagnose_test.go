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

// requireKind fails the step unless a suspect above threshold is of that
// kind, and its result then names the best of them even when the top
// suspect is of another kind.
func TestDiagnoseRequireKind(t *testing.T) {
	e := newTestEnv(t)
	rb := load(t, `name: need-a-daemonset
steps:
  - id: find
    type: diagnose
    params: {requireKind: daemonset}
  - id: after
    type: note
    params: {message: "not reached"}
`)
	_, err := e.engine(false).Start(context.Background(), rb, nil)
	if err == nil || !strings.Contains(err.Error(), "no daemonset among the suspects above threshold (there is no suspect)") {
		t.Fatalf("run: %v, want the missing DaemonSet named", err)
	}
	if got := e.finished(); len(got) != 1 || got[0].Status != "failed" {
		t.Errorf("steps finished: %+v, want only find, failed", got)
	}

	// A kind that is none of them: refused when loaded, with the line,
	// and when rendered from a parameter, before anything is read.
	if _, err := Load("test.yaml", []byte("name: bad\nsteps:\n  - id: find\n    type: diagnose\n    params: {requireKind: pod}\n")); err == nil ||
		!strings.Contains(err.Error(), `test.yaml:5: steps[0].params.requireKind: "pod": want daemonset, deployment, statefulset or priorityclass`) {
		t.Errorf("bad kind, loaded: %v", err)
	}
	e = newTestEnv(t)
	_, err = e.engine(false).Start(context.Background(), load(t, "name: bad\nparameters:\n  k: {type: string}\nsteps:\n  - id: find\n    type: diagnose\n    params: {requireKind: \"{{ .params.k }}\"}\n"), map[string]string{"k": "pod"})
	if err == nil || !strings.Contains(err.Error(), `requireKind: "pod": want daemonset, deployment, statefulset or priorityclass`) {
		t.Errorf("bad kind, rendered: %v", err)
	}

	res := suspectResult(&diagnose.Suspect{Kind: "Deployment", Namespace: "a", Name: "web", AboveThreshold: true})
	sus := []diagnose.Suspect{
		{Kind: "Deployment", Namespace: "a", Name: "web", AboveThreshold: true},
		{Kind: "DaemonSet", Namespace: "t", Name: "below", AboveThreshold: false},
		{Kind: "DaemonSet", Namespace: "t", Name: "agent", AboveThreshold: true},
		{Kind: "DaemonSet", Namespace: "t", Name: "other", AboveThreshold: true},
	}
	if !addKind(res, sus, "daemonset") || res["daemonset"] != "t/agent" || res["ref"] != "a/web" {
		t.Errorf("addKind: %v", res)
	}
	if addKind(suspectResult(nil), sus[:2], "daemonset") {
		t.Error("a DaemonSet below threshold was taken")
	}
}
