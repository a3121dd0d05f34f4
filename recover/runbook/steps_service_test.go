package runbook

import (
	"context"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/recover/steps"
)

// The control-plane step types refuse bad parameters when the step is
// prepared, before any node is reached, with the parameter named. (Their
// plans and applies are the commands' own, tested over real sshd in
// recover/steps and on the lab in lab/kubelet_e2e_test.go.)
func TestControlPlaneStepsRefuseBadParams(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct{ params, want string }{
		{"type: apiserver-tune\n    params: {}", "nothing to change"},
		{"type: apiserver-tune\n    params: {goawayChance: \"0.5\"}", "--goaway-chance 0.5"},
		{"type: apiserver-tune\n    params: {goawayChance: often}", `goawayChance "often"`},
		{"type: apiserver-tune\n    params: {maxRequestsInflight: \"-1\"}", "can not be negative"},
		{"type: apiserver-tune\n    params: {cpu: lots}", `cpu "lots"`},
		{"type: apiserver-tune\n    params: {flags: [\"no value\"]}", "flags"},
		{"type: kubelet-stop\n    params: {nodes: [worker-1], fraction: \"2\"}", `fraction "2"`},
		{"type: kubelet-stop\n    params: {nodes: [worker-1], fraction: half}", `fraction "half"`},
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
