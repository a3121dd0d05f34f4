package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/distribution/reference"
	corev1 "k8s.io/api/core/v1"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// NodePods is what one node's containerd runs, and with images, the image
// records it has and its sandbox (pause) image.
type NodePods struct {
	Node   string       `json:"node"`
	Via    string       `json:"via,omitempty"`
	Pods   []pods.Pod   `json:"pods"`
	Images []pods.Image `json:"images,omitempty"`
	Pause  string       `json:"pause,omitempty"`
	// PauseErr says why the sandbox image could not be read.
	PauseErr string `json:"pauseError,omitempty"`
}

// image returns the node's image record name.
func (np *NodePods) image(name string) (pods.Image, bool) {
	for _, img := range np.Images {
		if img.Name == name {
			return img, true
		}
	}
	return pods.Image{}, false
}

// List lists the pods of every target's containerd through the fan-out;
// withTags adds the names the node has for each container's image;
// withImages adds the image records and the sandbox image (pause, unless
// given), which a hold and a lift plan from.
func (k *Pods) List(ctx context.Context, targets []nodeops.Target, withTags, withImages bool, pause string, onEvent func(fanout.EventOf[NodePods])) []fanout.ResultOf[NodePods] {
	opts := fanout.OptionsOf[NodePods]{Concurrency: k.Options.Concurrency, Timeout: k.Options.Timeout,
		Retries: k.Options.Retries, Backoff: k.Options.Backoff, Grace: k.Options.Grace, OnEvent: onEvent}
	return fanout.RunOf(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (NodePods, error) {
		out := NodePods{Node: t.Name}
		err := k.Use(ctx, t, func(n *pods.Node, via string) error {
			out.Via = via
			list := n.Pods
			if withTags {
				list = n.List
			}
			pods, err := list(ctx)
			if err != nil {
				return err
			}
			out.Pods = pods
			if !withImages {
				return nil
			}
			if out.Images, err = n.Images(ctx); err != nil {
				return err
			}
			out.Pause = pause
			if out.Pause == "" {
				// Only a hold needs it: its plan says why it is missing.
				if out.Pause, err = n.SandboxImage(ctx); err != nil {
					out.PauseErr = err.Error()
				}
			}
			return nil
		})
		var ne *nodeops.Error
		if err != nil && !errors.As(err, &ne) {
			err = &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "cri", Err: err}
		}
		return out, err
	})
}

// Selection is what a pods command selects.
type Selection struct {
	Targets  []nodeops.Target
	Selector pods.Selector
	// DaemonSet and Deployment are NAMESPACE/NAME flags, resolved through
	// etcd to their pods' uids.
	DaemonSet, Deployment string
	// Force names protected pods (NAMESPACE/NAME patterns) the operator
	// means to stop anyway.
	Force []string
	// MaxPods is how many pods a change may touch without a person
	// confirming it at a prompt (Interactive); 0 means no bound.
	MaxPods     int
	Interactive bool
	Grace       time.Duration
	// Store reads Pod objects and owners from etcd; nil when etcd is not
	// configured (then protection works from what the nodes show).
	Store *etcd.Store
	// NarrowNodes, with --daemonset or --deployment and no node selection
	// of the operator's, keeps only the nodes the workload's pods are
	// scheduled on (spec.nodeName in etcd): the others run none of them.
	NarrowNodes bool
	// Missing are nodes the workload's pods are scheduled on that are not
	// among the nodes breakglass knows (inventory, --nodes-source etcd).
	Missing []string
}

// Resolve turns --daemonset and --deployment into pod uids.
func (s *Selection) Resolve(ctx context.Context) error {
	if err := s.Selector.Compile(); err != nil {
		return err
	}
	for _, w := range []struct{ kind, flag, v string }{{"DaemonSet", "--daemonset", s.DaemonSet}, {"Deployment", "--deployment", s.Deployment}} {
		if w.v == "" {
			continue
		}
		wl, err := ParseWorkload(w.kind, w.flag, w.v)
		if err != nil {
			return err
		}
		if s.Store == nil {
			return fmt.Errorf("%s needs etcd (the workload's pods are found from their owner references)\nhint: configure etcd in the inventory or with --etcd-endpoints", w.flag)
		}
		cluster, err := ReadPods(ctx, s.Store, []string{wl.Namespace})
		if err != nil {
			return err
		}
		uids, err := WorkloadPods(ctx, s.Store, wl, cluster)
		if err != nil {
			return err
		}
		if s.Selector.UIDs != nil {
			for u := range s.Selector.UIDs {
				if !uids[u] {
					delete(s.Selector.UIDs, u)
				}
			}
		} else {
			s.Selector.UIDs = uids
		}
		if s.NarrowNodes {
			nodes := map[string]bool{}
			for u := range s.Selector.UIDs {
				if p := cluster[u]; p != nil && p.Spec.NodeName != "" {
					nodes[p.Spec.NodeName] = true
				}
			}
			// A copy: the caller's slice is shared (the kind keeps it for undo).
			s.Targets = slices.DeleteFunc(slices.Clone(s.Targets), func(t nodeops.Target) bool { return !nodes[t.Name] })
			var missing []string
			for n := range nodes {
				if !slices.ContainsFunc(s.Targets, func(t nodeops.Target) bool { return t.Name == n }) {
					missing = append(missing, n)
				}
			}
			sort.Strings(missing)
			s.Missing = append(s.Missing, missing...)
		}
	}
	return nil
}

// found is one plan's view of the nodes.
type found struct {
	nodes   []NodePods
	targets map[string]nodeops.Target
	matched map[string][]pods.Pod
	count   int
	skipped []change.Skipped
	cluster ClusterPods
}

func (k *Pods) find(ctx context.Context, s *Selection, withImages bool, pause string) (*found, error) {
	f := &found{targets: map[string]nodeops.Target{}, matched: map[string][]pods.Pod{}}
	// Image names are needed only to match --image.
	for _, r := range k.List(ctx, s.Targets, s.Selector.Image != "", withImages, pause, nil) {
		f.targets[r.Target.Name] = r.Target
		if r.Err != nil {
			f.skipped = append(f.skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
			continue
		}
		for _, p := range r.Output.Pods {
			if s.Selector.Match(&p) {
				f.matched[r.Target.Name] = append(f.matched[r.Target.Name], p)
				f.count++
			}
		}
		if !withImages {
			// Only a hold looks at the other pods of a node (whether they
			// share an image): a stop of a large fleet keeps the matches
			// alone.
			r.Output.Pods = nil
		}
		f.nodes = append(f.nodes, r.Output)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if s.Store != nil && f.count > 0 {
		nss := map[string]bool{}
		for _, list := range f.matched {
			for _, p := range list {
				nss[p.Namespace] = true
			}
		}
		var names []string
		for ns := range nss {
			names = append(names, ns)
		}
		sort.Strings(names)
		var err error
		if f.cluster, err = ReadPods(ctx, s.Store, names); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// check refuses a selection that matches nothing, protected pods not
// named by --force, and more pods than MaxPods without a person at a
// prompt.
func (f *found) check(s *Selection) error {
	if f.count == 0 {
		return change.Refusedf("no pod matched (%s) on the %d node%s that answered%s\nhint: check the selection with breakglass pods list",
			s.Selector.String(), len(f.nodes), plural(len(f.nodes)), skippedNote(f.skipped))
	}
	var refused []string
	for _, node := range sortedKeys(f.matched) {
		for _, p := range f.matched[node] {
			why := ProtectedPod(p, f.cluster[p.UID])
			if why == "" || forced(s.Force, p) {
				continue
			}
			refused = append(refused, fmt.Sprintf("%s on %s: %s", p.Ref(), node, why))
		}
	}
	if len(refused) > 0 {
		more := ""
		if len(refused) > 10 {
			more = fmt.Sprintf("\n  ... and %d more", len(refused)-10)
			refused = refused[:10]
		}
		return change.Refusedf("refusing to stop protected pods:\n  %s%s\nhint: narrow the selection, or name them with --force NAMESPACE/NAME (globs allowed) if the incident really needs it",
			strings.Join(refused, "\n  "), more)
	}
	if s.MaxPods > 0 && f.count > s.MaxPods && !s.Interactive {
		return change.Refusedf("%d pods matched, more than --max-pods %d, and no one is at a prompt to confirm\nhint: check the selection with breakglass pods list; raise --max-pods to %d if it is right", f.count, s.MaxPods, f.count)
	}
	return nil
}

func skippedNote(s []change.Skipped) string {
	if len(s) == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d did not answer)", len(s))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func forced(patterns []string, p pods.Pod) bool {
	for _, pat := range patterns {
		if ok, _ := path.Match(pat, p.Ref()); ok {
			return true
		}
	}
	return false
}

// cniApps are the k8s-app / app labels of common CNI agents.
var cniApps = map[string]bool{"calico-node": true, "cilium": true, "flannel": true, "kube-flannel": true, "weave-net": true,
	"canal": true, "antrea-agent": true, "kube-router": true, "aws-node": true, "azure-cns": true, "calico-typha": true}

// ProtectedPod says why stopping a pod could make the incident worse, or
// returns "": the control plane and its static pods, etcd, cluster DNS,
// kube-proxy, CNI agents, and anything with a system-*-critical priority
// class (spec from etcd, when it was read).
func ProtectedPod(p pods.Pod, spec *corev1.Pod) string {
	if spec != nil && strings.HasPrefix(spec.Spec.PriorityClassName, "system-") && strings.HasSuffix(spec.Spec.PriorityClassName, "-critical") {
		return "priority class " + spec.Spec.PriorityClassName
	}
	l := p.Labels
	for _, v := range []string{l["k8s-app"], l["app"], l["app.kubernetes.io/name"]} {
		if cniApps[v] {
			return "a CNI agent (" + v + "): pods on the node lose their network"
		}
	}
	if p.Namespace != "kube-system" {
		return ""
	}
	if p.Static {
		return "a static pod of the control plane (kubelet runs it from a manifest on the node)"
	}
	name := p.Name
	for c := range controlPlaneComponents {
		if strings.HasPrefix(name, c+"-") || name == c || l["component"] == c || l["k8s-app"] == c {
			return "a kube-system pod of the control plane, cluster DNS or kube-proxy (" + c + ")"
		}
	}
	if l["tier"] == "control-plane" {
		return "a kube-system pod of the control plane"
	}
	return ""
}

// PlanStop plans stopping the selected pods on every node.
func PlanStop(k *Pods, s *Selection) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		f, err := k.find(ctx, s, false, "")
		if err != nil {
			return nil, err
		}
		if err := f.check(s); err != nil {
			return nil, err
		}
		p := &change.Plan{ID: id, Op: OpPodsStop, Skipped: f.skipped,
			Title: fmt.Sprintf("stop %d pod%s on %d node%s", f.count, plural(f.count), len(f.matched), plural(len(f.matched)))}
		for _, node := range sortedKeys(f.matched) {
			c := &NodeChange{Target: f.targets[node], Node: node, Stop: f.matched[node], Grace: s.Grace}
			p.Items = append(p.Items, c.Item(OpPodsStop))
		}
		p.Notes = append(p.Notes, "kubelet starts stopped pods again (at once, then with a back-off of up to 5 minutes): use `breakglass pods hold` to keep them stopped")
		return p, nil
	}
}

// HoldOptions tune a hold.
type HoldOptions struct {
	// Weak accepts a hold without the image layer for images kubelet
	// would pull again (pull policy Always, images named by digest, pods
	// not in etcd): only the owner in etcd then keeps them away.
	Weak bool
	// PauseImage overrides the node's sandbox image.
	PauseImage string
}

// PlanHold plans a hold: the owners neutralised in etcd (a DaemonSet
// paused, a Deployment or StatefulSet scaled to 0), then on each node the
// pods' image names pointed at the pause image and the pods stopped.
func PlanHold(k *Pods, ek *change.Etcd, s *Selection, o HoldOptions) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if s.Store == nil || ek == nil {
			return nil, errors.New("pods hold needs etcd: the pull policy and the owner of each pod are read from it\nhint: configure etcd in the inventory or with --etcd-endpoints; `pods stop` works without it")
		}
		f, err := k.find(ctx, s, true, o.PauseImage)
		if err != nil {
			return nil, err
		}
		if err := f.check(s); err != nil {
			return nil, err
		}
		p := &change.Plan{ID: id, Op: OpPodsHold, Skipped: f.skipped,
			Title: fmt.Sprintf("hold %d pod%s stopped on %d node%s", f.count, plural(f.count), len(f.matched), plural(len(f.matched)))}

		// The owner layer.
		owners := map[Workload]bool{}
		var bare []string
		for _, node := range sortedKeys(f.matched) {
			for _, pod := range f.matched[node] {
				spec := f.cluster[pod.UID]
				if spec == nil {
					bare = append(bare, pod.Ref())
					continue
				}
				w, ok, err := OwnerOf(ctx, s.Store, spec)
				if err != nil {
					return nil, err
				}
				if ok {
					owners[w] = true
				} else {
					bare = append(bare, pod.Ref())
				}
			}
		}
		var ownerList []Workload
		for w := range owners {
			ownerList = append(ownerList, w)
		}
		sort.Slice(ownerList, func(i, j int) bool { return ownerList[i].String() < ownerList[j].String() })
		for _, w := range ownerList {
			obj, err := w.Object(ctx, s.Store)
			if err != nil {
				return nil, err
			}
			var planner change.Planner
			if w.Kind == "DaemonSet" {
				planner = PauseDaemonSet(ek, obj, len(s.Force) > 0)
			} else {
				planner = Scale(ek, obj, 0, len(s.Force) > 0)
			}
			sub, err := planner(ctx, id)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", w, err)
			}
			p.Items = append(p.Items, sub.Items...)
			p.Unchanged = append(p.Unchanged, sub.Unchanged...)
			p.Notes = append(p.Notes, sub.Notes...)
		}
		if len(ownerList) > 0 {
			p.Notes = append(p.Notes, fmt.Sprintf("owner layer: %s changed in etcd, so the controllers remove the pods for good once the apiserver is back (a GitOps tool may revert it: pause it too)", workloadList(ownerList)))
		}
		if len(bare) > 0 {
			p.Notes = append(p.Notes, fmt.Sprintf("no owner to neutralise for %s (not in etcd, or a bare pod)", strings.Join(limit(bare, 5), ", ")))
		}

		// The image layer.
		var weak []string
		for _, node := range sortedKeys(f.matched) {
			c := &NodeChange{Target: f.targets[node], Node: node, Stop: f.matched[node], Grace: s.Grace}
			holds, w, err := planImages(node, f)
			if err != nil {
				return nil, err
			}
			weak = append(weak, w...)
			c.Hold = holds
			p.Items = append(p.Items, c.Item(OpPodsHold))
		}
		if len(weak) > 0 {
			if !o.Weak {
				return nil, change.Refusedf("no image layer for some pods, so kubelet would start the real program again:\n  %s\nhint: pass --weak to hold them with the owner layer alone (kubelet restarts them until the apiserver is back and the controller removes them), or stop them with a shorter selection", strings.Join(limit(weak, 10), "\n  "))
			}
			p.Notes = append(p.Notes, "WEAK hold for: "+strings.Join(limit(weak, 10), "; "))
		}
		p.Notes = append(p.Notes, "image layer: each held image name points at the node's pause image until `breakglass pods hold lift "+id+"`; the original is kept (pinned) and restored by digest")
		return p, nil
	}
}

func workloadList(ws []Workload) string {
	s := make([]string, len(ws))
	for i, w := range ws {
		s[i] = w.String()
	}
	return strings.Join(s, ", ")
}

func limit(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("... and %d more", len(s)-n))
}

// planImages works out which image names to hold on one node, and which
// pods can only be held weakly (and why). The names come from the pods'
// specs in etcd (CRI keeps only the image ID a container was created
// from), normalised as containerd names images.
func planImages(node string, f *found) ([]ImageHold, []string, error) {
	selected := map[string]bool{}
	for _, p := range f.matched[node] {
		selected[p.UID] = true
	}
	images := map[string]bool{}
	var weak []string
	for _, p := range f.matched[node] {
		spec := f.cluster[p.UID]
		if spec == nil {
			weak = append(weak, fmt.Sprintf("%s on %s: not in etcd, so its images and their pull policy are unknown", p.Ref(), node))
			continue
		}
		for _, c := range append(append([]corev1.Container{}, spec.Spec.InitContainers...), spec.Spec.Containers...) {
			pp := c.ImagePullPolicy
			if pp == "" {
				pp = corev1.PullIfNotPresent
			}
			name, err := reference.ParseNormalizedNamed(c.Image)
			switch {
			case err != nil:
				return nil, nil, fmt.Errorf("%s: container %s: image %q: %w", p.Ref(), c.Name, c.Image, err)
			case pp == corev1.PullAlways:
				weak = append(weak, fmt.Sprintf("%s on %s: %s is pulled Always (kubelet pulls the tag again when the registry answers)", p.Ref(), node, c.Image))
				continue
			}
			if _, digested := name.(reference.Digested); digested {
				weak = append(weak, fmt.Sprintf("%s on %s: %s is named by digest, so its name cannot point elsewhere", p.Ref(), node, c.Image))
				continue
			}
			images[reference.TagNameOnly(name).String()] = true
		}
	}
	if len(images) == 0 {
		return nil, weak, nil
	}
	var np *NodePods
	for i := range f.nodes {
		if f.nodes[i].Node == node {
			np = &f.nodes[i]
		}
	}
	if np.Pause == "" {
		return nil, nil, fmt.Errorf("%s: %s", node, np.PauseErr)
	}
	pi, ok := np.image(np.Pause)
	if !ok {
		return nil, nil, fmt.Errorf("%s: the pause image %s is not on the node\nhint: pass --pause-image with one it has", node, np.Pause)
	}
	pause := np.Pause
	nodePods := np.Pods
	var out []ImageHold
	for _, name := range sortedKeys(images) {
		img, ok := np.image(name)
		if !ok {
			return nil, nil, fmt.Errorf("%s: image %s (from the pods' spec in etcd) is not in containerd's %s namespace", node, name, pods.CRINamespace)
		}
		if img.ID == pi.ID {
			return nil, nil, change.Refusedf("%s: the selected pods run the pause image itself (%s): nothing to hold", node, name)
		}
		if h := img.Labels[pods.LabelHold]; h != "" {
			return nil, nil, change.Refusedf("%s: image %s is already held by change %s\nhint: lift that hold first (breakglass pods hold lift %s)", node, name, h, h)
		}
		// Another pod on the node that runs the same image would run the
		// pause image too on its next restart.
		for _, other := range nodePods {
			if selected[other.UID] {
				continue
			}
			for _, c := range other.Containers {
				if img.ID != "" && c.ImageRef == img.ID {
					return nil, nil, change.Refusedf("%s: image %s is also run by %s, which is not selected: pointing it at the pause image would stop that pod too on its next restart\nhint: select it as well, or stop these pods without a hold (breakglass pods stop)", node, name, other.Ref())
				}
			}
		}
		out = append(out, ImageHold{Image: name, Planned: img.Target.Digest, ID: img.ID, Pause: pause, PauseID: pi.ID})
	}
	return out, weak, nil
}

// errNotInJournal says a hold's change is not in this journal (it was made
// from another machine, or the journal is lost).
var errNotInJournal = errors.New("not in the journal")

// liftGraceWithoutJournal is the grace of the stops of a lift planned from
// the nodes alone (the journal has the hold's own grace).
const liftGraceWithoutJournal = 10 * time.Second

// heldFromNodes finds a hold on the nodes alone, for a lift whose journal
// does not have it: the image names labelled with the change ID, and the
// pods whose containers run the pause image in their place. A pod counts
// only when etcd says the container of that name is from the held name
// (without etcd no pod is stopped; the plan says so).
func heldFromNodes(ctx context.Context, k *Pods, listed map[string]NodePods, holdID string, order []string) ([]heldNode, []string) {
	var out []heldNode
	var notes []string
	for _, node := range order {
		np := listed[node]
		c := NodeChange{Node: node, Grace: liftGraceWithoutJournal}
		byPause := map[string]string{} // pause image ID -> held name
		for _, img := range np.Images {
			// The record that keeps the original image (LabelHoldOf) is
			// released with the name it keeps, not on its own.
			if img.Labels[pods.LabelHold] != holdID || img.Labels[pods.LabelHoldOf] != "" {
				continue
			}
			c.Hold = append(c.Hold, ImageHold{Image: img.Name, PauseID: img.ID})
			byPause[img.ID] = img.Name
		}
		if len(c.Hold) == 0 {
			continue
		}
		for _, pod := range np.Pods {
			for _, ct := range pod.Containers {
				held, ok := byPause[ct.ImageRef]
				if !ok {
					continue
				}
				if k.Store == nil {
					notes = append(notes, fmt.Sprintf("%s: %s runs the pause image in place of %s, and without etcd it is not known to be the held pod: it is left running; stop it with breakglass pods stop", node, pod.Ref(), held))
					break
				}
				if fromHeld, err := specUses(ctx, k.Store, pod, ct.Name, held); err != nil {
					notes = append(notes, fmt.Sprintf("%s: %s: %v: it is left running", node, pod.Ref(), err))
				} else if fromHeld {
					c.Stop = append(c.Stop, pod)
				}
				break
			}
		}
		out = append(out, heldNode{node: node, change: c})
	}
	return out, notes
}

// specUses reports whether the pod's spec in etcd (same uid) has a
// container of that name whose image is the image name held.
func specUses(ctx context.Context, s *etcd.Store, p pods.Pod, container, held string) (bool, error) {
	r, err := s.Layout.Lookup("pods")
	if err != nil {
		return false, err
	}
	o, err := s.GetObject(ctx, r, p.Namespace, p.Name, etcd.Serializable)
	var nf *etcd.NotFoundError
	if errors.As(err, &nf) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if o.Decoded == nil {
		return false, o.Err
	}
	spec, ok := o.Decoded.Object.(*corev1.Pod)
	if !ok || string(spec.UID) != p.UID {
		return false, nil
	}
	for _, c := range append(append([]corev1.Container{}, spec.Spec.InitContainers...), spec.Spec.Containers...) {
		if c.Name != container {
			continue
		}
		name, err := reference.ParseNormalizedNamed(c.Image)
		return err == nil && reference.TagNameOnly(name).String() == held, nil
	}
	return false, nil
}

// heldNode is what a hold did on one node, from the journal.
type heldNode struct {
	node   string
	change NodeChange
}

// holdRecords reads a hold change from the journal: its nodes (with the
// images held, as applied or of unknown outcome) and its etcd intents.
func holdRecords(records []journal.Record, id string) ([]heldNode, []journal.Record, error) {
	recs := journal.Find(records, id)
	if len(recs) == 0 {
		return nil, nil, fmt.Errorf("change %s: %w\nhint: `breakglass pods hold list` shows the holds on the nodes with their change IDs; check --journal", id, errNotInJournal)
	}
	if recs[0].Op != OpPodsHold {
		return nil, nil, fmt.Errorf("change %s is a %s change, not a pods hold", id, recs[0].Op)
	}
	intents := map[string]*journal.Record{}
	var order []string
	applied := map[string]bool{}
	var etcdRecs []journal.Record
	for i := range recs {
		r := &recs[i]
		if r.Kind == journal.KindEtcd {
			etcdRecs = append(etcdRecs, *r)
			continue
		}
		switch r.Type {
		case journal.TypeIntent:
			if _, ok := intents[r.Target.Node]; !ok {
				order = append(order, r.Target.Node)
			}
			intents[r.Target.Node] = r
		case journal.TypeOutcome:
			applied[r.Target.Node] = r.Status == journal.StatusApplied || r.Status == journal.StatusUnknown
		}
	}
	var out []heldNode
	for _, node := range order {
		if !applied[node] {
			continue
		}
		var c NodeChange
		if b := intents[node].Before; b != nil {
			if err := json.Unmarshal(b.Bytes, &c); err != nil {
				return nil, nil, fmt.Errorf("change %s: the journal's record of %s: %w", id, node, err)
			}
		}
		if len(c.Hold) > 0 {
			out = append(out, heldNode{node: node, change: c})
		}
	}
	return out, etcdRecs, nil
}

// LiftOptions tune a lift.
type LiftOptions struct {
	// Batch is how many nodes get their images back at once; each batch
	// waits until its pods run their images again (0: all at once).
	Batch int
	// Wait bounds that wait per node.
	Wait time.Duration
}

// PlanLift plans the end of a hold: on each node the held names pointed
// back at their original images (by digest) and the pods that run the
// pause image in their place stopped so kubelet starts them again with
// the real image, in batches; then the owners restored in etcd (the
// DaemonSet resumed, the replicas put back).
func PlanLift(k *Pods, ek *change.Etcd, store *etcd.Store, targets []nodeops.Target, records []journal.Record, holdID string, o LiftOptions) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		held, etcdRecs, err := holdRecords(records, holdID)
		fromNodes := errors.Is(err, errNotInJournal)
		if err != nil && !fromNodes {
			return nil, err
		}
		p := &change.Plan{ID: id, Op: OpPodsLift, Title: fmt.Sprintf("lift hold %s", holdID)}
		byName := map[string]nodeops.Target{}
		for _, t := range targets {
			byName[t.Name] = t
		}
		if fromNodes {
			// The hold is found on the selected nodes by its labels; what
			// it did in etcd is not known, so the owners are left alone.
			listed := map[string]NodePods{}
			var order []string
			for _, r := range k.List(ctx, targets, false, true, "", nil) {
				if r.Err != nil {
					p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
					continue
				}
				listed[r.Target.Name] = r.Output
				order = append(order, r.Target.Name)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var notes []string
			held, notes = heldFromNodes(ctx, k, listed, holdID, order)
			if len(held) == 0 {
				return nil, fmt.Errorf("change %s: not in the journal, and no selected node holds an image for it\nhint: `breakglass pods hold list` shows the holds on the nodes with their change IDs; check --journal and --nodes", holdID)
			}
			p.Notes = append(p.Notes, fmt.Sprintf("change %s is not in this journal (made from another machine, or the journal is lost): lifted from the nodes' own records; the owners it paused or scaled in etcd are not restored (breakglass daemonset resume, breakglass scale)", holdID))
			p.Notes = append(p.Notes, notes...)
		}
		var nodeTargets []nodeops.Target
		for _, h := range held {
			t, ok := byName[h.node]
			if !ok {
				p.Skipped = append(p.Skipped, change.Skipped{Target: h.node, Reason: "not among the selected nodes (inventory, --nodes)"})
				continue
			}
			nodeTargets = append(nodeTargets, t)
		}
		listed := map[string]NodePods{}
		for _, r := range k.List(ctx, nodeTargets, false, true, "", nil) {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			listed[r.Target.Name] = r.Output
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		for _, h := range held {
			np, ok := listed[h.node]
			if !ok {
				continue
			}
			c := &NodeChange{Target: byName[h.node], Node: h.node, Grace: h.change.Grace, WaitImage: true, WaitTimeout: o.Wait}
			heldUIDs := map[string]bool{}
			for _, pod := range h.change.Stop {
				heldUIDs[pod.UID] = true
			}
			pauseIDs := map[string]bool{}
			for _, hi := range h.change.Hold {
				img, ok := np.image(hi.Image)
				if !ok || img.Labels[pods.LabelHold] != holdID {
					p.Notes = append(p.Notes, fmt.Sprintf("%s: image %s is no longer held by %s: left alone", h.node, hi.Image, holdID))
					continue
				}
				c.Release = append(c.Release, hi.Image)
				pauseIDs[hi.PauseID] = true
			}
			// The held pods that kubelet started again run the pause image
			// in their containers: stopping them makes kubelet start them
			// with the real image.
			for _, pod := range np.Pods {
				if !heldUIDs[pod.UID] {
					continue
				}
				for _, ct := range pod.Containers {
					if pauseIDs[ct.ImageRef] {
						c.Stop = append(c.Stop, pod)
						break
					}
				}
			}
			c.WaitImage = len(c.Stop) > 0
			for id := range pauseIDs {
				c.PauseIDs = append(c.PauseIDs, id)
			}
			sort.Strings(c.PauseIDs)
			if len(c.Release) == 0 {
				continue
			}
			it := c.Item(OpPodsLift)
			it.Undoes = holdID
			p.Items = append(p.Items, it)
		}
		if o.Batch > 0 && len(p.Items) > o.Batch {
			p.Batch = o.Batch
			p.Notes = append(p.Notes, fmt.Sprintf("lifted %d node%s at a time: each batch waits until its pods run their images again", o.Batch, plural(o.Batch)))
		}
		// The owners, after the nodes.
		if ek != nil && store != nil {
			items, notes, err := liftOwners(ctx, ek, store, etcdRecs, id)
			if err != nil {
				return nil, err
			}
			for _, it := range items {
				it.Undoes = holdID
			}
			p.Items = append(p.Items, items...)
			p.Notes = append(p.Notes, notes...)
		} else if len(etcdRecs) > 0 {
			return nil, errors.New("this hold changed owners in etcd, and etcd is not configured\nhint: configure etcd so that the owners are restored too")
		}
		return p, nil
	}
}

// liftOwners plans resuming the DaemonSets a hold paused and putting back
// the replicas it scaled to 0, from the journal's before-values. A resume
// or a scale is a change of its own, compared with the object as it is now
// (the controller has written its status since), not a byte restore.
func liftOwners(ctx context.Context, ek *change.Etcd, store *etcd.Store, recs []journal.Record, id string) ([]*change.Item, []string, error) {
	var items []*change.Item
	var notes []string
	done := map[string]bool{}
	for _, r := range recs {
		if r.Type != journal.TypeIntent || done[r.Target.Key] {
			continue
		}
		applied := false
		for _, o := range recs {
			if o.Type == journal.TypeOutcome && o.Target.Key == r.Target.Key && o.Attempt == r.Attempt && o.Status == journal.StatusApplied {
				applied = true
			}
		}
		if !applied {
			continue
		}
		done[r.Target.Key] = true
		res, err := store.Resolve(ctx, r.Target.Resource)
		if err != nil {
			return nil, nil, err
		}
		obj := Object{Resource: res, Namespace: r.Target.Namespace, Name: r.Target.Name}
		var planner change.Planner
		switch r.Target.Resource {
		case "daemonsets.apps":
			planner = ResumeDaemonSet(ek, obj, nil)
		default:
			if r.Before == nil || r.Before.Absent {
				continue
			}
			d, err := store.Codec.Decode(r.Target.Key, r.Before.Bytes, r.Before.Revision)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: the journal's value before the hold: %w", obj.Ref(), err)
			}
			replicas, ok := replicasOf(d)
			if !ok {
				continue
			}
			planner = Scale(ek, obj, replicas, true)
		}
		sub, err := planner(ctx, id)
		var nf *etcd.NotFoundError
		if errors.As(err, &nf) {
			// Deleted since the hold (its namespace too, perhaps): there is
			// nothing to put back, and the nodes' images still are.
			notes = append(notes, fmt.Sprintf("%s %s was deleted since the hold: nothing to put back in etcd (the images on the nodes are released all the same)", r.Target.Resource, obj.Ref()))
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s %s: %w", r.Target.Resource, obj.Ref(), err)
		}
		items = append(items, sub.Items...)
		notes = append(notes, sub.Notes...)
	}
	return items, notes, nil
}

// ChangeOwner: a hold's undo is a lift, whatever kinds its records are.
func (k *Pods) OwnsOp(op string) bool { return op == OpPodsHold || op == OpPodsStop }

// Undo plans the undo of a pods change: a hold is lifted (all nodes at
// once; `pods hold lift --batch` lifts in batches); a stop has nothing to
// put back (kubelet starts stopped pods again by itself).
func (k *Pods) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	recs := journal.Find(records, id)
	if len(recs) > 0 && recs[0].Op == OpPodsStop {
		return nil, nil
	}
	p, err := PlanLift(k, k.Etcd, k.Store, k.Targets, records, id, LiftOptions{})(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(p.Skipped) > 0 {
		return nil, fmt.Errorf("cannot undo %s on every node: %s: %s\nhint: lift it with breakglass pods hold lift %s once the node answers", id, p.Skipped[0].Target, p.Skipped[0].Reason, id)
	}
	return p.Items, nil
}
