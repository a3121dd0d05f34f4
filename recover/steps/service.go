package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/nodeops/service"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// KindService is the change kind that stops and starts node components
// (kubelet, the controller-manager).
const KindService = "service"

// The journal ops of the service kind.
const (
	OpKubeletStop              = "kubelet-stop"
	OpKubeletStart             = "kubelet-start"
	OpControllerManagerRestore = "controller-manager-restore"
)

// Service stops and starts kubelets and the controller-manager on nodes,
// in phases: every item of a phase is applied (concurrently) and waited
// for before the next phase starts, and a phase with a failure ends the
// change there. kubelet stop is two phases: the controller-manager moved
// aside on the control-plane nodes, then the kubelets stopped; its undo
// is the reverse: the kubelets started and their leases renewed, then the
// controller-manager put back.
type Service struct {
	Runner nodeops.Runner
	// Targets are the nodes by name, for undo and for starts.
	Targets []nodeops.Target
	// Kubelet and ControllerManager say how each is found on a node.
	Kubelet, ControllerManager service.Component
	// Leases, when set, is asked whether a started kubelet renewed its
	// node's lease (through etcd): only then is the node back.
	Leases KubeletLeases
	// Wait bounds how long one node may take to stop or start (default
	// 2m); Poll is how often it is looked at meanwhile (default 1s).
	Wait, Poll time.Duration
	// CallTimeout bounds each SSH command (default 30s).
	CallTimeout time.Duration
	Concurrency int
	// HostedControllerManager, when set, is the controller-manager of a
	// hosted control plane: a Deployment or StatefulSet in a hosting
	// cluster, scaled to 0 in Etcd (the hosting cluster's) before the
	// kubelets stop, and back after they run again.
	HostedControllerManager *Object
	// Etcd writes the hosted controller-manager's replicas, and undoes
	// those of a change that has etcd records.
	Etcd *change.Etcd
}

// KubeletLeases reads a node's lease in kube-node-lease.
type KubeletLeases interface {
	// RenewTime is the lease's renewTime (zero when it has none). A start
	// compares it with the one read before the kubelet was started: the
	// node's clock never meets the operator's.
	RenewTime(ctx context.Context, node string) (time.Time, error)
}

// Name implements change.Kind.
func (k *Service) Name() string { return KindService }

// OwnsOp implements change.ChangeOwner (the commands register the kind in
// an engine of its own, so an undo's records are its too).
func (k *Service) OwnsOp(op string) bool {
	switch op {
	case OpKubeletStop, OpKubeletStart, OpControllerManagerRestore, "undo":
		return true
	}
	return false
}

func (k *Service) wait() time.Duration {
	if k.Wait <= 0 {
		return 2 * time.Minute
	}
	return k.Wait
}

func (k *Service) poll() time.Duration {
	if k.Poll <= 0 {
		return time.Second
	}
	return k.Poll
}

func (k *Service) call(ctx context.Context) (context.Context, context.CancelFunc) {
	d := k.CallTimeout
	if d <= 0 {
		d = 30 * time.Second
	}
	return context.WithTimeout(ctx, d)
}

func (k *Service) component(name string) service.Component {
	if name == k.ControllerManager.Name {
		return k.ControllerManager
	}
	return k.Kubelet
}

// Check refuses components the kind cannot work with.
func (k *Service) Check() error {
	if err := k.Kubelet.Check(); err != nil {
		return err
	}
	return k.ControllerManager.Check()
}

// ServiceChange is the payload of a service item: one component on one
// node stopped or started, and how.
type ServiceChange struct {
	Target    nodeops.Target `json:"-"`
	Node      string         `json:"node"`
	Component string         `json:"component"`
	// Action is "stop" or "start".
	Action string `json:"action"`
	// Mechanism is service.Systemd (Unit) or service.File (Path moved to
	// or from Backup).
	Mechanism string `json:"mechanism"`
	Unit      string `json:"unit,omitempty"`
	Path      string `json:"path,omitempty"`
	Backup    string `json:"backup,omitempty"`
	// Hash, Bytes, Mode, UID and GID are the file's (for a put back
	// without its backup).
	Hash  string `json:"sha256,omitempty"`
	Bytes []byte `json:"bytes,omitempty"`
	Mode  string `json:"mode,omitempty"`
	UID   int    `json:"uid"`
	GID   int    `json:"gid"`
	// Keep are the names the file's directory held besides it.
	Keep []string `json:"keep,omitempty"`
	// Phase orders the items: a phase is applied and waited for before
	// the next starts.
	Phase int `json:"phase"`
}

func (c *ServiceChange) plannedAt() string {
	switch {
	case c.Mechanism == service.Systemd:
		return "unit:" + c.Unit
	case c.Action == "stop":
		return "sha256:" + c.Hash
	}
	return "absent"
}

func (c *ServiceChange) how() string {
	switch {
	case c.Mechanism == service.Systemd:
		return fmt.Sprintf("systemctl %s %s", c.Action, c.Unit)
	case c.Action == "stop":
		return fmt.Sprintf("move %s to %s", c.Path, c.Backup)
	default:
		return fmt.Sprintf("put %s back from %s", c.Path, c.Backup)
	}
}

func (c *ServiceChange) item(p string, undoes string) *change.Item {
	verb := c.Action
	summary := fmt.Sprintf("%s: %s %s (%s)", c.Node, verb, c.Component, c.how())
	return &change.Item{Kind: KindService, Target: journal.Target{Node: c.Node, Path: c.Path}, Summary: summary,
		PlannedAt: p, Undoes: undoes, Payload: c}
}

func (k *Service) probe(ctx context.Context, targets []nodeops.Target, c service.Component) []fanout.ResultOf[service.State] {
	opts := fanout.OptionsOf[service.State]{Concurrency: max(k.Concurrency, 1), Timeout: k.CallTimeout}
	return fanout.RunOf(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (service.State, error) {
		return service.Probe(ctx, k.Runner, t, c)
	})
}

// stopChange is how the component's state is stopped ("" reason when it
// can be).
func stopChange(t nodeops.Target, comp service.Component, s service.State, id string, phase int) (*ServiceChange, string) {
	c := &ServiceChange{Target: t, Node: t.Name, Component: comp.Name, Action: "stop", Mechanism: s.Mechanism, Phase: phase}
	switch s.Mechanism {
	case service.Systemd:
		c.Unit = s.Unit
	case service.File:
		c.Path, c.Hash, c.Bytes, c.Mode, c.UID, c.GID = s.Path, s.Hash, s.Bytes, s.Mode, s.UID, s.GID
		c.Backup = comp.BackupPath(id, s.Path)
		c.Keep = s.Dir(s.Path)
	default:
		return nil, fmt.Sprintf("%s runs (%s), but neither %s.service nor a file it runs from (%s) was found: stop it by hand", comp.Name,
			strings.Join(s.Procs, ", "), comp.Unit, strings.Join(comp.Files, ", "))
	}
	return c, ""
}

func pathBase(p string) string {
	if i := strings.LastIndex(p, "/"); i >= 0 {
		return p[i+1:]
	}
	return p
}

// PlanKubeletStop plans stopping the kubelets of workers, after moving the
// controller-manager aside on the control-plane nodes cps so that nobody
// marks the stopped nodes NotReady and evicts their pods. A control-plane
// node that cannot be read, or a controller-manager that cannot be
// stopped, refuses the plan unless force: a kubelet stopped under a
// running controller-manager is a node evicted five minutes later.
//
// selected are the nodes asked for; with fraction below 1 only the first
// fraction of them by name are stopped (Fraction). Control-plane nodes
// among them are refused unless force: their kubelet supervises the
// static pods of the control plane.
func PlanKubeletStop(k *Service, cps, selected []nodeops.Target, fraction float64, force bool) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if err := k.Check(); err != nil {
			return nil, err
		}
		if len(selected) == 0 {
			return nil, fmt.Errorf("no node selected whose kubelet to stop")
		}
		if fraction <= 0 || fraction > 1 {
			return nil, fmt.Errorf("fraction %g: want more than 0 and at most 1", fraction)
		}
		var cpSel []string
		for _, t := range selected {
			if t.HasRole("control-plane") {
				cpSel = append(cpSel, t.Name)
			}
		}
		if len(cpSel) > 0 && !force {
			return nil, change.Refusedf("refused: --nodes selects control-plane nodes (%s): stopping their kubelet stops the supervision of their static pods (the API server, etcd)\nhint: select workers only (--nodes role=worker), or pass --force", strings.Join(cpSel, ", "))
		}
		workers := Fraction(selected, fraction)
		p := &change.Plan{ID: id, Op: OpKubeletStop,
			Title: fmt.Sprintf("stop the kubelet on %d node%s, after moving the controller-manager aside", len(workers), plural(len(workers)))}
		if len(workers) < len(selected) {
			p.Notes = append(p.Notes, fmt.Sprintf("fraction %g: %d of the %d selected nodes (the first by name): %s", fraction, len(workers), len(selected), names(workers)))
		}
		if len(cpSel) > 0 {
			p.Notes = append(p.Notes, "--force: control-plane nodes selected ("+strings.Join(cpSel, ", ")+"): their static pods lose their supervisor while the kubelet is stopped")
		}
		cm := k.ControllerManager
		var problems []string
		found := 0
		if k.HostedControllerManager != nil {
			hp, err := k.planHostedStop(ctx, id, force)
			if err != nil {
				return nil, err
			}
			p.Items = append(p.Items, hp.Items...)
			p.Unchanged = append(p.Unchanged, hp.Unchanged...)
			p.Notes = append(p.Notes, hp.Notes...)
			found++
		}
		for _, r := range k.probe(ctx, cps, cm) {
			if r.Err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", r.Target.Name, r.Err))
				continue
			}
			s := r.Output
			if s.Mechanism == "" && !s.Running() {
				if len(s.Aside) > 0 {
					b, _ := s.NewestAside()
					found++
					p.Unchanged = append(p.Unchanged, &change.Item{Kind: KindService, Target: journal.Target{Node: r.Target.Name},
						Summary: fmt.Sprintf("%s: %s already moved aside (%s)", r.Target.Name, cm.Name, b)})
				}
				continue
			}
			found++
			if s.Mechanism == service.Systemd && s.Active != "active" && !s.Running() {
				p.Unchanged = append(p.Unchanged, &change.Item{Kind: KindService, Target: journal.Target{Node: r.Target.Name},
					Summary: fmt.Sprintf("%s: %s.service is %s", r.Target.Name, s.Unit, s.Active)})
				continue
			}
			c, why := stopChange(r.Target, cm, s, id, 0)
			if why != "" {
				problems = append(problems, r.Target.Name+": "+why)
				continue
			}
			p.Items = append(p.Items, c.item(c.plannedAt(), ""))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if found == 0 {
			problems = append(problems, fmt.Sprintf("no %s found on the control-plane nodes (%s): it may run elsewhere (a hosted control plane: scale it to 0 with breakglass scale first)",
				cm.Name, names(cps)))
		}
		if len(problems) > 0 {
			if !force {
				return nil, change.Refusedf("the controller-manager cannot be moved aside before the kubelets stop:\n  %s\nhint: without it moved aside, nodes whose kubelet stops are marked NotReady and their pods evicted; fix this, or pass --force to stop the kubelets anyway",
					strings.Join(problems, "\n  "))
			}
			for _, pr := range problems {
				p.Notes = append(p.Notes, "--force: "+pr)
			}
		}
		for _, r := range k.probe(ctx, workers, k.Kubelet) {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			s := r.Output
			if !s.Running() && (s.Mechanism != service.Systemd || s.Active != "active") {
				p.Unchanged = append(p.Unchanged, &change.Item{Kind: KindService, Target: journal.Target{Node: r.Target.Name},
					Summary: r.Target.Name + ": kubelet not running"})
				continue
			}
			c, why := stopChange(r.Target, k.Kubelet, s, id, 1)
			if why != "" {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: why})
				continue
			}
			p.Items = append(p.Items, c.item(c.plannedAt(), ""))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(p.Items) > 0 && k.HostedControllerManager != nil {
			p.Notes = append(p.Notes, fmt.Sprintf("first the hosted %s %s is scaled to 0 in the hosting cluster's etcd, and waited for (up to %s) until none of its pods is left there", hostedRole, k.HostedControllerManager.Ref(), k.wait()))
		}
		if len(p.Items) > 0 {
			first, back := "first", "then puts the controller-manager back"
			if k.HostedControllerManager != nil {
				first, back = "next", "then puts the controller-manager back, and last the hosted one's replicas"
			}
			p.Notes = append(p.Notes,
				first+" the controller-manager is stopped on each control-plane node where it runs (waited for until no kube-controller-manager process runs there); only then the kubelets stop, all at once, each waited for",
				"a stopped kubelet's pods keep running (their containers are containerd's); the node stops renewing its lease, and with no controller-manager nobody marks it NotReady or evicts its pods",
				"while the controller-manager is aside no controller runs: Deployments, ReplicaSets, DaemonSets, Jobs, garbage collection and node lifecycle all wait",
				fmt.Sprintf("undo (breakglass undo %s) starts the kubelets, waits until each renewed its lease, %s", id, back))
		}
		return p, nil
	}
}

// Fraction is the first f of targets by name (rounded down, at least one).
func Fraction(targets []nodeops.Target, f float64) []nodeops.Target {
	out := slices.Clone(targets)
	slices.SortFunc(out, func(a, b nodeops.Target) int { return strings.Compare(a.Name, b.Name) })
	n := max(int(math.Floor(float64(len(out))*f+1e-9)), 1)
	return out[:min(n, len(out))]
}

func names(ts []nodeops.Target) string {
	var n []string
	for _, t := range ts {
		n = append(n, t.Name)
	}
	if len(n) == 0 {
		return "none selected"
	}
	return strings.Join(n, ", ")
}

// startChange plans starting a component that does not run: its unit
// started, or its file put back from the backup the journal names (the
// newest on the node otherwise). reason says why it cannot be.
func (k *Service) startChange(ctx context.Context, t nodeops.Target, comp service.Component, s service.State, records []journal.Record, phase int) (*ServiceChange, string) {
	c := &ServiceChange{Target: t, Node: t.Name, Component: comp.Name, Action: "start", Phase: phase}
	if s.Mechanism == service.Systemd {
		c.Mechanism, c.Unit = service.Systemd, s.Unit
		return c, ""
	}
	if s.Mechanism == service.File {
		return nil, fmt.Sprintf("%s is in place but %s does not run: look at the node (what runs it?)", s.Path, comp.Name)
	}
	// The file is aside: the journal's record of the stop, if the backup
	// it names is still there; else the newest backup on the node.
	if was := lastStop(records, t.Name, comp.Name); was != nil {
		if h, ok := s.Aside[was.Backup]; ok && h == was.Hash {
			*c = *was
			c.Target, c.Action, c.Phase, c.Keep = t, "start", phase, s.Dir(was.Path)
			return c, ""
		}
	}
	b, h := s.NewestAside()
	if b == "" {
		return nil, fmt.Sprintf("%s does not run, and neither %s.service, nor its file (%s), nor a copy moved aside under %s was found", comp.Name,
			comp.Unit, strings.Join(comp.Files, ", "), pathDir(pathDir(comp.BackupPath("x", "/y"))))
	}
	cctx, cancel := k.call(ctx)
	f, err := manifest.Read(cctx, k.Runner, t, b)
	cancel()
	if err != nil {
		return nil, err.Error()
	}
	if f.Hash != h {
		return nil, fmt.Sprintf("%s changed while it was read", b)
	}
	c.Mechanism, c.Backup, c.Hash, c.Bytes, c.Mode, c.UID, c.GID = service.File, b, f.Hash, f.Bytes, f.Mode, f.UID, f.GID
	c.Path = comp.Files[0]
	for _, fl := range comp.Files {
		if pathBase(fl) == pathBase(b) {
			c.Path = fl
			break
		}
	}
	c.Keep = s.Dir(c.Path)
	return c, ""
}

func pathDir(p string) string {
	if i := strings.LastIndex(p, "/"); i > 0 {
		return p[:i]
	}
	return "/"
}

// noComponent says the node has no such component at all: no unit, no
// file, no copy moved aside, no process, and no stop of it in the journal
// (a stop whose backup was lost is not "none": it is reported).
func noComponent(s service.State, records []journal.Record, node, comp string) bool {
	return s.Mechanism == "" && len(s.Aside) == 0 && !s.Running() && lastStop(records, node, comp) == nil
}

// lastStop is the newest journaled stop of the component on the node.
func lastStop(records []journal.Record, node, comp string) *ServiceChange {
	for i := len(records) - 1; i >= 0; i-- {
		r := &records[i]
		if r.Kind != journal.KindNode || r.Details["kind"] != KindService || r.Type != journal.TypeIntent ||
			r.Target.Node != node || r.Details["component"] != comp || r.Details["action"] != "stop" {
			continue
		}
		var c ServiceChange
		if err := jsonUnmarshal(r.Before, &c); err == nil {
			return &c
		}
	}
	return nil
}

// PlanKubeletStart plans starting the kubelet on every target where it
// does not run, each waited for until it runs (and, with Leases, renewed
// its node's lease). The controller-manager is left as it is:
// controller-manager restore puts it back once every kubelet is.
func PlanKubeletStart(k *Service, targets []nodeops.Target, records []journal.Record) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if err := k.Check(); err != nil {
			return nil, err
		}
		p := &change.Plan{ID: id, Op: OpKubeletStart, Title: fmt.Sprintf("start the kubelet on %d node%s", len(targets), plural(len(targets)))}
		for _, r := range k.probe(ctx, targets, k.Kubelet) {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			if r.Output.Running() {
				p.Unchanged = append(p.Unchanged, &change.Item{Kind: KindService, Target: journal.Target{Node: r.Target.Name},
					Summary: r.Target.Name + ": kubelet runs"})
				continue
			}
			if noComponent(r.Output, records, r.Target.Name, k.Kubelet.Name) {
				p.Unchanged = append(p.Unchanged, &change.Item{Kind: KindService, Target: journal.Target{Node: r.Target.Name},
					Summary: r.Target.Name + ": no kubelet on this node"})
				continue
			}
			c, why := k.startChange(ctx, r.Target, k.Kubelet, r.Output, records, 0)
			if why != "" {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: why})
				continue
			}
			p.Items = append(p.Items, c.item("absent", ""))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(p.Items) > 0 {
			w := "until its kubelet runs"
			if k.Leases != nil {
				w = "until its kubelet runs and renewed its node's lease (read from etcd)"
			}
			p.Notes = append(p.Notes, fmt.Sprintf("each node is waited for (up to %s) %s", k.wait(), w),
				"the controller-manager is not put back: run breakglass controller-manager restore once every kubelet runs")
		}
		return p, nil
	}
}

// PlanControllerManagerRestore plans putting the controller-manager back
// on the control-plane nodes cps. Refused unless force while a kubelet of
// workers does not run (or cannot be read): the controller-manager would
// mark that node NotReady and evict its pods.
func PlanControllerManagerRestore(k *Service, cps, workers []nodeops.Target, records []journal.Record, force bool) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if err := k.Check(); err != nil {
			return nil, err
		}
		p := &change.Plan{ID: id, Op: OpControllerManagerRestore,
			Title: fmt.Sprintf("put the controller-manager back on %d control-plane node%s", len(cps), plural(len(cps)))}
		var down []string
		for _, r := range k.probe(ctx, workers, k.Kubelet) {
			switch {
			case r.Err != nil:
				down = append(down, fmt.Sprintf("%s (not read: %v)", r.Target.Name, r.Err))
			case !r.Output.Running() && !noComponent(r.Output, records, r.Target.Name, k.Kubelet.Name):
				down = append(down, r.Target.Name)
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(down) > 0 {
			if !force {
				return nil, change.Refusedf("the kubelet does not run on %s: the controller-manager would mark those nodes NotReady and evict their pods\nhint: start them first (breakglass kubelet start), or pass --force", strings.Join(down, ", "))
			}
			p.Notes = append(p.Notes, "--force: the kubelet does not run on "+strings.Join(down, ", ")+": those nodes will be marked NotReady and their pods evicted")
		}
		cm := k.ControllerManager
		for _, r := range k.probe(ctx, cps, cm) {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			if r.Output.Running() {
				p.Unchanged = append(p.Unchanged, &change.Item{Kind: KindService, Target: journal.Target{Node: r.Target.Name},
					Summary: r.Target.Name + ": " + cm.Name + " runs"})
				continue
			}
			if noComponent(r.Output, records, r.Target.Name, cm.Name) {
				continue // not a node it runs on
			}
			c, why := k.startChange(ctx, r.Target, cm, r.Output, records, 0)
			if why != "" {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: why})
				continue
			}
			p.Items = append(p.Items, c.item("absent", ""))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if k.HostedControllerManager != nil {
			items, notes, err := k.hostedRestore(ctx, records, id)
			if err != nil {
				return nil, err
			}
			p.Items = append(p.Items, items...)
			p.Notes = append(p.Notes, notes...)
			return p, nil
		}
		if len(p.Items)+len(p.Unchanged) == 0 && len(p.Skipped) == 0 {
			return nil, fmt.Errorf("no %s was found moved aside or stopped on %s\nhint: --nodes selects the control-plane nodes; --controller-manager-manifest names its file", cm.Name, names(cps))
		}
		return p, nil
	}
}

// Apply implements change.Kind (the engine calls ApplyBatch).
func (k *Service) Apply(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	return k.ApplyBatch(ctx, p, []*change.Item{it}, j, func(change.Event) {})
}

// ApplyBatch implements change.BatchKind: phase by phase, the items of a
// phase at once (up to Concurrency), each journaled before it is acted on
// and once it was waited for. A phase with a failure ends the change: the
// items of the later phases are not started (reported as such, and not
// journaled: nothing was done to them).
//
// A file that changed since the plan (a *service.StaleError: nothing
// moved) refuses the change, as the manifest kind refuses a stale
// manifest: when every item started was stale, nothing was changed
// anywhere, and the error is a *change.RefusedError (exit 4), not a
// partial change (exit 3). The engine plans again only after a
// non-batch kind's *change.StaleError; a batch's stale items end as this
// refusal, and the operator plans again.
func (k *Service) ApplyBatch(ctx context.Context, p *change.Plan, items []*change.Item, j *journal.Journal, report func(change.Event)) error {
	phases := map[int][]*change.Item{}
	for _, it := range items {
		c, ok := it.Payload.(*ServiceChange)
		if !ok {
			return fmt.Errorf("internal: service item without a service change")
		}
		phases[c.Phase] = append(phases[c.Phase], it)
	}
	order := make([]int, 0, len(phases))
	for ph := range phases {
		order = append(order, ph)
	}
	sort.Ints(order)
	if p.Op == OpKubeletStop && k.HostedControllerManager != nil && k.Etcd != nil {
		// The hosted controller-manager was scaled to 0 by the etcd item
		// before this batch: no kubelet stops while it still runs.
		if err := k.waitHostedGone(ctx); err != nil {
			for _, it := range items {
				report(change.ItemFailed{Plan: p, Item: it, Err: fmt.Errorf("not started: %s", notStartedPhase(err))})
			}
			return err
		}
	}
	// failed counts the items that were started and failed (other than
	// stale); notStarted those of phases after a failure.
	var failed, notStarted, done int
	var stopped error
	var stale []error
	for _, ph := range order {
		its := phases[ph]
		if stopped != nil || ctx.Err() != nil {
			if stopped == nil {
				stopped = ctx.Err()
			}
			for _, it := range its {
				report(change.ItemFailed{Plan: p, Item: it, Err: fmt.Errorf("not started: %s", notStartedPhase(stopped))})
				notStarted++
			}
			continue
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, max(k.Concurrency, 1))
		for _, it := range its {
			wg.Add(1)
			sem <- struct{}{}
			go func(it *change.Item) {
				defer wg.Done()
				defer func() { <-sem }()
				report(change.ItemStarted{Plan: p, Item: it})
				err := k.applyOne(ctx, p, it, j)
				mu.Lock()
				defer mu.Unlock()
				done++
				if err != nil {
					var se *service.StaleError
					if errors.As(err, &se) {
						stale = append(stale, err)
					} else {
						failed++
					}
					if stopped == nil {
						stopped = err
					}
					report(change.ItemFailed{Plan: p, Item: it, Err: err})
				} else {
					report(change.ItemApplied{Plan: p, Item: it})
				}
				report(change.Progress{Plan: p, Done: done, Total: len(items)})
			}(it)
		}
		wg.Wait()
	}
	bad := failed + notStarted + len(stale)
	if bad == 0 {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(stale) > 0 && bad == len(items) && failed == 0 {
		// Nothing was applied, nothing failed half-way: only stale files
		// (nothing moved) and items never started.
		rest := ""
		if notStarted > 0 {
			rest = fmt.Sprintf("; the %d item%s of the later phases %s not started", notStarted, plural(notStarted), map[bool]string{true: "was", false: "were"}[notStarted == 1])
		}
		return &change.RefusedError{Err: fmt.Errorf("%w\nnothing was changed%s\nhint: someone changed it meanwhile: look at it, then plan again", errors.Join(stale...), rest)}
	}
	return &change.PartialError{What: p.Op, Failed: bad, Total: len(items)}
}

func notStartedPhase(cause error) string {
	if errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return cause.Error()
	}
	return "an earlier step failed (" + firstLine(cause.Error()) + ")"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// applyOne acts on one node and waits until the component stopped or
// runs (and a kubelet renewed its lease).
func (k *Service) applyOne(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	c := it.Payload.(*ServiceChange)
	start := time.Now()
	var base *leaseBase
	if c.Action == "start" && c.Component == k.Kubelet.Name && k.Leases != nil {
		// The lease as it was before the start; a failed read does not
		// hold the start back (waitFor reads it again).
		base = &leaseBase{}
		cctx, cancel := k.call(ctx)
		base.renew, base.err = k.Leases.RenewTime(cctx, c.Node)
		cancel()
		base.known = base.err == nil
	}
	if err := k.journal(j, p, it, c, journal.TypeIntent, journal.StatusPending, nil); err != nil {
		return fmt.Errorf("journal: %w\nhint: nothing was changed on %s", err, c.Node)
	}
	cctx, cancel := k.call(ctx)
	var err error
	switch {
	case c.Mechanism == service.Systemd:
		err = service.Systemctl(cctx, k.Runner, c.Target, c.Action, c.Unit)
	case c.Action == "stop":
		err = service.Aside(cctx, k.Runner, c.Target, c.Path, c.Hash, c.Backup)
	default:
		err = service.Back(cctx, k.Runner, c.Target, p.ID, c.Path, c.Bytes, c.Mode, c.UID, c.GID, c.Backup, c.Keep)
	}
	cancel()
	var stray *manifest.StrayError
	if errors.As(err, &stray) {
		// Put back; the directory holds a name it did not: say so, and go
		// on (the file is in place).
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusUnknown, err)
		err = nil
	}
	var se *service.StaleError
	if errors.As(err, &se) {
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusFailed, err)
		return err
	}
	if err != nil {
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusUnknown, err)
		return err
	}
	if err := k.waitFor(ctx, c, base); err != nil {
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusUnknown, err)
		return err
	}
	it.Result = fmt.Sprintf("%s after %s", map[string]string{"stop": "stopped", "start": "running"}[c.Action], time.Since(start).Round(100*time.Millisecond))
	if err := k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusApplied, nil); err != nil {
		return fmt.Errorf("journal: %s was changed but its outcome was not recorded: %w", c.Node, err)
	}
	return nil
}

// leaseBase is the renewTime a started kubelet's lease must pass.
type leaseBase struct {
	renew time.Time
	// known is false until the lease was read once; err is why the last
	// read failed.
	known bool
	err   error
}

// leaseKey names a node's lease for the operator.
func leaseKey(node string) string { return "kube-node-lease/" + node }

// waitFor waits until the component no longer runs (stop) or runs
// (start), and a started kubelet renewed its lease: a renewTime after
// base's, both written by the node's clock (the operator's is never
// compared with it).
//
// When the lease could not be read before the start (etcd slow), the
// start is not held back and the lease is not taken as renewed by
// whatever renewTime it has: an old lease would pass a zero baseline and
// declare a kubelet back that never renewed. The read is retried at each
// poll, and the first renewTime read after the start was issued is the
// baseline: the kubelet counts as back once the lease is renewed past
// it. That proves a renewal by the started kubelet, at the cost of at
// most one renew interval (10s by default) when that first read already
// saw its first renewal. A lease that cannot be read within Wait fails
// the item, naming the node and the lease.
func (k *Service) waitFor(ctx context.Context, c *ServiceChange, base *leaseBase) error {
	deadline := time.Now().Add(k.wait())
	comp := k.component(c.Component)
	last := "nothing seen yet"
	for {
		if base != nil && !base.known {
			cctx, cancel := k.call(ctx)
			base.renew, base.err = k.Leases.RenewTime(cctx, c.Node)
			cancel()
			base.known = base.err == nil
		}
		cctx, cancel := k.call(ctx)
		s, err := service.Probe(cctx, k.Runner, c.Target, comp)
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case c.Action == "stop" && s.Running():
			last = fmt.Sprintf("%s still runs (%s)", c.Component, strings.Join(s.Procs, ", "))
		case c.Action == "stop":
			return nil
		case !s.Running():
			last = c.Component + " does not run yet"
		case base == nil:
			return nil
		case !base.known:
			last = fmt.Sprintf("kubelet runs, but its lease %s could not be read, before the start nor since (%v): whether it renews it is not known", leaseKey(c.Node), base.err)
		default:
			cctx, cancel := k.call(ctx)
			rt, err := k.Leases.RenewTime(cctx, c.Node)
			cancel()
			if err == nil && rt.After(base.renew) {
				return nil
			}
			if err != nil {
				last = fmt.Sprintf("kubelet runs; its lease %s: %v", leaseKey(c.Node), err)
			} else {
				last = fmt.Sprintf("kubelet runs; its lease not renewed yet (renewTime %s)", rt.Format(time.RFC3339))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s did not %s within %s: %s", c.Node, c.Component, c.Action, k.wait(), last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(k.poll()):
		}
	}
}

func (k *Service) journal(j *journal.Journal, p *change.Plan, it *change.Item, c *ServiceChange, typ, status string, err error) error {
	r := &journal.Record{Type: typ, ID: p.ID, Kind: journal.KindNode, Op: p.Op, Attempt: it.Attempt, Target: it.Target,
		Summary: it.Summary, Undoes: it.Undoes, Status: status,
		Details: map[string]string{"kind": KindService, "component": c.Component, "action": c.Action, "mechanism": c.Mechanism}}
	if c.Backup != "" {
		r.Details["backup"] = c.Backup
	}
	if typ == journal.TypeIntent {
		b, jerr := json.Marshal(c)
		if jerr != nil {
			return jerr
		}
		r.Before = &journal.Value{Bytes: b}
	}
	if err != nil {
		r.Error = err.Error()
	}
	return j.Append(r)
}

// Undo implements change.Kind. A kubelet stop is undone in the reverse
// order: the kubelets it stopped started (and waited for), then the
// controller-manager put back. A start or a restore is not undone:
// stopping again is a kubelet stop, with its own checks.
//
// What is put back is decided by where the file is, not by whether a
// process runs: a file moved aside is put back even while the
// component's process still runs (its supervisor has not stopped it
// yet: kubelet removes a static pod some seconds after its manifest
// went), else it would stop after the undo. A file in place again is
// left alone. A stop whose outcome is failed moved nothing (its file had
// changed) and is passed over. A unit is started unless it is active (or
// the component runs anyway).
func (k *Service) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	recs := journal.Find(records, id)
	if len(recs) == 0 {
		return nil, fmt.Errorf("change %s: not in the journal", id)
	}
	if op := recs[0].Op; op != OpKubeletStop {
		return nil, change.Refusedf("change %s (%s) started components: it is not undone by stopping them again\nhint: breakglass kubelet stop (which moves the controller-manager aside first)", id, op)
	}
	byName := map[string]nodeops.Target{}
	for _, t := range k.Targets {
		byName[t.Name] = t
	}
	type was struct {
		c *ServiceChange
		t nodeops.Target
	}
	var stops []was
	seen := map[string]bool{}
	for i := range recs {
		r := &recs[i]
		if r.Type != journal.TypeIntent || r.Details["kind"] != KindService {
			continue
		}
		key := r.Target.Node + "/" + r.Details["component"]
		if seen[key] {
			continue
		}
		seen[key] = true
		var c ServiceChange
		if err := jsonUnmarshal(r.Before, &c); err != nil {
			return nil, fmt.Errorf("change %s: the journal's record of %s: %w", id, r.Target.Node, err)
		}
		t, ok := byName[c.Node]
		if !ok {
			return nil, fmt.Errorf("change %s touched %s, which is not among the selected nodes\nhint: select it with --nodes", id, c.Node)
		}
		stops = append(stops, was{&c, t})
	}
	if len(stops) == 0 && !hasEtcd(recs) {
		return nil, fmt.Errorf("change %s: nothing was stopped by it", id)
	}
	var items []*change.Item
	for _, w := range stops {
		comp := k.component(w.c.Component)
		cctx, cancel := k.call(ctx)
		s, err := service.Probe(cctx, k.Runner, w.t, comp)
		cancel()
		if err != nil {
			return nil, err
		}
		if outcomeOf(recs, w.c.Node, w.c.Component) == journal.StatusFailed {
			continue // nothing was moved or stopped
		}
		u := *w.c
		u.Target, u.Action = w.t, "start"
		// The kubelets (stopped second) start first; the
		// controller-manager (moved aside first) comes back last.
		u.Phase = 1 - w.c.Phase
		switch u.Mechanism {
		case service.File:
			if s.Path != "" {
				if s.Hash != u.Hash && !s.Running() && !force {
					return nil, change.Refusedf("%s: %s is in place again with other bytes than change %s moved aside, and %s does not run\nhint: look at it; pass --force to leave it and go on", w.t.Name, s.Path, id, u.Component)
				}
				continue
			}
			if _, ok := s.Aside[u.Backup]; !ok && len(u.Bytes) == 0 {
				return nil, fmt.Errorf("%s: the backup %s is gone and the journal has no copy", w.t.Name, u.Backup)
			}
			u.Keep = s.Dir(u.Path)
		default:
			if s.Active == "active" || s.Running() {
				continue
			}
		}
		items = append(items, u.item("absent", id))
	}
	// A hosted controller-manager's replicas come back last, once the
	// kubelets run (the etcd items after the service batch).
	hosted, _, err := k.hostedUndo(ctx, recs, id)
	if err != nil {
		return nil, err
	}
	return append(items, hosted...), nil
}

// outcomeOf is the status of the last outcome journaled for the
// component on the node among a change's records ("" for none).
func outcomeOf(recs []journal.Record, node, comp string) string {
	status := ""
	for i := range recs {
		r := &recs[i]
		if r.Type == journal.TypeOutcome && r.Details["kind"] == KindService && r.Target.Node == node && r.Details["component"] == comp {
			status = r.Status
		}
	}
	return status
}
