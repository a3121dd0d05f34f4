package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

const podsExitCodes = `Exit codes: 0 ok, 1 error, 2 usage, 3 some nodes failed (the others were
changed), 4 refused (protected pods, nothing matched, too many pods without a
prompt, not confirmed), 130 cancelled.`

func newCmdPods(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pods",
		Short: "List, stop and hold pods through each node's containerd",
		Long: `Work on pods through each node's containerd, without the API server:
containerd's socket is forwarded over the verified SSH connection (or relayed
through sudo -n where the SSH user cannot open it), and the CRI API it serves
says which pods run where (the sandboxes carry the pods' names, namespaces,
uids and labels).

` + podsExitCodes,
	}
	hold := newCmdPodsHold(d)
	cmd.AddCommand(newCmdPodsList(d), newCmdPodsStop(d), hold)
	return cmd
}

// podsOptions are the selection flags every pods command shares.
type podsOptions struct {
	nodes      nodeFlags
	ssh        sshFlags
	sel        pods.Selector
	daemonSet  string
	deployment string
	via        string
}

func addPodSelectFlags(cmd *cobra.Command, o *podsOptions) {
	f := cmd.Flags()
	f.StringVarP(&o.sel.Namespace, "namespace", "n", "", "pods of this namespace only")
	f.StringVarP(&o.sel.Labels, "selector", "l", "", "label selector, as kubectl -l takes it (app=web, env in (a,b), !canary)")
	f.StringVar(&o.sel.Image, "image", "", "pods with a container whose image matches this shell `pattern`")
	f.StringVar(&o.daemonSet, "daemonset", "", "the pods of this DaemonSet (`NAMESPACE/NAME`, resolved through etcd)")
	f.StringVar(&o.deployment, "deployment", "", "the pods of this Deployment (`NAMESPACE/NAME`, resolved through etcd)")
	addViaFlag(cmd, &o.via)
	addNodeSSHFlags(cmd, &o.nodes, &o.ssh)
}

// podsRun is what a pods command works with: the nodes, the containerd
// kind (its connections live for the whole command) and etcd if there.
type podsRun struct {
	d       *Deps
	kind    *steps.Pods
	ssh     *sshclient.Client
	targets []nodeops.Target
	store   *etcd.Store
}

func (r *podsRun) Close() {
	r.kind.Close()
	r.ssh.Close()
}

// newPodsRun resolves the nodes and prepares the containerd connections.
// needEtcd: etcd errors are fatal; otherwise a command goes on without it
// (with a warning when etcd is configured but does not answer).
func newPodsRun(ctx context.Context, d *Deps, o *podsOptions, needEtcd bool) (*podsRun, error) {
	inv, err := d.Inventory()
	if err != nil {
		return nil, err
	}
	via, err := steps.ContainerdVia(inv, o.via)
	if err != nil {
		return nil, &usageError{err}
	}
	targets, err := resolveNodes(ctx, d, &o.nodes)
	if err != nil {
		return nil, err
	}
	opts, err := sshOptions(d, &o.ssh)
	if err != nil {
		return nil, err
	}
	cl, err := sshclient.New(opts)
	if err != nil {
		return nil, err
	}
	env := d.stepsEnv(&o.ssh)
	env.SSH = cl
	if needEtcd || o.daemonSet != "" || o.deployment != "" || etcdConfigured(ctx, d) {
		st, err := d.Etcd(ctx)
		switch {
		case err == nil:
			env.Store = st
		case needEtcd || o.daemonSet != "" || o.deployment != "":
			cl.Close()
			return nil, err
		default:
			fmt.Fprintf(d.ErrOut, "warning: etcd: %v\nwarning: going on without etcd: pods are protected by what the nodes show (namespace, name, labels), not by their priority class\n", firstLineOf(err.Error()))
		}
	}
	return &podsRun{d: d, ssh: cl, targets: targets, store: env.Store, kind: env.Pods(targets, via)}, nil
}

// etcdConfigured reports whether etcd settings were given anywhere other
// than kubeadm's defaults (which apply on a control-plane node only).
func etcdConfigured(ctx context.Context, d *Deps) bool {
	cfg, err := d.etcdConfig(ctx)
	return err == nil && len(cfg.Endpoints) > 0 && cfg.EndpointsFrom != etcd.OriginKubeadm
}

func firstLineOf(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// selection builds the steps selection from the flags.
func (r *podsRun) selection(ctx context.Context, o *podsOptions) (*steps.Selection, error) {
	s := &steps.Selection{Targets: r.targets, Selector: o.sel, DaemonSet: o.daemonSet, Deployment: o.deployment, Store: r.store,
		NarrowNodes: len(o.nodes.sel.Nodes) == 0 && o.nodes.sel.NodesFile == ""}
	if err := s.Resolve(ctx); err != nil {
		return nil, &usageError{err}
	}
	if len(s.Missing) > 0 {
		fmt.Fprintf(r.d.ErrOut, "warning: pods of the workload run on %s, which breakglass does not know (add them to the inventory, or use --nodes-source etcd)\n", strings.Join(s.Missing, ", "))
	}
	return s, nil
}

// podsEngine is the change engine of a pods command: the pods kind and,
// with etcd, the etcd kind.
func (r *podsRun) engine(ctx context.Context) (*change.Engine, *change.Stream) {
	e, stream := r.d.newEngine()
	e.Register(r.kind)
	if r.kind.Etcd != nil {
		e.Register(r.kind.Etcd)
	}
	return e, stream
}

// --- pods list

type podWire struct {
	Type       string            `json:"type"` // pod
	Node       string            `json:"node"`
	Namespace  string            `json:"namespace"`
	Name       string            `json:"name"`
	UID        string            `json:"uid"`
	SandboxID  string            `json:"sandboxId"`
	State      string            `json:"state"`
	Static     bool              `json:"static,omitempty"`
	Created    time.Time         `json:"created"`
	Labels     map[string]string `json:"labels,omitempty"`
	Containers []pods.Container  `json:"containers"`
}

type podsNodeErrorWire struct {
	Type   string `json:"type"` // podsNodeError
	Node   string `json:"node"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

func newCmdPodsList(d *Deps) *cobra.Command {
	o := &podsOptions{}
	cmd := &cobra.Command{
		Use:   "list [POD-NAME-GLOB]",
		Short: "List the pods each node's containerd runs (works with the API server down)",
		Long: `List the pods of every selected node from its containerd: node, namespace,
pod, containers (ready/total), state of the sandbox, restarts, images and age.
-o wide adds the pod uid and the path containerd was reached by; -o json
prints one "pod" object per pod and one "podsNodeError" per node that did not
answer.

` + podsExitCodes,
		Example: `  breakglass pods list -n telemetry
  breakglass pods list --daemonset telemetry/telemetry-agent -o json
  breakglass pods list 'coredns-*' --nodes role=worker`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.sel.Name = args[0]
			}
			if err := checkOutput(d, "table", "wide", "json", "yaml"); err != nil {
				return err
			}
			return runPodsList(cmd.Context(), d, o)
		},
	}
	addPodSelectFlags(cmd, o)
	addEtcdFlags(cmd, d)
	return cmd
}

func runPodsList(ctx context.Context, d *Deps, o *podsOptions) error {
	r, err := newPodsRun(ctx, d, o, false)
	if err != nil {
		return err
	}
	defer r.Close()
	s, err := r.selection(ctx, o)
	if err != nil {
		return err
	}
	results := r.kind.List(ctx, s.Targets, true, false, "", nil)
	p := newPrinter(d.Out, d.Global.Output)
	var rows [][]string
	reads := &nodeReads{what: "pods list", total: len(results)}
	now := d.Now()
	for _, res := range results {
		if res.Err != nil {
			if !p.Text() {
				reads.fail(nil, res.Target.Name, res.Status, res.Err)
				p.Object(podsNodeErrorWire{Type: "podsNodeError", Node: res.Target.Name, Status: string(res.Status), Error: res.Err.Error()})
			} else {
				reads.fail(d.ErrOut, res.Target.Name, res.Status, res.Err)
			}
			continue
		}
		for _, pod := range res.Output.Pods {
			if !s.Selector.Match(&pod) {
				continue
			}
			if !p.Text() {
				if err := p.Object(podWire{Type: "pod", Node: pod.Node, Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
					SandboxID: pod.SandboxID, State: pod.State, Static: pod.Static, Created: pod.Created.UTC(), Labels: pod.Labels, Containers: pod.Containers}); err != nil {
					return err
				}
				continue
			}
			running, images := 0, []string{}
			for _, c := range pod.Containers {
				if c.State == "running" {
					running++
				}
				images = append(images, c.Image)
			}
			row := []string{pod.Node, pod.Namespace, pod.Name, fmt.Sprintf("%d/%d", running, len(pod.Containers)), pod.State,
				fmt.Sprint(pod.Restarts()), strings.Join(images, ","), age(now.Sub(pod.Created))}
			if d.Global.Output == "wide" {
				row = append(row, pod.UID, res.Output.Via)
			}
			rows = append(rows, row)
		}
	}
	if p.Text() {
		header := []string{"NODE", "NAMESPACE", "POD", "RUNNING", "SANDBOX", "RESTARTS", "IMAGES", "AGE"}
		if d.Global.Output == "wide" {
			header = append(header, "UID", "VIA")
		}
		if err := p.Table(header, rows); err != nil {
			return err
		}
	}
	return reads.err(ctx)
}

func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// --- pods stop

type podsStopOptions struct {
	podsOptions
	grace   time.Duration
	force   []string
	maxPods int
}

func newCmdPodsStop(d *Deps) *cobra.Command {
	o := &podsStopOptions{}
	cmd := &cobra.Command{
		Use:   "stop [POD-NAME-GLOB]",
		Short: "Stop the selected pods on every node through containerd's CRI API",
		Long: `Stop the selected pods on every node: each running container with --grace
(SIGTERM, then SIGKILL), then the pod's sandbox, through containerd's CRI API
so that its CRI store stays consistent. The plan (pods per node) is shown and
confirmed first, and every node's change is journaled.

Kubelet starts stopped pods again: at once, then with a back-off of up to 5
minutes. A stop buys seconds to minutes; "breakglass pods hold" keeps them
stopped. Undo of a stop has nothing to put back.

Refused (exit 4): a selection that matches nothing; control-plane and
cluster-critical pods (static pods and control-plane pods in kube-system,
etcd, cluster DNS, kube-proxy, CNI agents, priority class
system-*-critical) unless --force names them; more than --max-pods pods
unless confirmed at a prompt.

` + podsExitCodes,
		Example: `  breakglass pods stop --daemonset telemetry/telemetry-agent --dry-run
  breakglass pods stop -n telemetry -l app=telemetry-agent --yes
  breakglass pods stop 'coredns-*' -n kube-system --force 'kube-system/coredns-*'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.sel.Name = args[0]
			}
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if o.grace < 0 {
				return usagef("--grace %s: must not be negative", o.grace)
			}
			return runPodsStop(cmd.Context(), d, o)
		},
	}
	addPodSelectFlags(cmd, &o.podsOptions)
	addStopFlags(cmd, o)
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func addStopFlags(cmd *cobra.Command, o *podsStopOptions) {
	cmd.Flags().DurationVar(&o.grace, "grace", 10*time.Second, "how long each container gets between SIGTERM and SIGKILL")
	cmd.Flags().StringArrayVar(&o.force, "force", nil, "stop these protected pods too (`NAMESPACE/NAME`, globs allowed; repeatable)")
	cmd.Flags().IntVar(&o.maxPods, "max-pods", 100, "refuse more pods than this unless confirmed at a prompt (0: no bound)")
}

func (o *podsStopOptions) apply(s *steps.Selection, d *Deps) {
	s.Force = o.force
	s.MaxPods = o.maxPods
	s.Grace = o.grace
	s.Interactive = !d.Global.Yes && d.InIsTTY
}

func runPodsStop(ctx context.Context, d *Deps, o *podsStopOptions) error {
	r, err := newPodsRun(ctx, d, &o.podsOptions, false)
	if err != nil {
		return err
	}
	defer r.Close()
	s, err := r.selection(ctx, &o.podsOptions)
	if err != nil {
		return err
	}
	o.apply(s, d)
	e, stream := r.engine(ctx)
	defer stream.Close()
	_, err = e.Run(ctx, steps.PlanStop(r.kind, s))
	return err
}

// --- pods hold

type podsHoldOptions struct {
	podsStopOptions
	weak  bool
	pause string
}

func newCmdPodsHold(d *Deps) *cobra.Command {
	o := &podsHoldOptions{}
	cmd := &cobra.Command{
		Use:   "hold [POD-NAME-GLOB]",
		Short: "Stop the selected pods and keep them stopped until the hold is lifted",
		Long: `Stop the selected pods and keep them stopped, on two layers:

- the owner, in etcd: a DaemonSet is paused (its pod template gets a node
  selector no node matches), a Deployment or StatefulSet scaled to 0, so that
  the controllers remove the pods for good once the apiserver is back;
- the image, on each node: the pods' image names are pointed at the node's
  pause image in containerd (the original is kept, pinned, and restored by
  digest), so that when kubelet starts a stopped container again it runs the
  pause image, not the offender. This needs the pod's imagePullPolicy (read
  from etcd) to be IfNotPresent or Never: with Always kubelet pulls the tag
  again. A name other, unselected pods on the node use is refused.

Then the pods are stopped, as "pods stop" does. Where the image layer cannot
apply, the hold is refused unless --weak accepts the owner layer alone.
"breakglass pods hold list" shows the holds on the nodes; "breakglass pods
hold lift CHANGE-ID" (or "breakglass undo CHANGE-ID") ends one.

` + podsExitCodes,
		Example: `  breakglass pods hold --daemonset telemetry/telemetry-agent --dry-run
  breakglass pods hold --daemonset telemetry/telemetry-agent --yes
  breakglass pods hold list
  breakglass pods hold lift 20261128T030405-ab12cd --batch 10`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.sel.Name = args[0]
			}
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			return runPodsHold(cmd.Context(), d, o)
		},
	}
	addPodSelectFlags(cmd, &o.podsOptions)
	addStopFlags(cmd, &o.podsStopOptions)
	cmd.Flags().BoolVar(&o.weak, "weak", false, "accept a hold without the image layer where it cannot apply (pull policy Always, images by digest)")
	cmd.Flags().StringVar(&o.pause, "pause-image", "", "the image held names point at (default: the sandbox image of each node's containerd)")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	cmd.AddCommand(newCmdPodsHoldList(d), newCmdPodsHoldLift(d))
	return cmd
}

func runPodsHold(ctx context.Context, d *Deps, o *podsHoldOptions) error {
	r, err := newPodsRun(ctx, d, &o.podsOptions, true)
	if err != nil {
		return err
	}
	defer r.Close()
	s, err := r.selection(ctx, &o.podsOptions)
	if err != nil {
		return err
	}
	o.apply(s, d)
	e, stream := r.engine(ctx)
	defer stream.Close()
	_, err = e.Run(ctx, steps.PlanHold(r.kind, r.kind.Etcd, s, steps.HoldOptions{Weak: o.weak, PauseImage: o.pause}))
	return err
}

type holdWire struct {
	Type     string    `json:"type"` // hold
	Node     string    `json:"node"`
	Image    string    `json:"image"`
	Original string    `json:"original"`
	Keep     string    `json:"keep"`
	Change   string    `json:"change"`
	Since    time.Time `json:"since"`
	// Pods are the pods on the node that run the image's name.
	Pods []string `json:"pods"`
}

func newCmdPodsHoldList(d *Deps) *cobra.Command {
	o := &podsOptions{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show every hold on the nodes: image, original digest, change, age, pods",
		Long: `Show the holds found on each node's containerd (image names breakglass pointed
at the pause image), with the change that made each, its age, the original
digest it will be restored to, and the pods on the node that use the name.

` + podsExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			return runPodsHoldList(cmd.Context(), d, o)
		},
	}
	addNodeSSHFlags(cmd, &o.nodes, &o.ssh)
	addViaFlag(cmd, &o.via)
	return cmd
}

func runPodsHoldList(ctx context.Context, d *Deps, o *podsOptions) error {
	r, err := newPodsRun(ctx, d, o, false)
	if err != nil {
		return err
	}
	defer r.Close()
	type nodeHolds struct {
		holds []pods.Hold
		pods  []pods.Pod
	}
	results := fanout.RunOf(ctx, r.targets, fanout.OptionsOf[nodeHolds]{Concurrency: r.kind.Options.Concurrency, Timeout: r.kind.Options.Timeout, Retries: r.kind.Options.Retries},
		func(ctx context.Context, t nodeops.Target) (nodeHolds, error) {
			var out nodeHolds
			err := r.kind.Use(ctx, t, func(n *pods.Node, _ string) error {
				var err error
				if out.holds, err = n.Holds(ctx); err != nil {
					return err
				}
				out.pods, err = n.List(ctx)
				return err
			})
			return out, err
		})
	p := newPrinter(d.Out, d.Global.Output)
	var rows [][]string
	reads := &nodeReads{what: "pods hold list", total: len(results)}
	for _, res := range results {
		if res.Err != nil {
			reads.fail(d.ErrOut, res.Target.Name, res.Status, res.Err)
			continue
		}
		for _, h := range res.Output.holds {
			var users []string
			for _, pod := range res.Output.pods {
				// The name now resolves to the pause image, the keep
				// name to the original: a pod runs either.
				for _, c := range pod.Containers {
					if slices.Contains(c.Tags, h.Image) || slices.Contains(c.Tags, h.Keep) {
						users = append(users, pod.Ref()+"("+c.State+")")
						break
					}
				}
			}
			if !p.Text() {
				p.Object(holdWire{Type: "hold", Node: h.Node, Image: h.Image, Original: h.Original.Digest.String(), Keep: h.Keep,
					Change: h.Change, Since: h.Since.UTC(), Pods: users})
				continue
			}
			rows = append(rows, []string{h.Node, h.Image, h.Change, age(d.Now().Sub(h.Since)), short12(h.Original.Digest.String()), strings.Join(users, ",")})
		}
	}
	if p.Text() {
		if len(rows) == 0 && reads.failed == 0 {
			fmt.Fprintln(d.ErrOut, "no holds on the selected nodes")
		} else if err := p.Table([]string{"NODE", "IMAGE", "CHANGE", "AGE", "ORIGINAL", "PODS"}, rows); err != nil {
			return err
		}
	}
	return reads.err(ctx)
}

func short12(s string) string {
	s = strings.TrimPrefix(s, "sha256:")
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

type podsLiftOptions struct {
	podsOptions
	batch int
	wait  time.Duration
}

func newCmdPodsHoldLift(d *Deps) *cobra.Command {
	o := &podsLiftOptions{}
	cmd := &cobra.Command{
		Use:   "lift CHANGE-ID",
		Short: "End a hold: images back by digest, pods started again in batches, owners restored",
		Long: `End the hold CHANGE-ID (from "pods hold", "pods hold list" or the journal):
on each node the held image names point at their original images again (the
exact digest the hold recorded), and the pods that run the pause image in
their place are stopped so that kubelet starts them again with the real image,
--batch nodes at a time: each batch waits (up to --wait per node) until its
pods run their images again before the next starts, so the offender does not
come back everywhere at once. Then the owners are restored in etcd (the
DaemonSet resumed, the replicas put back).

` + podsExitCodes,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if o.batch < 0 {
				return usagef("--batch %d: must not be negative", o.batch)
			}
			return runPodsLift(cmd.Context(), d, o, args[0])
		},
	}
	addNodeSSHFlags(cmd, &o.nodes, &o.ssh)
	addViaFlag(cmd, &o.via)
	cmd.Flags().IntVar(&o.batch, "batch", 0, "lift this many nodes at a time, each batch after the last one's pods run again (0: all at once)")
	cmd.Flags().DurationVar(&o.wait, "wait", 2*time.Minute, "how long each node's pods get to run their images again")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func runPodsLift(ctx context.Context, d *Deps, o *podsLiftOptions, id string) error {
	// No journal yet is an empty one here: a hold made from another
	// machine is lifted from the nodes' own records (see docs/pods.md).
	var records []journal.Record
	if _, err := os.Stat(d.journalPath()); err == nil {
		if records, err = journal.Read(d.journalPath()); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("journal: %w", err)
	}
	r, err := newPodsRun(ctx, d, &o.podsOptions, false)
	if err != nil {
		return err
	}
	defer r.Close()
	e, stream := r.engine(ctx)
	defer stream.Close()
	_, err = e.Run(ctx, steps.PlanLift(r.kind, r.kind.Etcd, r.store, r.targets, records, id, steps.LiftOptions{Batch: o.batch, Wait: o.wait}))
	return err
}

func init() { register(newCmdPods) }
