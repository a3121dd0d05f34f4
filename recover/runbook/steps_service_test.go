package runbook

import (
	"context"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/recover/steps"
)

// The control-plane step types refuse bad parameters before any node is
// reached, with the parameter named: a literal value when the runbook is
// loaded (file, line and field), the same value rendered from a parameter
// when the step is prepared, and what only the step can judge (nothing to
// change, a flag) when it is prepared. (Their plans and applies are the
// commands' own, tested over real sshd in recover/steps and on the lab in
// lab/kubelet_e2e_test.go.)
func TestControlPlaneStepsRefuseBadParams(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct{ typ, extra, param, value, want string }{
		{"apiserver-tune", "", "goawayChance", "0.5", `"0.5": want a number from 0 to 0.02`},
		{"apiserver-tune", "", "goawayChance", "often", `"often": want a number from 0 to 0.02`},
		{"apiserver-tune", "", "maxRequestsInflight", "-1", "-1: must not be negative"},
		{"apiserver-tune", "", "cpu", "lots", `"lots": not a quantity`},
		{"kubelet-stop", "nodes: [worker-1], ", "fraction", "2", `"2": want a number more than 0 and at most 1`},
		{"kubelet-stop", "nodes: [worker-1], ", "fraction", "half", `"half": want a number more than 0 and at most 1`},
	} {
		literal := "name: x\nsteps:\n  - id: a\n    type: " + tc.typ + "\n    params: {" + tc.extra + tc.param + ": \"" + tc.value + "\"}\n"
		_, err := Load("test.yaml", []byte(literal))
		if want := "test.yaml:5: steps[0].params." + tc.param + ": " + tc.want; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("load %s %s=%s: %v, want %q", tc.typ, tc.param, tc.value, err, want)
		}
		rendered := "name: x\nparameters:\n  v: {type: string}\nsteps:\n  - id: a\n    type: " + tc.typ + "\n    params: {" + tc.extra + tc.param + ": \"{{ .params.v }}\"}\n"
		rb := load(t, rendered)
		_, err = e.engine(true).Start(context.Background(), rb, map[string]string{"v": tc.value})
		if want := tc.typ + " a: " + tc.param + ": " + tc.want; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("run %s %s=%s: %v, want %q", tc.typ, tc.param, tc.value, err, want)
		}
	}
	for _, tc := range []struct{ params, want string }{
		{"type: apiserver-tune\n    params: {}", "nothing to change"},
		{"type: apiserver-tune\n    params: {flags: [\"no value\"]}", "flags"},
	} {
		rb := load(t, "name: x\nsteps:\n  - id: a\n    "+tc.params+"\n")
		_, err := e.engine(true).Start(context.Background(), rb, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.params, err, tc.want)
		}
	}
}

// In a runbook's engines, which hold several kinds, the control-plane
// kinds own their own ops only: an "undo" record is not theirs to take.
func TestRunbookKindsOwnTheirOps(t *testing.T) {
	sk, mk := runbookService{&steps.Service{}}, runbookManifest{&steps.Manifest{}}
	for _, op := range []string{steps.OpKubeletStop, steps.OpKubeletStart, steps.OpControllerManagerRestore} {
		if !sk.OwnsOp(op) || mk.OwnsOp(op) {
			t.Errorf("%s: service %v, manifest %v", op, sk.OwnsOp(op), mk.OwnsOp(op))
		}
	}
	if !mk.OwnsOp(steps.OpAPIServerTune) || sk.OwnsOp(steps.OpAPIServerTune) {
		t.Errorf("apiserver-tune: manifest %v, service %v", mk.OwnsOp(steps.OpAPIServerTune), sk.OwnsOp(steps.OpAPIServerTune))
	}
	if sk.OwnsOp("undo") || mk.OwnsOp("undo") {
		t.Error("a runbook kind claims undo records")
	}
}
