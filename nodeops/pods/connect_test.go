package pods

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criStub is a CRI runtime with one pod of one running container, which
// remembers what was stopped.
type criStub struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	stopped []string
}

func (s *criStub) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	sb := sandbox("sb1", "telemetry", "agent-1", "u1", 10, len(s.stopped) < 2, map[string]string{"app": "agent"})
	if uid := req.GetFilter().GetLabelSelector()[LabelPodUID]; uid != "" && uid != "u1" {
		return &runtimeapi.ListPodSandboxResponse{}, nil
	}
	return &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{sb}}, nil
}

func (s *criStub) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	if uid := req.GetFilter().GetLabelSelector()[LabelPodUID]; uid != "" && uid != "u1" {
		return &runtimeapi.ListContainersResponse{}, nil
	}
	st := runtimeapi.ContainerState_CONTAINER_RUNNING
	if len(s.stopped) > 0 {
		st = runtimeapi.ContainerState_CONTAINER_EXITED
	}
	return &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{container("c1", "sb1", "agent", "sha256:1", 11, st, 0)}}, nil
}

func (s *criStub) StopContainer(_ context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	s.stopped = append(s.stopped, req.ContainerId)
	return &runtimeapi.StopContainerResponse{}, nil
}

func (s *criStub) StopPodSandbox(_ context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	s.stopped = append(s.stopped, req.PodSandboxId)
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// TestConnectStop runs the stop path's CRI calls through Connect's gRPC
// connection to a real gRPC server: find the pod's sandbox, stop its
// container, then the sandbox.
func TestConnectStop(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	stub := &criStub{}
	runtimeapi.RegisterRuntimeServiceServer(srv, stub)
	go srv.Serve(l)
	defer srv.Stop()

	ctx := t.Context()
	n, err := Connect(ctx, "node1", func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	p, ok, err := n.Current(ctx, "u1")
	if err != nil || !ok || p.SandboxID != "sb1" || p.Ref() != "telemetry/agent-1" || len(p.Containers) != 1 || p.Containers[0].State != "running" {
		t.Fatalf("Current = %+v, %v, %v", p, ok, err)
	}
	if _, ok, err := n.Current(ctx, "u2"); ok || err != nil {
		t.Errorf("Current of a uid the node does not have: %v, %v", ok, err)
	}
	res, err := n.Stop(ctx, p, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Sandbox || len(res.Containers) != 1 || res.Containers[0] != "agent" {
		t.Errorf("Stop = %+v", res)
	}
	if got := stub.stopped; len(got) != 2 || got[0] != "c1" || got[1] != "sb1" {
		t.Errorf("stopped %v, want [c1 sb1]", got)
	}
}
