package pods

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func sandbox(id, ns, name, uid string, created int64, ready bool, labels map[string]string) *runtimeapi.PodSandbox {
	st := runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	if ready {
		st = runtimeapi.PodSandboxState_SANDBOX_READY
	}
	l := map[string]string{LabelPodName: name, LabelPodNamespace: ns, LabelPodUID: uid, "io.cri-containerd.kind": "sandbox"}
	for k, v := range labels {
		l[k] = v
	}
	return &runtimeapi.PodSandbox{Id: id, Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: ns, Uid: uid}, State: st, CreatedAt: created, Labels: l}
}

func container(id, sb, name, image string, created int64, st runtimeapi.ContainerState, attempt uint32) *runtimeapi.Container {
	return &runtimeapi.Container{Id: id, PodSandboxId: sb, Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: attempt},
		Image: &runtimeapi.ImageSpec{Image: image}, ImageRef: image, State: st, CreatedAt: created}
}

// TestAssemble groups a pod's sandboxes by uid (the newest is the pod's,
// the others old), keeps the newest container of each name, drops the
// labels kubelet adds, and ignores containers of unknown sandboxes.
func TestAssemble(t *testing.T) {
	sbs := []*runtimeapi.PodSandbox{
		sandbox("old", "ns", "web-1", "u1", 10, false, map[string]string{"app": "web"}),
		sandbox("new", "ns", "web-1", "u1", 20, true, map[string]string{"app": "web"}),
		sandbox("a", "kube-system", "etcd-cp", "u2", 5, true, nil),
	}
	cs := []*runtimeapi.Container{
		container("c-old", "old", "app", "sha256:1", 11, runtimeapi.ContainerState_CONTAINER_EXITED, 0),
		container("c-new", "new", "app", "sha256:1", 21, runtimeapi.ContainerState_CONTAINER_RUNNING, 1),
		container("c-side", "new", "sidecar", "sha256:2", 21, runtimeapi.ContainerState_CONTAINER_EXITED, 3),
		container("orphan", "gone", "x", "sha256:3", 1, runtimeapi.ContainerState_CONTAINER_RUNNING, 0),
	}
	pods := assemble("n1", sbs, cs)
	if len(pods) != 2 || pods[0].Namespace != "kube-system" || pods[1].Name != "web-1" {
		t.Fatalf("pods %+v", pods)
	}
	web := pods[1]
	if web.SandboxID != "new" || web.State != "ready" || len(web.OldSandboxes) != 1 || web.OldSandboxes[0] != "old" {
		t.Fatalf("web sandboxes: %+v", web)
	}
	if len(web.Labels) != 1 || web.Labels["app"] != "web" {
		t.Fatalf("labels %v: kubelet's own labels must be dropped", web.Labels)
	}
	if len(web.Containers) != 2 || web.Containers[0].ID != "c-new" || web.Containers[0].Restarts != 1 || web.Containers[1].Restarts != 3 {
		t.Fatalf("containers %+v", web.Containers)
	}
	if !web.Running() || web.Restarts() != 4 || pods[0].Running() {
		t.Fatalf("running/restarts wrong: %+v", pods)
	}
}

// TestSelector: every set field narrows; bad patterns and label syntax
// are errors that name the flag.
func TestSelector(t *testing.T) {
	p := Pod{Namespace: "telemetry", Name: "agent-x", UID: "u1", Labels: map[string]string{"app": "agent", "tier": "obs"},
		Containers: []Container{{Image: "reg/agent:1", ImageRef: "sha256:aa", Tags: []string{"reg/agent:1", "reg/agent:latest"}}}}
	for _, c := range []struct {
		sel  Selector
		want bool
	}{
		{Selector{}, true},
		{Selector{Namespace: "telemetry"}, true},
		{Selector{Namespace: "other"}, false},
		{Selector{Name: "agent-*"}, true},
		{Selector{Name: "web-*"}, false},
		{Selector{Labels: "app=agent,tier in (obs,x)"}, true},
		{Selector{Labels: "app!=agent"}, false},
		{Selector{UIDs: map[string]bool{"u1": true}}, true},
		{Selector{UIDs: map[string]bool{}}, false},
		{Selector{Image: "reg/agent:latest"}, true},
		{Selector{Image: "sha256:a*"}, true},
		{Selector{Image: "other/*"}, false},
		{Selector{Namespace: "telemetry", Labels: "app=web"}, false},
	} {
		if err := c.sel.Compile(); err != nil {
			t.Fatalf("%+v: %v", c.sel, err)
		}
		if got := c.sel.Match(&p); got != c.want {
			t.Errorf("%s: match %v, want %v", c.sel.String(), got, c.want)
		}
	}
	for _, bad := range []Selector{{Labels: "app in (a"}, {Name: "[x"}, {Image: "[y"}} {
		if err := bad.Compile(); err == nil {
			t.Errorf("%+v compiled", bad)
		}
	}
}

// TestKeepName keeps the repository and tags it by the digest; a name by
// digest cannot be held.
func TestKeepName(t *testing.T) {
	got, err := KeepName("nginx:1.25", "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	if err != nil || got != "docker.io/library/nginx:breakglass-held-0123456789ab" {
		t.Fatalf("KeepName = %q, %v", got, err)
	}
	if _, err := KeepName("reg/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"); err == nil {
		t.Fatal("a name by digest was given a keep name")
	}
}
