package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/breakglass/breakglass/nodeops/pods"
)

// fakeCRI is containerd's CRI API as every simulated node serves it: one
// gRPC server in the helper process, fed the forwarded containerd sockets
// of all the nodes, which tells the nodes apart by the address each SSH
// connection reached (simIndex). Each node runs two pods, each with one
// container: telemetry/telemetry-agent-NODE (app=telemetry-agent), which
// the pods benchmark stops, and kube-system/kube-proxy-NODE
// (k8s-app=kube-proxy), which it must leave alone. Stops are remembered
// until Reset, so that a list after a stop shows the container exited and
// the sandbox not ready, as containerd does until kubelet starts the pod
// again.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	// state holds each node's stopped bits (criAgent<<criStopped...).
	state []atomic.Uint32
	srv   *grpc.Server
	l     *chanListener
}

// The pods of a simulated node, and the kinds of IDs.
const (
	criAgent = iota // telemetry/telemetry-agent-NODE
	criProxy        // kube-system/kube-proxy-NODE
	criPods
)

const (
	criSandbox   = 0
	criContainer = 1
)

// stopped bits: for pod p, bit 2p is its container exited, bit 2p+1 its
// sandbox not ready.
func containerBit(p int) uint32 { return 1 << (2 * p) }
func sandboxBit(p int) uint32   { return 1 << (2*p + 1) }

// criImages are the images of every simulated node: the two pods' and the
// sandbox (pause) image.
var criImages = []struct{ id, repo, tag string }{
	{"sha256:" + hex64(0xa9e7), "registry.example.com/telemetry/agent", "1.4.2"},
	{"sha256:" + hex64(0xb0b0), "registry.k8s.io/kube-proxy", "v1.31.4"},
	{"sha256:" + hex64(0x9a05e), "registry.k8s.io/pause", "3.10"},
}

// criCreated is when every simulated pod started.
var criCreated = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

func hex64(v uint64) string { return fmt.Sprintf("%064x", v) }

func newFakeCRI(n int) *fakeCRI {
	f := &fakeCRI{state: make([]atomic.Uint32, n), l: newChanListener()}
	f.srv = grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(f.srv, f)
	runtimeapi.RegisterImageServiceServer(f.srv, f)
	go f.srv.Serve(f.l)
	return f
}

// StreamLocal is the simulated nodes' simssh.Server.StreamLocal: a
// forward of containerd's socket becomes a connection of the gRPC server;
// any other socket is closed, as if nothing listened there.
func (f *fakeCRI) StreamLocal(path string, c net.Conn) {
	if path != pods.DefaultSocket {
		c.Close()
		return
	}
	f.l.push(c)
}

// Reset runs every node's pods again.
func (f *fakeCRI) Reset() {
	for i := range f.state {
		f.state[i].Store(0)
	}
}

// Close stops the server and closes its connections.
func (f *fakeCRI) Close() { f.srv.Stop() }

// node is the simulated node a call came through.
func (f *fakeCRI) node(ctx context.Context) (int, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.LocalAddr.(*net.TCPAddr); ok {
			if i, ok := simIndex(a.IP); ok && i < len(f.state) {
				return i, nil
			}
		}
	}
	return 0, status.Error(codes.Internal, "fake CRI: the call did not come through a simulated node")
}

// criID is the ID of pod p's sandbox or container on node i: 64 hex
// digits, as containerd's, with the node, the pod and the kind in them.
func criID(i, p, kind int) string {
	return fmt.Sprintf("%08x%054x%x%x", i, 0, p, kind)
}

// parseCRIID is the inverse of criID.
func parseCRIID(id string) (i, p, kind int, ok bool) {
	if len(id) != 64 {
		return 0, 0, 0, false
	}
	n, err1 := strconv.ParseUint(id[:8], 16, 32)
	pp, err2 := strconv.ParseUint(id[62:63], 16, 8)
	k, err3 := strconv.ParseUint(id[63:], 16, 8)
	if err1 != nil || err2 != nil || err3 != nil || pp >= criPods || k > criContainer {
		return 0, 0, 0, false
	}
	return int(n), int(pp), int(k), true
}

// podMeta is what kubelet would have asked for pod p of node i.
func podMeta(i, p int) (namespace, name, uid, container string, labels map[string]string) {
	node := simName(i)
	uid = fmt.Sprintf("%08x-5157-4c0d-8e00-%012x", i, p)
	if p == criAgent {
		return "telemetry", "telemetry-agent-" + node, uid, "agent",
			map[string]string{"app": "telemetry-agent", "controller-revision-hash": "6d4cf56db9", "pod-template-generation": "3"}
	}
	return "kube-system", "kube-proxy-" + node, uid, "kube-proxy",
		map[string]string{"k8s-app": "kube-proxy", "controller-revision-hash": "7d88b6d8c6", "pod-template-generation": "1"}
}

func (f *fakeCRI) sandbox(i, p int, st uint32) *runtimeapi.PodSandbox {
	ns, name, uid, _, own := podMeta(i, p)
	labels := map[string]string{pods.LabelPodName: name, pods.LabelPodNamespace: ns, pods.LabelPodUID: uid, "io.cri-containerd.kind": "sandbox"}
	for k, v := range own {
		labels[k] = v
	}
	state := runtimeapi.PodSandboxState_SANDBOX_READY
	if st&sandboxBit(p) != 0 {
		state = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	}
	return &runtimeapi.PodSandbox{Id: criID(i, p, criSandbox), Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Uid: uid, Namespace: ns},
		State: state, CreatedAt: criCreated, Labels: labels,
		Annotations:    map[string]string{"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "2025-01-01T00:00:00Z"},
		RuntimeHandler: "runc"}
}

func (f *fakeCRI) container(i, p int, st uint32) *runtimeapi.Container {
	ns, name, uid, cname, _ := podMeta(i, p)
	state := runtimeapi.ContainerState_CONTAINER_RUNNING
	if st&containerBit(p) != 0 {
		state = runtimeapi.ContainerState_CONTAINER_EXITED
	}
	img := criImages[p]
	return &runtimeapi.Container{Id: criID(i, p, criContainer), PodSandboxId: criID(i, p, criSandbox),
		Metadata: &runtimeapi.ContainerMetadata{Name: cname}, Image: &runtimeapi.ImageSpec{Image: img.repo + ":" + img.tag}, ImageRef: img.id,
		State: state, CreatedAt: criCreated,
		Labels: map[string]string{pods.LabelContainerName: cname, pods.LabelPodName: name, pods.LabelPodNamespace: ns, pods.LabelPodUID: uid},
		Annotations: map[string]string{"io.kubernetes.container.restartCount": "0", "io.kubernetes.container.hash": "1c2f3a4b",
			"io.kubernetes.container.terminationMessagePath": "/dev/termination-log"}}
}

func labelsMatch(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func (f *fakeCRI) Version(ctx context.Context, _ *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v2.0.0-breakglass-sim", RuntimeApiVersion: "v1"}, nil
}

func (f *fakeCRI) ListPodSandbox(ctx context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	i, err := f.node(ctx)
	if err != nil {
		return nil, err
	}
	st := f.state[i].Load()
	flt := req.GetFilter()
	out := &runtimeapi.ListPodSandboxResponse{}
	for p := 0; p < criPods; p++ {
		s := f.sandbox(i, p, st)
		if flt != nil && ((flt.Id != "" && flt.Id != s.Id) || (flt.State != nil && flt.State.State != s.State) || !labelsMatch(flt.LabelSelector, s.Labels)) {
			continue
		}
		out.Items = append(out.Items, s)
	}
	return out, nil
}

func (f *fakeCRI) ListContainers(ctx context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	i, err := f.node(ctx)
	if err != nil {
		return nil, err
	}
	st := f.state[i].Load()
	flt := req.GetFilter()
	out := &runtimeapi.ListContainersResponse{}
	for p := 0; p < criPods; p++ {
		c := f.container(i, p, st)
		if flt != nil && ((flt.Id != "" && flt.Id != c.Id) || (flt.PodSandboxId != "" && flt.PodSandboxId != c.PodSandboxId) ||
			(flt.State != nil && flt.State.State != c.State) || !labelsMatch(flt.LabelSelector, c.Labels)) {
			continue
		}
		out.Containers = append(out.Containers, c)
	}
	return out, nil
}

func (f *fakeCRI) ListImages(ctx context.Context, _ *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	if _, err := f.node(ctx); err != nil {
		return nil, err
	}
	out := &runtimeapi.ListImagesResponse{}
	for k, img := range criImages {
		out.Images = append(out.Images, &runtimeapi.Image{Id: img.id, RepoTags: []string{img.repo + ":" + img.tag},
			RepoDigests: []string{img.repo + "@sha256:" + hex64(uint64(k+1))}, Size_: 30 << 20, Pinned: k == len(criImages)-1})
	}
	return out, nil
}

// stop marks what id names on the caller's node as stopped: a container
// exits; a sandbox stops with its container, as containerd stops them.
func (f *fakeCRI) stop(ctx context.Context, id string, kind int) error {
	i, err := f.node(ctx)
	if err != nil {
		return err
	}
	n, p, k, ok := parseCRIID(id)
	if !ok || n != i || k != kind {
		return status.Errorf(codes.NotFound, "an object with ID %q does not exist", id)
	}
	bits := containerBit(p)
	if kind == criSandbox {
		bits |= sandboxBit(p)
	}
	f.state[i].Or(bits)
	return nil
}

func (f *fakeCRI) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	if err := f.stop(ctx, req.ContainerId, criContainer); err != nil {
		return nil, err
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

func (f *fakeCRI) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	if err := f.stop(ctx, req.PodSandboxId, criSandbox); err != nil {
		return nil, err
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// chanListener is a net.Listener whose connections are handed to it
// (push) rather than accepted from a socket: the forwarded channels of
// every simulated node, for one gRPC server.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to Accept, or closes it once the listener is closed.
func (l *chanListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: pods.DefaultSocket, Net: "unix"} }
