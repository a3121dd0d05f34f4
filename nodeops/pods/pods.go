// Package pods reaches a node's containerd from the operator's machine and
// works on the pods it runs, without the API server: it lists pods from the
// CRI sandboxes (which carry each pod's name, namespace, uid and labels),
// stops them through the CRI API so that containerd's CRI store stays
// consistent, and holds them stopped by pointing the offending image's name
// at the node's pause image (containerd's image store, "k8s.io" namespace).
//
// The connection is any net.Conn to the node's containerd socket: in
// breakglass a direct-streamlocal channel over the verified SSH connection,
// or a relay through `sudo -n` (nodeops/sshclient.DialUnix). One gRPC
// connection serves the containerd client and the CRI runtime and image
// services.
package pods

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRINamespace is the containerd namespace of the CRI plugin: kubelet's
// containers and images live there.
const CRINamespace = "k8s.io"

// DefaultSocket is containerd's socket on a node.
const DefaultSocket = "/run/containerd/containerd.sock"

// CRI label keys kubelet puts on sandboxes and containers.
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"
	annoRestartCount   = "io.kubernetes.container.restartCount"
	annoConfigSource   = "kubernetes.io/config.source"
	annoConfigHash     = "kubernetes.io/config.hash"
)

// Dialer opens a connection to the node's containerd socket. It is called
// once for the first connection and again if gRPC has to reconnect.
type Dialer func(ctx context.Context) (net.Conn, error)

// Node is a connection to one node's containerd.
type Node struct {
	Name  string
	conn  *grpc.ClientConn
	rt    runtimeapi.RuntimeServiceClient
	img   runtimeapi.ImageServiceClient
	cd    *containerd.Client
	dials *dials
}

// dials are the connections gRPC was given and has not closed, so that
// Close can close them first.
type dials struct {
	mu    sync.Mutex
	conns []*coalesceConn
}

func (d *dials) add(c net.Conn) net.Conn {
	cc := newCoalesceConn(c)
	d.mu.Lock()
	d.conns = slices.DeleteFunc(d.conns, func(c *coalesceConn) bool { return c.closed.Load() })
	d.conns = append(d.conns, cc)
	d.mu.Unlock()
	return cc
}

func (d *dials) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		c.Close()
	}
	d.conns = nil
}

// Connect prepares the gRPC connection over dial. The first dial happens
// here, so that an unreachable node or socket is reported by Connect with
// its own error rather than as a gRPC "unavailable" later.
func Connect(ctx context.Context, name string, dial Dialer) (*Node, error) {
	first, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	ds := &dials{}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		mu.Lock()
		c := first
		first = nil
		mu.Unlock()
		if c == nil {
			var err error
			if c, err = dial(ctx); err != nil {
				return nil, err
			}
		}
		return ds.add(c), nil
	}
	cc, err := grpc.NewClient("passthrough:///containerd",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithAuthority("localhost"),
		// One connection per node, redialled at most every second: a
		// node's containerd that restarts mid-run is reached again.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second}, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		// A fixed 1 MiB window: gRPC's bandwidth estimator would send a
		// ping with every response, each an SSH packet of its own. Small
		// buffers: a run over tens of thousands of nodes holds one
		// connection per node in flight, and CRI messages are small.
		grpc.WithInitialWindowSize(1<<20),
		grpc.WithInitialConnWindowSize(1<<20),
		grpc.WithReadBufferSize(4<<10),
		grpc.WithWriteBufferSize(4<<10),
	)
	if err != nil {
		first.Close()
		return nil, fmt.Errorf("%s: containerd: %w", name, err)
	}
	cd, err := containerd.NewWithConn(cc, containerd.WithDefaultNamespace(CRINamespace))
	if err != nil {
		cc.Close()
		return nil, fmt.Errorf("%s: containerd: %w", name, err)
	}
	return &Node{Name: name, conn: cc, rt: runtimeapi.NewRuntimeServiceClient(cc), img: runtimeapi.NewImageServiceClient(cc), cd: cd, dials: ds}, nil
}

// Close closes the connection. The connection to the node goes first:
// gRPC would otherwise write a GOAWAY on it, one more SSH packet for a
// connection about to end.
func (n *Node) Close() error {
	n.dials.close()
	return n.conn.Close()
}

// Pod is a pod as the node's containerd knows it: one sandbox (the newest
// of the pod's uid) and its containers.
type Pod struct {
	Node      string            `json:"node"`
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	UID       string            `json:"uid"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Static is set for a pod kubelet runs from a manifest file on the
	// node (its config source is "file").
	Static bool `json:"static,omitempty"`
	// SandboxID is the newest sandbox of the pod; State its state
	// ("ready" or "notready").
	SandboxID  string      `json:"sandboxId"`
	State      string      `json:"state"`
	Created    time.Time   `json:"created"`
	Containers []Container `json:"containers"`
	// OldSandboxes are earlier sandboxes of the same pod still known to
	// containerd (stopped ones kubelet has not removed yet).
	OldSandboxes []string `json:"oldSandboxes,omitempty"`
}

// Container is one container of a pod: the newest attempt of each name.
type Container struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// ImageRef is the image ID (config digest) the container was created
	// from: kubelet resolves the pod's image name before it creates a
	// container, and CRI keeps only the ID. Image is the name to show (the
	// image's first tag on the node, or the ID), Tags every name the node
	// has for that ID.
	Image    string    `json:"image"`
	ImageRef string    `json:"imageRef"`
	Tags     []string  `json:"tags,omitempty"`
	State    string    `json:"state"` // created, running, exited, unknown
	Restarts int       `json:"restarts"`
	Created  time.Time `json:"created"`
}

// Running reports whether any of the pod's containers runs.
func (p *Pod) Running() bool {
	for _, c := range p.Containers {
		if c.State == "running" {
			return true
		}
	}
	return false
}

// Ref is namespace/name.
func (p *Pod) Ref() string { return p.Namespace + "/" + p.Name }

// Restarts sums the containers' restarts.
func (p *Pod) Restarts() int {
	n := 0
	for _, c := range p.Containers {
		n += c.Restarts
	}
	return n
}

func sandboxState(s runtimeapi.PodSandboxState) string {
	if s == runtimeapi.PodSandboxState_SANDBOX_READY {
		return "ready"
	}
	return "notready"
}

func containerState(s runtimeapi.ContainerState) string {
	switch s {
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		return "created"
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return "running"
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return "exited"
	}
	return "unknown"
}

// Pods returns the node's pods, from its sandboxes and containers (two CRI
// calls, sent at once), sorted by namespace and name. Containers show their image ID as
// their image; List adds the names the node has for it.
func (n *Node) Pods(ctx context.Context) ([]Pod, error) {
	sb, cs, err := n.lists(ctx, &runtimeapi.ListPodSandboxRequest{}, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, err
	}
	return assemble(n.Name, sb.Items, cs.Containers), nil
}

// lists sends both CRI lists at once on the node's one connection: one
// round trip, and their requests and answers share SSH packets where
// gRPC writes them together.
func (n *Node) lists(ctx context.Context, sreq *runtimeapi.ListPodSandboxRequest, creq *runtimeapi.ListContainersRequest) (*runtimeapi.ListPodSandboxResponse, *runtimeapi.ListContainersResponse, error) {
	var (
		cs   *runtimeapi.ListContainersResponse
		cerr error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		cs, cerr = n.rt.ListContainers(ctx, creq)
	}()
	sb, serr := n.rt.ListPodSandbox(ctx, sreq)
	<-done
	if serr != nil {
		return nil, nil, fmt.Errorf("%s: CRI ListPodSandbox: %w", n.Name, serr)
	}
	if cerr != nil {
		return nil, nil, fmt.Errorf("%s: CRI ListContainers: %w", n.Name, cerr)
	}
	return sb, cs, nil
}

// Current returns the pod with uid as the node has it now, as Pods
// assembles it (its newest sandbox, and the newest container of each
// name): the two lists, filtered by the uid, at once. ok is false when
// the node has no sandbox of it.
func (n *Node) Current(ctx context.Context, uid string) (p Pod, ok bool, err error) {
	byUID := map[string]string{LabelPodUID: uid}
	sb, cs, err := n.lists(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{LabelSelector: byUID}},
		&runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: byUID}})
	if err != nil {
		return Pod{}, false, err
	}
	// The filter is the runtime's to honour: check the uid all the same.
	for _, p := range assemble(n.Name, sb.Items, cs.Containers) {
		if p.UID == uid {
			return p, true, nil
		}
	}
	return Pod{}, false, nil
}

// List returns the node's pods as Pods does, with the names (tags) the
// node has for each container's image (one more CRI call).
func (n *Node) List(ctx context.Context) ([]Pod, error) {
	out, err := n.Pods(ctx)
	if err != nil {
		return nil, err
	}
	imgs, err := n.img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("%s: CRI ListImages: %w", n.Name, err)
	}
	tags := map[string][]string{}
	for _, img := range imgs.Images {
		tags[img.Id] = img.RepoTags
	}
	for i := range out {
		for j := range out[i].Containers {
			c := &out[i].Containers[j]
			c.Tags = tags[c.ImageRef]
			if len(c.Tags) > 0 {
				c.Image = c.Tags[0]
			}
		}
	}
	return out, nil
}

// assemble groups sandboxes by pod uid (the newest sandbox wins) and puts
// each pod's newest container of each name under it.
func assemble(node string, sandboxes []*runtimeapi.PodSandbox, containers []*runtimeapi.Container) []Pod {
	byUID := map[string]*Pod{}
	sandboxPod := map[string]*Pod{}
	sort.Slice(sandboxes, func(i, j int) bool { return sandboxes[i].CreatedAt > sandboxes[j].CreatedAt })
	for _, s := range sandboxes {
		md := s.GetMetadata()
		uid := md.GetUid()
		if uid == "" {
			uid = s.Labels[LabelPodUID]
		}
		if p, ok := byUID[uid]; ok {
			p.OldSandboxes = append(p.OldSandboxes, s.Id)
			sandboxPod[s.Id] = p
			continue
		}
		labels := map[string]string{}
		for k, v := range s.Labels {
			if !isKubeletLabel(k) {
				labels[k] = v
			}
		}
		p := &Pod{Node: node, Namespace: md.GetNamespace(), Name: md.GetName(), UID: uid, Labels: labels,
			Static: s.Annotations[annoConfigSource] == "file", SandboxID: s.Id, State: sandboxState(s.State),
			Created: time.Unix(0, s.CreatedAt)}
		byUID[uid] = p
		sandboxPod[s.Id] = p
	}
	type key struct{ uid, name string }
	newest := map[key]*runtimeapi.Container{}
	for _, c := range containers {
		p := sandboxPod[c.PodSandboxId]
		if p == nil {
			continue
		}
		k := key{p.UID, c.GetMetadata().GetName()}
		if o := newest[k]; o == nil || c.CreatedAt > o.CreatedAt {
			newest[k] = c
		}
	}
	for k, c := range newest {
		p := byUID[k.uid]
		restarts, _ := strconv.Atoi(c.Annotations[annoRestartCount])
		if restarts == 0 {
			restarts = int(c.GetMetadata().GetAttempt())
		}
		p.Containers = append(p.Containers, Container{ID: c.Id, Name: k.name, Image: c.ImageRef,
			ImageRef: c.ImageRef, State: containerState(c.State), Restarts: restarts, Created: time.Unix(0, c.CreatedAt)})
	}
	out := make([]Pod, 0, len(byUID))
	for _, p := range byUID {
		sort.Slice(p.Containers, func(i, j int) bool { return p.Containers[i].Name < p.Containers[j].Name })
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// isKubeletLabel reports labels kubelet adds to every sandbox, which are
// not the pod's own labels.
func isKubeletLabel(k string) bool {
	switch k {
	case LabelPodName, LabelPodNamespace, LabelPodUID, "io.cri-containerd.kind", LabelContainerName:
		return true
	}
	return false
}

// StopResult says what a stop did to one pod.
type StopResult struct {
	Pod string `json:"pod"`
	// Containers are the containers stopped (those that were running or
	// created); Sandbox is set when the sandbox was stopped.
	Containers []string `json:"containers,omitempty"`
	Sandbox    bool     `json:"sandbox"`
}

// Stop stops the pod through CRI: each of its containers that runs (or
// was created), with grace (SIGTERM, then SIGKILL after grace), then the
// sandbox, which also ends any container kubelet started in it since p was
// read. p is the pod as Current returned it just before; stopping a pod
// twice is harmless.
func (n *Node) Stop(ctx context.Context, p Pod, grace time.Duration) (StopResult, error) {
	res := StopResult{Pod: p.Ref()}
	var errs []error
	for _, c := range p.Containers {
		if c.State != "running" && c.State != "created" {
			continue
		}
		if _, err := n.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: c.ID, Timeout: int64(grace / time.Second)}); err != nil {
			errs = append(errs, fmt.Errorf("stop container %s (%s): %w", c.Name, short(c.ID), err))
			continue
		}
		res.Containers = append(res.Containers, c.Name)
	}
	if len(errs) == 0 {
		if _, err := n.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.SandboxID}); err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s: %w", short(p.SandboxID), err))
		} else {
			res.Sandbox = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("%s: %s: %w", n.Name, p.Ref(), err)
	}
	return res, nil
}

// Version returns containerd's version, and the CRI runtime's name and
// version: what `nodes check` reports.
func (n *Node) Version(ctx context.Context) (string, error) {
	v, err := n.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", fmt.Errorf("%s: CRI Version: %w", n.Name, err)
	}
	return v.RuntimeName + " " + v.RuntimeVersion, nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
