package steps

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops/pods"
)

// TestLiftWaitDeletedPod: after a lift stopped a held pod whose controller
// had deleted it meanwhile, its stopped sandbox stays on the node and
// kubelet never starts it again. The wait counts it done when etcd says
// the pod is deleted, and keeps waiting (until its timeout) when etcd says
// the pod is still there.
func TestLiftWaitDeletedPod(t *testing.T) {
	held := pods.Pod{Namespace: "telemetry", Name: "agent-x", UID: "u1", State: "ready",
		Containers: []pods.Container{{Name: "agent", State: "running", ImageRef: "sha256:pause"}}}
	stopped := held
	stopped.State = "notready"
	stopped.Containers = []pods.Container{{Name: "agent", State: "exited", ImageRef: "sha256:pause"}}
	list := func(context.Context) ([]pods.Pod, error) { return []pods.Pod{stopped}, nil }
	c := &NodeChange{Node: "w1", Stop: []pods.Pod{held}, WaitImage: true, WaitTimeout: 3 * time.Second, PauseIDs: []string{"sha256:pause"}}

	var asked []string
	deleted := func(_ context.Context, p pods.Pod) (bool, error) {
		asked = append(asked, p.Ref())
		return true, nil
	}
	restarted, gone, err := waitOriginal(context.Background(), list, c, deleted)
	if err != nil || len(restarted) != 0 || len(gone) != 1 || !strings.Contains(gone[0], "deleted in etcd") {
		t.Fatalf("deleted in etcd: restarted %v, gone %v, %v; want the pod done as deleted", restarted, gone, err)
	}
	if len(asked) != 1 || asked[0] != held.Ref() {
		t.Errorf("etcd asked about %v, want %s once", asked, held.Ref())
	}

	stillThere := func(context.Context, pods.Pod) (bool, error) { return false, nil }
	if restarted, gone, err := waitOriginal(context.Background(), list, c, stillThere); err == nil || !strings.Contains(err.Error(), "did not run their images again") {
		t.Fatalf("in etcd and not started again: %v %v, %v; want the wait to fail", restarted, gone, err)
	}
}
