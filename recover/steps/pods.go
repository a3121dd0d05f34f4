package steps

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// Journal ops of the pods kind.
const (
	OpPodsStop = "pods-stop"
	OpPodsHold = "pods-hold"
	OpPodsLift = "pods-lift"
)

// KindPods is the change kind of pods stopped and images held on nodes.
const KindPods = "pods"

// Connector reaches a node's containerd; via says which path it took
// ("forward" or "sudo").
type Connector func(ctx context.Context, t nodeops.Target) (n *pods.Node, via string, err error)

// Pods is the change kind that stops pods and holds images on nodes
// through their containerd: one item per node, applied on many nodes at
// once through the fan-out. With Keep, it keeps one containerd connection
// per node for the whole run (plan and apply); without, each use connects
// and closes again, so that a run over tens of thousands of nodes holds
// only the connections in flight. Close closes what is kept.
type Pods struct {
	Connect Connector
	// Keep keeps connections from the plan to the apply (for runs small
	// enough that their connections fit in memory).
	Keep bool
	// Options tune the fan-out (concurrency, timeout per node, retries).
	Options fanout.OptionsOf[NodeResult]
	Now     func() time.Time
	// Etcd, Store and Targets are what an undo of a hold needs: the
	// owners in etcd and the nodes by name.
	Etcd    *change.Etcd
	Store   *etcd.Store
	Targets []nodeops.Target

	mu    sync.Mutex
	conns map[string]*nodeConn
}

type nodeConn struct {
	once sync.Once
	n    *pods.Node
	via  string
	err  error
}

// Name is the kind's name.
func (k *Pods) Name() string { return KindPods }

// Use runs fn with the node's containerd connection. With Keep the
// connection is made on first use and kept (a failed one is remembered for
// the run: a node that did not answer while planning is not dialled again
// for every step); without, it is made for fn and closed after.
func (k *Pods) Use(ctx context.Context, t nodeops.Target, fn func(n *pods.Node, via string) error) error {
	if !k.Keep {
		n, via, err := k.Connect(ctx, t)
		if err != nil {
			return err
		}
		defer n.Close()
		return fn(n, via)
	}
	k.mu.Lock()
	if k.conns == nil {
		k.conns = map[string]*nodeConn{}
	}
	c := k.conns[t.Name]
	if c == nil {
		c = &nodeConn{}
		k.conns[t.Name] = c
	}
	k.mu.Unlock()
	c.once.Do(func() { c.n, c.via, c.err = k.Connect(ctx, t) })
	if c.err != nil {
		if ctx.Err() != nil {
			// Cancelled while connecting: let a later call try again.
			k.mu.Lock()
			delete(k.conns, t.Name)
			k.mu.Unlock()
		}
		return c.err
	}
	return fn(c.n, c.via)
}

// Close closes every kept connection.
func (k *Pods) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for name, c := range k.conns {
		if c.n != nil {
			c.n.Close()
		}
		delete(k.conns, name)
	}
	return nil
}

func (k *Pods) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

// ImageHold is one image name to point at the node's pause image.
type ImageHold struct {
	Image string `json:"image"`
	// Planned is the image's target digest when planned; ID the image ID
	// kubelet saw.
	Planned digest.Digest `json:"planned"`
	ID      string        `json:"id,omitempty"`
	Pause   string        `json:"pause"`
	// PauseID is the pause image's ID: a container created from the held
	// name runs it.
	PauseID string `json:"pauseId,omitempty"`
}

// NodeChange is the payload of a pods item: what to do on one node.
type NodeChange struct {
	Target nodeops.Target `json:"-"`
	Node   string         `json:"node"`
	// Hold are the image names to point at the pause image, before the
	// pods are stopped.
	Hold []ImageHold `json:"hold,omitempty"`
	// Release are held image names to point back at their originals.
	Release []string `json:"release,omitempty"`
	// Stop are the pods to stop (found again by uid at apply: kubelet may
	// have given one a new sandbox since the plan).
	Stop  []pods.Pod    `json:"stop,omitempty"`
	Grace time.Duration `json:"grace,omitempty"`
	// WaitImage, for a lift: after the stop, wait until the pods run
	// their original images again (bounded by WaitTimeout).
	WaitImage   bool          `json:"waitImage,omitempty"`
	WaitTimeout time.Duration `json:"waitTimeout,omitempty"`
	// PauseIDs are the pause images' IDs the held containers ran.
	PauseIDs []string `json:"pauseIds,omitempty"`
}

// NodeResult is what applying a NodeChange did on one node.
type NodeResult struct {
	Held     []pods.Hold       `json:"held,omitempty"`
	Released []pods.Hold       `json:"released,omitempty"`
	Stopped  []pods.StopResult `json:"stopped,omitempty"`
	// Gone are planned pods the node no longer runs (nothing to stop).
	Gone []string `json:"gone,omitempty"`
	// Restarted are pods seen running their original images again after
	// a lift.
	Restarted []string `json:"restarted,omitempty"`
	// Deleted are stopped pods a lift did not wait for: gone from the
	// node, or deleted in etcd by their controller.
	Deleted []string `json:"deleted,omitempty"`
	Via     string   `json:"via,omitempty"`
}

// Item returns the change item of c.
func (c *NodeChange) Item(op string) *change.Item {
	var parts []string
	if len(c.Hold) > 0 {
		names := make([]string, len(c.Hold))
		for i, h := range c.Hold {
			names[i] = h.Image
		}
		parts = append(parts, fmt.Sprintf("point %s at %s", strings.Join(names, ", "), c.Hold[0].Pause))
	}
	if len(c.Release) > 0 {
		parts = append(parts, "restore "+strings.Join(c.Release, ", "))
	}
	if len(c.Stop) > 0 {
		refs := make([]string, len(c.Stop))
		for i, p := range c.Stop {
			refs[i] = p.Ref()
		}
		parts = append(parts, fmt.Sprintf("stop %d pod%s (%s)", len(c.Stop), plural(len(c.Stop)), strings.Join(refs, ", ")))
	}
	var diff strings.Builder
	for _, h := range c.Hold {
		fmt.Fprintf(&diff, "  image %s: %s -> %s (%s)\n", h.Image, short(string(h.Planned)), h.Pause, short(h.PauseID))
	}
	for _, r := range c.Release {
		fmt.Fprintf(&diff, "  image %s: pause -> its original\n", r)
	}
	for _, p := range c.Stop {
		names := make([]string, len(p.Containers))
		for i, ct := range p.Containers {
			names[i] = ct.Name + "=" + ct.State
		}
		fmt.Fprintf(&diff, "  stop %s (sandbox %s; %s)\n", p.Ref(), short(p.SandboxID), strings.Join(names, " "))
	}
	return &change.Item{Kind: KindPods, Target: journal.Target{Node: c.Node},
		Summary: c.Node + ": " + strings.Join(parts, "; "), Diff: diff.String(), Payload: c}
}

func short(s string) string {
	s = strings.TrimPrefix(s, "sha256:")
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// ApplyBatch applies one item per node through the fan-out (see
// applyNodes).
func (k *Pods) ApplyBatch(ctx context.Context, p *change.Plan, items []*change.Item, j *journal.Journal, report func(change.Event)) error {
	return applyNodes(ctx, p, items, j, report, nodeBatch[NodeResult]{
		kind: KindPods,
		opts: k.Options,
		target: func(it *change.Item) nodeops.Target {
			return it.Payload.(*NodeChange).Target
		},
		apply: func(ctx context.Context, it *change.Item) (NodeResult, error) {
			return k.applyNode(ctx, p, it.Payload.(*NodeChange))
		},
		result: resultLine,
		via:    func(r NodeResult) string { return r.Via },
	})
}

func resultLine(r NodeResult) string {
	var parts []string
	if len(r.Held) > 0 {
		parts = append(parts, fmt.Sprintf("%d image%s held", len(r.Held), plural(len(r.Held))))
	}
	if len(r.Released) > 0 {
		parts = append(parts, fmt.Sprintf("%d image%s restored", len(r.Released), plural(len(r.Released))))
	}
	if len(r.Stopped) > 0 {
		parts = append(parts, fmt.Sprintf("%d pod%s stopped", len(r.Stopped), plural(len(r.Stopped))))
	}
	if len(r.Gone) > 0 {
		parts = append(parts, fmt.Sprintf("%d already gone", len(r.Gone)))
	}
	if len(r.Restarted) > 0 {
		parts = append(parts, fmt.Sprintf("%d running the original image again", len(r.Restarted)))
	}
	if len(r.Deleted) > 0 {
		parts = append(parts, fmt.Sprintf("%d removed by the controller (not waited for)", len(r.Deleted)))
	}
	return strings.Join(parts, ", ")
}

// applyNode makes one node's change: images first (so that kubelet's next
// start of a stopped container runs the pause image), then the stops.
func (k *Pods) applyNode(ctx context.Context, p *change.Plan, c *NodeChange) (NodeResult, error) {
	var res NodeResult
	err := k.Use(ctx, c.Target, func(n *pods.Node, via string) error {
		res.Via = via
		var err error
		res, err = k.applyOn(ctx, n, p, c, res)
		return err
	})
	return res, err
}

func (k *Pods) applyOn(ctx context.Context, n *pods.Node, p *change.Plan, c *NodeChange, res NodeResult) (NodeResult, error) {
	for _, h := range c.Hold {
		held, err := n.HoldImage(ctx, h.Image, h.Pause, h.Planned, p.ID, k.now())
		if err != nil {
			return res, &nodeops.Error{Node: c.Node, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "image-hold", Err: err}
		}
		res.Held = append(res.Held, held)
	}
	for _, image := range c.Release {
		ok, h, err := n.ReleaseImage(ctx, image, "")
		if err != nil {
			return res, &nodeops.Error{Node: c.Node, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "image-release", Err: err}
		}
		if ok {
			res.Released = append(res.Released, h)
		}
	}
	if len(c.Stop) == 0 {
		return res, nil
	}
	var errs []error
	for _, planned := range c.Stop {
		// The pod now: kubelet may have made a new sandbox, or
		// started a container again, since the plan.
		cur, ok, err := n.Current(ctx, planned.UID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			res.Gone = append(res.Gone, planned.Ref())
			continue
		}
		sr, err := n.Stop(ctx, cur, c.Grace)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res.Stopped = append(res.Stopped, sr)
	}
	if err := errors.Join(errs...); err != nil {
		return res, &nodeops.Error{Node: c.Node, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "cri", Err: err}
	}
	if c.WaitImage {
		restarted, deleted, err := waitOriginal(ctx, n.Pods, c, k.podDeleted)
		res.Restarted, res.Deleted = restarted, deleted
		if err != nil {
			return res, &nodeops.Error{Node: c.Node, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "wait", Err: err,
				Hint: "kubelet did not start the pods again with their images in time; check the node (breakglass pods list --nodes NODE) before lifting more"}
		}
	}
	return res, nil
}

// podDeleted reports whether the pod is deleted in etcd: no object by its
// name, one with another uid, or one with a deletion timestamp. Its
// controller removed it, and kubelet will not start it again, though its
// stopped sandbox may stay on the node until kubelet's housekeeping. Without
// a Store nothing is known to be deleted.
func (k *Pods) podDeleted(ctx context.Context, p pods.Pod) (bool, error) {
	if k.Store == nil || p.Namespace == "" || p.Name == "" {
		return false, nil
	}
	r, err := k.Store.Layout.Lookup("pods")
	if err != nil {
		return false, err
	}
	o, err := k.Store.GetObject(ctx, r, p.Namespace, p.Name, etcd.Serializable)
	var nf *etcd.NotFoundError
	if errors.As(err, &nf) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if o.Decoded == nil {
		return false, o.Err
	}
	m := o.Decoded.Meta()
	return string(m.GetUID()) != p.UID || m.GetDeletionTimestamp() != nil, nil
}

// waitOriginal waits until every pod of c that ran the pause image in
// place of its own runs its own image again (the container of the same
// name, running, created from another image than the pause image), or is
// gone from the node, or is deleted in etcd (its controller removed it:
// kubelet will not start it again, though its stopped sandbox may stay on
// the node a while). deleted is asked only about pods still waiting,
// every few seconds.
func waitOriginal(ctx context.Context, list func(context.Context) ([]pods.Pod, error), c *NodeChange, deleted func(context.Context, pods.Pod) (bool, error)) (restarted, gone []string, err error) {
	timeout := c.WaitTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var waiting []string
	removed := map[string]bool{}
	var lastAsked time.Time
	for {
		now, err := list(ctx)
		if err == nil {
			byUID := map[string]pods.Pod{}
			for _, x := range now {
				byUID[x.UID] = x
			}
			ask := deleted != nil && time.Since(lastAsked) >= 2*time.Second
			if ask {
				lastAsked = time.Now()
			}
			restarted, gone, waiting = restarted[:0], gone[:0], waiting[:0]
			for _, planned := range c.Stop {
				cur, present := byUID[planned.UID]
				switch {
				case !present:
					gone = append(gone, planned.Ref()+" (gone from the node)")
				case runsOwnImages(planned, cur, c.PauseIDs):
					restarted = append(restarted, planned.Ref())
				case removed[planned.UID]:
					gone = append(gone, planned.Ref()+" (deleted in etcd)")
				case ask && cur.State != "ready":
					// Stopped and not started again: deleted by its
					// controller, or kubelet not there yet.
					if del, derr := deleted(ctx, planned); derr == nil && del {
						removed[planned.UID] = true
						gone = append(gone, planned.Ref()+" (deleted in etcd)")
						continue
					}
					waiting = append(waiting, planned.Ref())
				default:
					waiting = append(waiting, planned.Ref())
				}
			}
			if len(waiting) == 0 {
				return restarted, gone, nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return nil, nil, fmt.Errorf("waiting for %s to run their images again: %w (last: %v)", strings.Join(waiting, ", "), ctx.Err(), err)
			}
			return nil, nil, fmt.Errorf("%s did not run their images again within %s", strings.Join(waiting, ", "), timeout)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// runsOwnImages reports whether every container of planned (which ran
// the pause image) runs again in cur from another image.
func runsOwnImages(planned, cur pods.Pod, pauseIDs []string) bool {
	now := map[string]pods.Container{}
	for _, ct := range cur.Containers {
		now[ct.Name] = ct
	}
	for _, ct := range planned.Containers {
		if !slices.Contains(pauseIDs, ct.ImageRef) {
			continue
		}
		c, ok := now[ct.Name]
		if !ok || c.State != "running" || c.ImageRef == ct.ImageRef {
			return false
		}
	}
	return cur.State == "ready"
}

// Apply applies a single item (the engine calls ApplyBatch for this kind).
func (k *Pods) Apply(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	return k.ApplyBatch(ctx, p, []*change.Item{it}, j, func(change.Event) {})
}
