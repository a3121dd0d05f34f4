package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/selector"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() {
	register(func(d *Deps) *cobra.Command { return newCmdKubelet(d) })
	register(func(d *Deps) *cobra.Command { return newCmdControllerManager(d) })
}

const kubeletExitCodes = `Exit codes: 0 ok, 1 error, 2 usage, 3 some nodes failed or could not be
read (the others went ahead; a failed phase stops the later ones), 4
refused (control-plane nodes without --force, the controller-manager not
found or a kubelet down for restore, a file changed since it was planned,
not confirmed), 130 cancelled.`

// serviceOptions are the flags every kubelet and controller-manager
// command has.
type serviceOptions struct {
	nodes      nodeFlags
	ssh        sshFlags
	cpNodes    []string
	cmManifest string
	// cmObject is --controller-manager-object: a hosted
	// controller-manager (else the inventory's controllerManager.deployment).
	cmObject  string
	backupDir string
	wait      time.Duration
	force     bool
}

// serviceRun is the nodes and the service kind of one command.
type serviceRun struct {
	kind      *steps.Service
	cps, all  []nodeops.Target
	close     func() error
	leaseNote string
}

func newServiceRun(ctx context.Context, d *Deps, o *serviceOptions) (*serviceRun, error) {
	if o.wait <= 0 {
		return nil, usagef("--wait %s: must be more than 0", o.wait)
	}
	all, err := resolveNodes(ctx, d, &nodeFlags{sel: selector.Options{NodesFile: o.nodes.sel.NodesFile}, source: o.nodes.source, flags: o.nodes.flags})
	if err != nil {
		return nil, err
	}
	cps, err := resolveNodes(ctx, d, &nodeFlags{sel: selector.Options{Nodes: o.cpNodes, NodesFile: o.nodes.sel.NodesFile}, source: o.nodes.source, flags: o.nodes.flags})
	if err != nil {
		return nil, err
	}
	env, closeRunner, err := d.nodeEnv(&o.ssh)
	if err != nil {
		return nil, err
	}
	sr := &serviceRun{cps: cps, all: all, close: closeRunner}
	hosted, err := env.HostedControllerManager("--controller-manager-object", o.cmObject)
	if err != nil {
		closeRunner()
		return nil, usagef("%v", err)
	}
	if hosted != nil {
		// Its replicas are written in etcd: no etcd, no change.
		st, err := d.Etcd(ctx)
		if err != nil {
			closeRunner()
			return nil, fmt.Errorf("the hosted controller-manager %s is scaled through etcd: %w", hosted.Ref(), err)
		}
		env.Store = st
	} else if etcdConfigured(ctx, d) {
		if st, err := d.Etcd(ctx); err == nil {
			env.Store = st
		} else {
			sr.leaseNote = fmt.Sprintf("kubelets' leases are not checked (etcd: %v): a started kubelet counts as back once it runs", err)
		}
	} else {
		sr.leaseNote = "no etcd configured: kubelets' leases are not checked, a started kubelet counts as back once it runs (give etcd flags or an inventory with etcd to wait for the lease)"
	}
	sr.kind = env.Service(all, steps.ServiceOptions{ControllerManagerManifest: o.cmManifest, BackupDir: o.backupDir, Wait: o.wait,
		HostedControllerManager: hosted})
	if err := sr.kind.Check(); err != nil {
		closeRunner()
		return nil, usagef("%v", err)
	}
	return sr, nil
}

func (r *serviceRun) engine(d *Deps) (*change.Engine, *change.Stream) {
	e, stream := d.kindEngine(r.kind, nil)
	if r.kind.Etcd != nil {
		// A hosted controller-manager's replicas, and their undo.
		e.Register(r.kind.Etcd)
	}
	return e, stream
}

// withNote adds the lease note to a plan.
func (r *serviceRun) withNote(p change.Planner) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		plan, err := p(ctx, id)
		if err == nil && r.leaseNote != "" && len(plan.Items) > 0 {
			plan.Notes = append(plan.Notes, r.leaseNote)
		}
		return plan, err
	}
}

// --- kubelet

func newCmdKubelet(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kubelet",
		Short: "Stop and start kubelets over SSH, with the controller-manager moved aside first",
		Long: `Take load off the API server by taking part of the cluster out: every kubelet
stopped is one client less (its watches, its status updates, its lease).

kubelet stop moves the controller-manager aside first, on every
control-plane node, so that the nodes whose kubelet stops are not marked
NotReady and their pods are not evicted; kubelet start brings the kubelets
back, and "controller-manager restore" the controller-manager once every
kubelet runs. "breakglass undo ID" of a stop does both, in that order.

How a component is stopped is detected on each node: a systemd unit
(systemctl stop kubelet), or a file a supervisor runs it from (a static-pod
manifest kubelet runs, such as kube-controller-manager.yaml, or the lab's
spec file), which is moved out of its directory to the backup directory and
put back later. Whether it runs is read from /proc on the node.

` + kubeletExitCodes,
	}
	cmd.AddCommand(newCmdKubeletStop(d), newCmdKubeletStart(d))
	return cmd
}

type kubeletStopOptions struct {
	serviceOptions
	fraction float64
}

func newCmdKubeletStop(d *Deps) *cobra.Command {
	o := &kubeletStopOptions{}
	cmd := &cobra.Command{
		Use:   "stop --nodes SEL [--fraction F]",
		Short: "Stop the kubelet on the selected nodes, after moving the controller-manager aside",
		Long: `Stop the kubelet on the selected nodes (--nodes; with --fraction F, only the
first F of them by name, at least one). Refused for control-plane nodes
without --force.

First, on every control-plane node (--control-plane, default
role=control-plane), the controller-manager is stopped: its file moved out
of its directory (kubelet removes a static pod whose manifest is gone), or
its systemd unit stopped, and waited for until no kube-controller-manager
process runs there. If it cannot be found or stopped, nothing is changed
(refused) unless --force. Then every selected kubelet is stopped at once
and waited for. Pods keep running: their containers are containerd's.

--dry-run prints the plan. Everything is journaled; "breakglass undo ID"
starts the kubelets (waiting until each renewed its lease, read from etcd
where etcd is configured) and then puts the controller-manager back.

` + kubeletExitCodes,
		Example: `  breakglass kubelet stop --nodes role=worker --fraction 0.5 --dry-run
  breakglass kubelet stop --nodes 'pool-b-*' --yes
  breakglass undo 20250301T101500-3fa2c1 --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if len(o.nodes.sel.Nodes) == 0 && o.nodes.sel.NodesFile == "" {
				return usagef("--nodes is required: say which nodes' kubelets to stop (role=worker, names, globs)")
			}
			if o.fraction <= 0 || o.fraction > 1 {
				return usagef("--fraction %g: want more than 0 and at most 1", o.fraction)
			}
			return runKubeletStop(cmd.Context(), d, o)
		},
	}
	addServiceFlagsD(cmd, d, &o.serviceOptions)
	cmd.Flags().Float64Var(&o.fraction, "fraction", 1, "stop only this fraction of the selected nodes (the first by name, rounded down, at least one)")
	addHostedCMFlag(cmd, &o.serviceOptions, "scaled to 0 in etcd before the kubelets stop")
	cmd.Flags().BoolVar(&o.force, "force", false, "stop control-plane nodes' kubelets too, and go ahead when the controller-manager cannot be moved aside")
	return cmd
}

// addServiceFlagsD adds the service flags with the command's Deps.
func addServiceFlagsD(cmd *cobra.Command, d *Deps, o *serviceOptions) {
	addNodeSSHFlags(cmd, &o.nodes, &o.ssh)
	f := cmd.Flags()
	f.StringArrayVar(&o.cpNodes, "control-plane", []string{steps.ShedNodes}, "the control-plane nodes the controller-manager runs on (names, globs, role=ROLE)")
	f.StringVar(&o.cmManifest, "controller-manager-manifest", "", "the controller-manager's file on the control-plane nodes (default: kubeadm's /etc/kubernetes/manifests/kube-controller-manager.yaml where it exists, else its systemd unit)")
	f.StringVar(&o.backupDir, "backup-dir", "", "where the nodes keep files moved aside, one directory per change (default /etc/kubernetes/breakglass-backup)")
	f.DurationVar(&o.wait, "wait", 2*time.Minute, "how long one node may take to stop or start")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
}

// addHostedCMFlag adds --controller-manager-object.
func addHostedCMFlag(cmd *cobra.Command, o *serviceOptions, what string) {
	cmd.Flags().StringVar(&o.cmObject, "controller-manager-object", "", "a hosted control plane's controller-manager, `[deployment|statefulset/]NAMESPACE/NAME` in the hosting cluster's etcd, "+what+" (default: the inventory's controllerManager.deployment)")
}

func runKubeletStop(ctx context.Context, d *Deps, o *kubeletStopOptions) error {
	targets, err := resolveNodes(ctx, d, &o.nodes)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return usagef("--nodes %v selects no node", o.nodes.sel.Nodes)
	}
	r, err := newServiceRun(ctx, d, &o.serviceOptions)
	if err != nil {
		return err
	}
	defer r.close()
	e, stream := r.engine(d)
	defer stream.Close()
	_, err = e.Run(ctx, r.withNote(steps.PlanKubeletStop(r.kind, r.cps, targets, o.fraction, o.force)))
	return err
}

func newCmdKubeletStart(d *Deps) *cobra.Command {
	o := &serviceOptions{}
	cmd := &cobra.Command{
		Use:   "start [--nodes SEL]",
		Short: "Start the kubelet again where it does not run",
		Long: `Start the kubelet on every selected node (default: all) where it does not
run: its systemd unit started, or its file put back from where "kubelet
stop" moved it (the journal says where; without the journal, the newest
copy in the backup directory on the node). Each node is waited for until
its kubelet runs and, where etcd is configured, renewed its node's lease
(read from etcd, not through the API server).

The controller-manager is left aside: "breakglass controller-manager
restore" puts it back once every kubelet runs.

` + kubeletExitCodes,
		Example: `  breakglass kubelet start --dry-run
  breakglass kubelet start --nodes worker-1,worker-2 --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			return runKubeletStart(cmd.Context(), d, o)
		},
	}
	addServiceFlagsD(cmd, d, o)
	return cmd
}

func runKubeletStart(ctx context.Context, d *Deps, o *serviceOptions) error {
	return runService(ctx, d, o, func(r *serviceRun, selected []nodeops.Target, recs []journal.Record) change.Planner {
		return r.withNote(steps.PlanKubeletStart(r.kind, selected, recs))
	})
}

// runService runs the plan that plan makes from the nodes --nodes selects
// and the journal (a journal not yet written is empty).
func runService(ctx context.Context, d *Deps, o *serviceOptions, plan func(r *serviceRun, selected []nodeops.Target, recs []journal.Record) change.Planner) error {
	selected, err := resolveNodes(ctx, d, &o.nodes)
	if err != nil {
		return err
	}
	recs, err := readJournalIfAny(d)
	if err != nil {
		return err
	}
	r, err := newServiceRun(ctx, d, o)
	if err != nil {
		return err
	}
	defer r.close()
	e, stream := r.engine(d)
	defer stream.Close()
	_, err = e.Run(ctx, plan(r, selected, recs))
	return err
}

// readJournalIfAny reads the journal; a journal not yet written is empty.
func readJournalIfAny(d *Deps) ([]journal.Record, error) {
	if _, err := os.Stat(d.journalPath()); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return journal.Read(d.journalPath())
}

// --- controller-manager

func newCmdControllerManager(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "controller-manager",
		Short: "Put the controller-manager back after kubelet stop moved it aside",
		Long: `The controller-manager is moved aside by "breakglass kubelet stop" (so that
nodes whose kubelet is stopped are not evicted). restore puts it back.

` + kubeletExitCodes,
	}
	cmd.AddCommand(newCmdControllerManagerRestore(d))
	return cmd
}

func newCmdControllerManagerRestore(d *Deps) *cobra.Command {
	o := &serviceOptions{}
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Put the controller-manager back on the control-plane nodes, once every kubelet runs",
		Long: `Put the controller-manager back on every control-plane node (--control-plane,
default role=control-plane) where it does not run: its file back in its
directory from the copy "kubelet stop" made (the journal's, else the newest
on the node), or its systemd unit started; each node is waited for until a
kube-controller-manager process runs there.

Refused, unless --force, while the kubelet does not run on a node of
--nodes (default: all nodes): the controller-manager would mark that node
NotReady and evict its pods. Start them first (breakglass kubelet start).

` + kubeletExitCodes,
		Example: `  breakglass controller-manager restore --dry-run
  breakglass controller-manager restore --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			return runControllerManagerRestore(cmd.Context(), d, o)
		},
	}
	addServiceFlagsD(cmd, d, o)
	cmd.Flags().BoolVar(&o.force, "force", false, "put it back even while some kubelets do not run (their nodes will be evicted)")
	addHostedCMFlag(cmd, o, "its replicas put back from the journal's kubelet stop")
	return cmd
}

func runControllerManagerRestore(ctx context.Context, d *Deps, o *serviceOptions) error {
	return runService(ctx, d, o, func(r *serviceRun, workers []nodeops.Target, recs []journal.Record) change.Planner {
		return steps.PlanControllerManagerRestore(r.kind, r.cps, workers, recs, o.force)
	})
}
