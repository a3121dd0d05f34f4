package steps

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

func specPod(uid, image string, pp corev1.PullPolicy, prio string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Namespace: "telemetry", Name: "agent"},
		Spec: corev1.PodSpec{PriorityClassName: prio, Containers: []corev1.Container{{Name: "agent", Image: image, ImagePullPolicy: pp}}}}
}

// TestProtectedPod: the control plane, DNS, kube-proxy, CNI agents and
// critical priority classes are protected; an ordinary pod is not.
func TestProtectedPod(t *testing.T) {
	for _, c := range []struct {
		pod  pods.Pod
		spec *corev1.Pod
		want string
	}{
		{pods.Pod{Namespace: "telemetry", Name: "agent-1"}, nil, ""},
		{pods.Pod{Namespace: "kube-system", Name: "kube-apiserver-cp-1", Static: true}, nil, "static pod"},
		{pods.Pod{Namespace: "kube-system", Name: "coredns-5d78c9869d-abcde"}, nil, "coredns"},
		{pods.Pod{Namespace: "kube-system", Name: "x", Labels: map[string]string{"k8s-app": "kube-proxy"}}, nil, "kube-proxy"},
		{pods.Pod{Namespace: "kube-system", Name: "metrics-agent"}, nil, ""},
		{pods.Pod{Namespace: "calico-system", Name: "calico-node-x", Labels: map[string]string{"k8s-app": "calico-node"}}, nil, "CNI"},
		{pods.Pod{Namespace: "telemetry", Name: "agent-1"}, specPod("u", "a:1", "", "system-node-critical"), "system-node-critical"},
		{pods.Pod{Namespace: "telemetry", Name: "agent-1"}, specPod("u", "a:1", "", "high"), ""},
	} {
		got := ProtectedPod(c.pod, c.spec)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.pod.Ref(), got, c.want)
		}
	}
}

func node(name string, ps ...pods.Pod) NodePods {
	return NodePods{Node: name, Pods: ps, Pause: "reg/pause:3.10", Images: []pods.Image{
		{Name: "reg/pause:3.10", ID: "sha256:pause"},
		{Name: "docker.io/library/agent:1", ID: "sha256:agent", Target: descriptor("sha256:aa")},
	}}
}

// TestPlanImages: names come from the spec, normalised as containerd
// stores them; pull policy Always and pods not in etcd are weak; an image
// other pods on the node run is refused.
func TestPlanImages(t *testing.T) {
	agent := pods.Pod{UID: "u1", Namespace: "telemetry", Name: "agent-1", Containers: []pods.Container{{Name: "agent", ImageRef: "sha256:agent"}}}
	other := pods.Pod{UID: "u9", Namespace: "web", Name: "web-1", Containers: []pods.Container{{Name: "w", ImageRef: "sha256:agent"}}}
	mk := func(pp corev1.PullPolicy, ps ...pods.Pod) *found {
		return &found{nodes: []NodePods{node("n1", ps...)}, matched: map[string][]pods.Pod{"n1": {agent}},
			cluster: ClusterPods{"u1": specPod("u1", "agent:1", pp, "")}}
	}
	holds, weak, err := planImages("n1", mk(corev1.PullIfNotPresent, agent))
	if err != nil || len(weak) != 0 || len(holds) != 1 {
		t.Fatalf("IfNotPresent: %v %v %v", holds, weak, err)
	}
	if h := holds[0]; h.Image != "docker.io/library/agent:1" || h.Planned != "sha256:aa" || h.PauseID != "sha256:pause" || h.Pause != "reg/pause:3.10" {
		t.Fatalf("hold %+v", h)
	}
	if _, weak, err := planImages("n1", mk(corev1.PullAlways, agent)); err != nil || len(weak) != 1 || !strings.Contains(weak[0], "Always") {
		t.Fatalf("Always: weak %v, err %v", weak, err)
	}
	f := mk(corev1.PullNever, agent)
	delete(f.cluster, "u1")
	if _, weak, err := planImages("n1", f); err != nil || len(weak) != 1 || !strings.Contains(weak[0], "not in etcd") {
		t.Fatalf("not in etcd: weak %v, err %v", weak, err)
	}
	_, _, err = planImages("n1", mk(corev1.PullNever, agent, other))
	var refused *change.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "web/web-1") {
		t.Fatalf("shared image: %v, want a refusal naming web/web-1", err)
	}
}

// TestCheckRefusals: nothing matched, protected pods not forced, and too
// many pods without a prompt are refused (exit 4).
func TestCheckRefusals(t *testing.T) {
	proxy := pods.Pod{Namespace: "kube-system", Name: "kube-proxy-abc", UID: "p"}
	web := pods.Pod{Namespace: "web", Name: "web-1", UID: "w"}
	for _, c := range []struct {
		f    *found
		s    Selection
		want string
	}{
		{&found{matched: map[string][]pods.Pod{}}, Selection{}, "no pod matched"},
		{&found{matched: map[string][]pods.Pod{"n1": {proxy}}, count: 1}, Selection{}, "protected"},
		{&found{matched: map[string][]pods.Pod{"n1": {proxy}}, count: 1}, Selection{Force: []string{"kube-system/kube-proxy-*"}}, ""},
		{&found{matched: map[string][]pods.Pod{"n1": {web, web}}, count: 2}, Selection{MaxPods: 1}, "more than --max-pods"},
		{&found{matched: map[string][]pods.Pod{"n1": {web, web}}, count: 2}, Selection{MaxPods: 1, Interactive: true}, ""},
	} {
		err := c.f.check(&c.s)
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.s, err)
			}
			continue
		}
		var refused *change.RefusedError
		if !errors.As(err, &refused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want a refusal with %q", c.s, err, c.want)
		}
	}
}

// TestHoldRecords reads a hold's nodes from the journal: only nodes whose
// outcome was applied (or unknown) and that held images.
func TestHoldRecords(t *testing.T) {
	nc := func(n string, images ...string) *journal.Value {
		c := NodeChange{Node: n}
		for _, i := range images {
			c.Hold = append(c.Hold, ImageHold{Image: i})
		}
		b, _ := json.Marshal(c)
		return &journal.Value{Bytes: b}
	}
	recs := []journal.Record{
		{Type: journal.TypeIntent, ID: "h", Kind: journal.KindEtcd, Op: OpPodsHold, Target: journal.Target{Key: "/registry/daemonsets/t/a"}},
		{Type: journal.TypeIntent, ID: "h", Kind: journal.KindNode, Op: OpPodsHold, Target: journal.Target{Node: "n1"}, Before: nc("n1", "a:1")},
		{Type: journal.TypeIntent, ID: "h", Kind: journal.KindNode, Op: OpPodsHold, Target: journal.Target{Node: "n2"}, Before: nc("n2", "a:1")},
		{Type: journal.TypeIntent, ID: "h", Kind: journal.KindNode, Op: OpPodsHold, Target: journal.Target{Node: "n3"}, Before: nc("n3")},
		{Type: journal.TypeOutcome, ID: "h", Kind: journal.KindNode, Op: OpPodsHold, Target: journal.Target{Node: "n1"}, Status: journal.StatusApplied},
		{Type: journal.TypeOutcome, ID: "h", Kind: journal.KindNode, Op: OpPodsHold, Target: journal.Target{Node: "n2"}, Status: journal.StatusFailed},
		{Type: journal.TypeOutcome, ID: "h", Kind: journal.KindNode, Op: OpPodsHold, Target: journal.Target{Node: "n3"}, Status: journal.StatusApplied},
		{Type: journal.TypeIntent, ID: "other", Kind: journal.KindNode, Op: OpPodsStop, Target: journal.Target{Node: "n1"}},
	}
	held, etcdRecs, err := holdRecords(recs, "h")
	if err != nil || len(held) != 1 || held[0].node != "n1" || len(etcdRecs) != 1 {
		t.Fatalf("held %+v, etcd %d, err %v", held, len(etcdRecs), err)
	}
	if _, _, err := holdRecords(recs, "other"); err == nil || !strings.Contains(err.Error(), "not a pods hold") {
		t.Fatalf("a stop read as a hold: %v", err)
	}
	if _, _, err := holdRecords(recs, "missing"); err == nil {
		t.Fatal("a missing change read as a hold")
	}
}

func descriptor(d string) ocispec.Descriptor { return ocispec.Descriptor{Digest: digest.Digest(d)} }
