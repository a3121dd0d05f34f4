package runbook

import (
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/nft"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

// The step types of the levers that act on nodes: the network shed (nft
// on the control-plane nodes) and pods through containerd.

var nodesParam = ParamSpec{Name: "nodes", Type: "list", Doc: "nodes to act on: names, globs, role=ROLE, label=SELECTOR"}

var firewallParam = ParamSpec{Name: "firewall", Type: "string", Default: "auto", Check: steps.ValidateFirewall, Doc: "how the shed is written: auto (nft, or iptables where a node has no nft), nft or iptables"}

// nftKind is the shed kind for targets, written with the firewall a's
// firewall parameter names.
func nftKind(s *Session, a Args, targets []nodeops.Target) (*steps.Nft, error) {
	if err := steps.ValidateFirewall(a.String("firewall")); err != nil {
		return nil, fmt.Errorf("firewall %w", err)
	}
	k := s.Env.Nft(targets)
	k.Firewall = a.String("firewall")
	return k, nil
}

var podSelectParams = []ParamSpec{
	{Name: "namespace", Type: "string", Doc: "pods of this namespace only"},
	{Name: "selector", Type: "string", Check: labelSelector, Doc: "label selector, as kubectl -l takes it"},
	{Name: "image", Type: "string", Doc: "pods with a container whose image matches this shell pattern"},
	{Name: "name", Type: "string", Doc: "pod name glob"},
	{Name: "daemonset", Type: "string", Check: namespacedName, Doc: "the pods of this DaemonSet (NAMESPACE/NAME, from etcd)"},
	{Name: "deployment", Type: "string", Check: namespacedName, Doc: "the pods of this Deployment (NAMESPACE/NAME, from etcd)"},
	nodesParam,
	{Name: "via", Type: "string", Check: oneOf("auto", "forward", "sudo"), Doc: "how to reach containerd: auto, forward or sudo (default: the inventory's)"},
}

var stopParams = []ParamSpec{
	{Name: "grace", Type: "duration", Default: "10s", Doc: "how long each container gets between SIGTERM and SIGKILL"},
	{Name: "force", Type: "list", Doc: "protected pods to stop too (NAMESPACE/NAME globs)"},
	{Name: "maxPods", Type: "int", Default: "100", Check: nonNegative, Doc: "refuse more pods than this unless a person confirms (0: no bound)"},
}

func init() {
	RegisterStep(StepType{Name: "shed-network", Summary: "shed the apiserver port on the control-plane nodes with breakglass's nft table (rules that expire by themselves)",
		Params: []ParamSpec{
			{Name: "ttl", Type: "duration", Required: true, Doc: "how long the rules hold on the node (1m to 24h)"},
			{Name: "mode", Type: "string", Default: "drop", Check: oneOf("drop", "reject", "limit"), Doc: "drop, reject or limit"},
			{Name: "rate", Type: "int", Check: nonNegative, Doc: "with mode limit: new connections per second let through"},
			{Name: "allow", Type: "list", Doc: "sources let through (CIDRs or addresses), besides the defaults"},
			{Name: "port", Type: "int", Check: numberIn(1, 65535, false, "a port, 1 to 65535"), Doc: "the apiserver port (default: the inventory's)"},
			{Name: "noDefaultAllow", Type: "list", Doc: "defaults to leave out: operator, control-plane, etcd, loopback"},
			nodesParam, firewallParam,
		},
		Prepare: prepareShed})
	RegisterStep(StepType{Name: "shed-lift", Summary: "remove breakglass's nft table from the nodes (default: the control plane)",
		Params: []ParamSpec{nodesParam, firewallParam},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			targets, err := s.Nodes(ctx, a.List("nodes"), steps.ShedNodes)
			if err != nil {
				return nil, err
			}
			k, err := nftKind(s, a, targets)
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: []change.Kind{k}, Planner: steps.PlanShedLift(k, targets)}, nil
		}})
	RegisterStep(StepType{Name: "stop-pods", Summary: "stop the selected pods on every node through containerd (kubelet starts them again)",
		Params: append(slices.Clone(podSelectParams), stopParams...), Prepare: preparePods(false)})
	RegisterStep(StepType{Name: "hold-pods", Summary: "stop the selected pods and keep them stopped: owner paused or scaled in etcd, image pointed at pause on each node",
		Params: append(append(slices.Clone(podSelectParams), stopParams...),
			ParamSpec{Name: "weak", Type: "bool", Doc: "accept a hold without the image layer where it cannot apply"},
			ParamSpec{Name: "pauseImage", Type: "string", Doc: "the image held names point at (default: each node's sandbox image)"}),
		Prepare: preparePods(true)})
	RegisterStep(StepType{Name: "hold-lift", Summary: "end a hold: images back by digest, pods started again in batches, owners restored",
		Params: []ParamSpec{
			{Name: "change", Type: "string", Required: true, Doc: "the hold's change ID ({{ .steps.ID.change }})"},
			{Name: "batch", Type: "int", Check: nonNegative, Doc: "nodes lifted at a time (0: all at once)"},
			{Name: "wait", Type: "duration", Default: "2m", Doc: "how long each node's pods get to run their images again"},
			nodesParam,
			{Name: "via", Type: "string", Check: oneOf("auto", "forward", "sudo"), Doc: "how to reach containerd: auto, forward or sudo"},
		},
		Prepare: prepareLift})
}

func prepareShed(ctx context.Context, s *Session, a Args) (*Action, error) {
	ttl, err := a.Duration("ttl")
	if err != nil {
		return nil, err
	}
	if err := nft.ValidateTTL(ttl); err != nil {
		return nil, fmt.Errorf("ttl: %w", err)
	}
	port, err := a.Int("port")
	if err != nil {
		return nil, err
	}
	if port != 0 {
		if err := nft.ValidatePort(port); err != nil {
			return nil, fmt.Errorf("port: %w", err)
		}
	}
	mode := nft.Mode(a.String("mode"))
	if mode != "drop" && mode != "reject" && mode != "limit" {
		return nil, fmt.Errorf("mode %q: must be drop, reject or limit", mode)
	}
	rate, err := a.Int("rate")
	if err != nil {
		return nil, err
	}
	if (mode == "limit") != (rate > 0) {
		return nil, fmt.Errorf("rate goes with mode limit, and mode limit needs rate N (new connections per second)")
	}
	allow, err := steps.ParseAllow(a.List("allow"))
	if err != nil {
		return nil, err
	}
	leaveOut := a.List("noDefaultAllow")
	defaults, err := s.Env.ShedDefaults(ctx, leaveOut)
	if err != nil {
		return nil, err
	}
	targets, err := s.Nodes(ctx, a.List("nodes"), steps.ShedNodes)
	if err != nil {
		return nil, err
	}
	k, err := nftKind(s, a, targets)
	if err != nil {
		return nil, err
	}
	spec := steps.ShedSpec{Port: s.Env.ShedPort(port), Mode: mode, Rate: rate, TTL: ttl, Allow: allow, Defaults: defaults,
		NoOperator: slices.Contains(leaveOut, "operator")}
	return &Action{Kinds: []change.Kind{k}, Planner: steps.PlanShedApply(k, targets, spec)}, nil
}

// podsKind builds the containerd kind for a step's nodes. With etcd
// wanted (a hold, a workload selection) etcd errors are the step's;
// otherwise the step goes on without etcd, as pods stop does.
func podsKind(ctx context.Context, s *Session, a Args, needEtcd bool) (*steps.Pods, error) {
	via, err := steps.ContainerdVia(s.Env.Inventory, a.String("via"))
	if err != nil {
		return nil, err
	}
	targets, err := s.Nodes(ctx, a.List("nodes"), "")
	if err != nil {
		return nil, err
	}
	if _, err := s.Store(ctx); err != nil {
		if needEtcd {
			return nil, err
		}
		s.Note("warning: going on without etcd (%v): pods are protected by what the nodes show, not by their priority class", firstLine(err.Error()))
	}
	return s.Env.Pods(targets, via), nil
}

func preparePods(hold bool) func(ctx context.Context, s *Session, a Args) (*Action, error) {
	return func(ctx context.Context, s *Session, a Args) (*Action, error) {
		k, err := podsKind(ctx, s, a, hold || a.Has("daemonset") || a.Has("deployment"))
		if err != nil {
			return nil, err
		}
		grace, err := a.Duration("grace")
		if err != nil {
			k.Close()
			return nil, err
		}
		maxPods, err := a.Int("maxPods")
		if err != nil {
			k.Close()
			return nil, err
		}
		sel := &steps.Selection{Targets: k.Targets, Selector: pods.Selector{Namespace: a.String("namespace"), Labels: a.String("selector"),
			Image: a.String("image"), Name: a.String("name")}, DaemonSet: a.String("daemonset"), Deployment: a.String("deployment"),
			Store: k.Store, NarrowNodes: !a.Has("nodes"), Force: a.List("force"), MaxPods: maxPods, Grace: grace, Interactive: s.Interactive}
		if err := sel.Resolve(ctx); err != nil {
			k.Close()
			return nil, err
		}
		if len(sel.Missing) > 0 {
			s.Note("warning: pods of the workload run on %v, which breakglass does not know", sel.Missing)
		}
		act := &Action{Kinds: []change.Kind{k}, Close: func() { k.Close() }, Result: podsResult}
		if !hold {
			act.Planner = steps.PlanStop(k, sel)
			return act, nil
		}
		weak, err := a.Bool("weak")
		if err != nil {
			k.Close()
			return nil, err
		}
		act.Kinds = append(act.Kinds, k.Etcd)
		act.Planner = steps.PlanHold(k, k.Etcd, sel, steps.HoldOptions{Weak: weak, PauseImage: a.String("pauseImage")})
		return act, nil
	}
}

// podsResult: the change, and how many nodes and pods it covers.
func podsResult(p *change.Plan) map[string]string {
	r := changeResult(p)
	pods := 0
	for _, it := range p.Items {
		if c, ok := it.Payload.(*steps.NodeChange); ok {
			pods += len(c.Stop)
		}
	}
	r["pods"] = strconv.Itoa(pods)
	return r
}

func prepareLift(ctx context.Context, s *Session, a Args) (*Action, error) {
	k, err := podsKind(ctx, s, a, true)
	if err != nil {
		return nil, err
	}
	batch, err := a.Int("batch")
	if err != nil {
		k.Close()
		return nil, err
	}
	wait, err := a.Duration("wait")
	if err != nil {
		k.Close()
		return nil, err
	}
	records, err := s.Records()
	if err != nil {
		k.Close()
		return nil, err
	}
	return &Action{Kinds: []change.Kind{k, k.Etcd}, Close: func() { k.Close() },
		Planner: steps.PlanLift(k, k.Etcd, k.Store, k.Targets, records, a.String("change"), steps.LiftOptions{Batch: batch, Wait: wait})}, nil
}

// changeResult is what every change step gives later steps: its change
// ID, and how many items and nodes it changed.
func changeResult(p *change.Plan) map[string]string {
	if p == nil {
		return map[string]string{}
	}
	return map[string]string{"change": p.ID, "items": strconv.Itoa(len(p.Items)), "nodes": strconv.Itoa(p.Nodes()), "summary": p.Summary()}
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
