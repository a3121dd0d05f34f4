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

// TestHeldFromNodes: a lift without the hold's journal finds the hold by
// its label on each node's image names; without etcd it stops no pod (the
// pause image could be some other pod's) and says so.
func TestHeldFromNodes(t *testing.T) {
	np := NodePods{Node: "w1",
		Images: []pods.Image{
			{Name: "reg/agent:1", ID: "sha256:pause", Labels: map[string]string{pods.LabelHold: "c1"}},
			{Name: "reg/agent:breakglass-held-aa", ID: "sha256:agent", Labels: map[string]string{pods.LabelHold: "c1", pods.LabelHoldOf: "reg/agent:1"}},
			{Name: "reg/other:1", ID: "sha256:pause", Labels: map[string]string{pods.LabelHold: "c2"}},
			{Name: "reg/pause:3.10", ID: "sha256:pause"},
		},
		Pods: []pods.Pod{{Namespace: "telemetry", Name: "agent-x", UID: "u1", Containers: []pods.Container{{Name: "agent", State: "running", ImageRef: "sha256:pause"}}}},
	}
	listed := map[string]NodePods{"w1": np, "w2": {Node: "w2"}}
	held, notes := heldFromNodes(context.Background(), &Pods{}, listed, "c1", []string{"w1", "w2"})
	if len(held) != 1 || held[0].node != "w1" || len(held[0].change.Hold) != 1 || held[0].change.Hold[0].Image != "reg/agent:1" || held[0].change.Hold[0].PauseID != "sha256:pause" {
		t.Fatalf("held %+v, want reg/agent:1 on w1 only", held)
	}
	if len(held[0].change.Stop) != 0 || len(notes) != 1 || !strings.Contains(notes[0], "without etcd") {
		t.Errorf("without etcd: stops %v, notes %q; want no stop and a note", held[0].change.Stop, notes)
	}
}
