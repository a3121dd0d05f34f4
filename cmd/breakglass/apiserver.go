package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/apiprobe"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdAPIServer(d, nil) }) }

const apiserverExitCodes = `Exit codes: 0 ok, 1 error, 2 usage, 3 a node failed (rolled back; the nodes
before it keep the new manifest, the nodes after it were not touched) or
could not be read, 4 refused (a manifest changed since it was planned, not
confirmed), 130 cancelled.`

func newCmdAPIServer(d *Deps, runF func(*apiserverTuneOptions) error) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apiserver",
		Short: "Tune the API server of a kubeadm control plane on its nodes, or scale a hosted one through etcd",
		Long: `Work on the API server of a kubeadm (static-pod) control plane from its nodes,
over SSH, without the API: its manifest (` + manifest.DefaultPath + `, or the
inventory's apiserver.manifest) is read as a Pod, edited, backed up outside
the manifests directory and written atomically, one node at a time, each
node waited for until its kubelet restarted the API server and it answers
/livez and /readyz on the node.

A hosted control plane's API server (a Deployment or StatefulSet in a
hosting cluster) is scaled through the hosting cluster's etcd with
"apiserver scale", which names the operator that owns it first.

` + apiserverExitCodes,
	}
	cmd.AddCommand(newCmdAPIServerTune(d, runF), newCmdAPIServerStatus(d), newCmdAPIServerAdd(d), newCmdAPIServerRemove(d), newCmdAPIServerScale(d, nil))
	return cmd
}

type apiserverOptions struct {
	nodes    nodeFlags
	ssh      sshFlags
	manifest string
}

func addAPIServerFlags(cmd *cobra.Command, o *apiserverOptions) {
	addNodeSSHFlags(cmd, &o.nodes, &o.ssh)
	cmd.Flags().Lookup("nodes").Usage = "the control-plane nodes (default role=control-plane): names, globs, role=ROLE, label=SELECTOR"
	cmd.Flags().StringVar(&o.manifest, "manifest", "", "the API server's manifest on the nodes (default: the inventory's apiserver.manifest, "+manifest.DefaultPath+")")
}

// manifestPath is --manifest, else the inventory's.
func (o *apiserverOptions) manifestPath(d *Deps) string {
	if o.manifest != "" {
		return o.manifest
	}
	if inv, err := d.Inventory(); err == nil && inv.APIServer.Manifest != "" {
		return inv.APIServer.Manifest
	}
	return manifest.DefaultPath
}

type apiserverTuneOptions struct {
	apiserverOptions
	edits     manifest.Edits
	flags     []string
	cpu, mem  string
	backupDir string
	wait      time.Duration
	poll      time.Duration
	force     bool
}

func newCmdAPIServerTune(d *Deps, runF func(*apiserverTuneOptions) error) *cobra.Command {
	o := &apiserverTuneOptions{}
	var inflight, mutating int
	var goaway float64
	cmd := &cobra.Command{
		Use:   "tune [--max-requests-inflight N] [--max-mutating-requests-inflight N] [--goaway-chance F] [--cpu Q] [--memory Q] [--flag NAME=VALUE]...",
		Short: "Change the API server's flags or resources in its static-pod manifest, one node at a time",
		Long: `Edit the kube-apiserver static-pod manifest on every selected control-plane node
(default role=control-plane). The manifest is parsed as a Pod with the
Kubernetes types (a field they do not know is refused rather than lost),
the flags are replaced or added in the kube-apiserver container's command
line, --cpu and --memory set its requests (and its limits, where it has
any), and the plan shows the unified diff per node. Confirm exactly that
plan (or pass --yes); --dry-run prints it and changes nothing.

Then, one node at a time: the manifest is checked to still have the bytes
the plan was made from (sha256; refused otherwise), copied to
<backup-dir>/<change-id>/ (default /etc/kubernetes/breakglass-backup,
outside the manifests directory: kubelet starts every file in it that is
not a dotfile), written to a dotfile next to it, synced and renamed over
it; the directory must hold no name it did not hold before. breakglass
waits (--wait) until kubelet has restarted the API server from the new
manifest (a new kube-apiserver process on the node, with the manifest's
command line) and it answers /livez and /readyz on the node with the
node's admin kubeconfig. A node that does not come back is rolled back
from its backup and the rollout stops: the next node is never started.
Two API servers are never restarted at once.

A node whose API server does not answer /livez and /readyz when the tune
is planned, or is starved of CPU (its threads that had work all waited for
a CPU 50% or more of a second, from its cgroup's cpu.pressure), is refused
(exit 4), nothing changed: saturated by its load, it would be restarted
into that same load, where it may never come back (a kube-apiserver exits
when a post-start hook times out, and kubelet starts it into the load
again). Take the load off first (shed flowschema, pods hold), or pass
--force when it is down for another reason the tune fixes.

Everything is journaled; "breakglass undo CHANGE-ID" puts every node's
manifest back the same way, one node at a time, also for a rollout cut
short by a crash.

` + apiserverExitCodes,
		Example: `  breakglass apiserver tune --max-requests-inflight 800 --max-mutating-requests-inflight 400 --dry-run
  breakglass apiserver tune --goaway-chance 0.001 --nodes cp-1
  breakglass apiserver tune --cpu 2 --memory 4Gi --flag audit-log-maxage=7 --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("max-requests-inflight") {
				o.edits.MaxRequestsInflight = &inflight
			}
			if f.Changed("max-mutating-requests-inflight") {
				o.edits.MaxMutatingRequestsInflight = &mutating
			}
			if f.Changed("goaway-chance") {
				o.edits.GoawayChance = &goaway
			}
			for _, q := range []struct {
				flag, v string
				into    **resource.Quantity
			}{{"cpu", o.cpu, &o.edits.CPU}, {"memory", o.mem, &o.edits.Memory}} {
				if q.v == "" {
					continue
				}
				v, err := resource.ParseQuantity(q.v)
				if err != nil {
					return usagef("--%s %q: %v", q.flag, q.v, err)
				}
				*q.into = &v
			}
			for _, s := range o.flags {
				fl, err := manifest.ParseFlag(s)
				if err != nil {
					return usagef("--flag %v", err)
				}
				o.edits.Flags = append(o.edits.Flags, fl)
			}
			if err := o.edits.Validate(); err != nil {
				if o.edits.Flags == nil && o.edits.CPU == nil && o.edits.Memory == nil && !f.Changed("max-requests-inflight") &&
					!f.Changed("max-mutating-requests-inflight") && !f.Changed("goaway-chance") {
					return usagef("nothing to change: give --max-requests-inflight, --max-mutating-requests-inflight, --goaway-chance, --cpu, --memory or --flag")
				}
				return usagef("%v", err)
			}
			if o.wait <= 0 {
				return usagef("--wait %s: must be more than 0", o.wait)
			}
			if runF != nil {
				return runF(o)
			}
			return runAPIServerTune(cmd.Context(), d, o)
		},
	}
	addAPIServerFlags(cmd, &o.apiserverOptions)
	f := cmd.Flags()
	f.IntVar(&inflight, "max-requests-inflight", 0, "the API server's --max-requests-inflight (`N`; 0 means no limit)")
	f.IntVar(&mutating, "max-mutating-requests-inflight", 0, "the API server's --max-mutating-requests-inflight (`N`; 0 means no limit)")
	f.Float64Var(&goaway, "goaway-chance", 0, "the API server's --goaway-chance (`F`, 0 to 0.02)")
	f.StringVar(&o.cpu, "cpu", "", "the kube-apiserver container's CPU request (`Q`, a quantity such as 2 or 1500m; its limit too, if it has one)")
	f.StringVar(&o.mem, "memory", "", "the kube-apiserver container's memory request (`Q`, such as 4Gi; its limit too, if it has one)")
	f.StringArrayVar(&o.flags, "flag", nil, "set any API server flag (`NAME=VALUE`, without the --; replaces the flag if it is there; repeatable)")
	f.StringVar(&o.backupDir, "backup-dir", "", "where the nodes keep the manifests replaced, one directory per change (default: breakglass-backup next to the manifests directory)")
	f.DurationVar(&o.wait, "wait", 3*time.Minute, "how long one node's API server may take to restart and answer /livez and /readyz before it is rolled back")
	f.DurationVar(&o.poll, "poll", 2*time.Second, "how often a restarting node is looked at")
	f.BoolVar(&o.force, "force", false, "restart an API server that does not answer /livez and /readyz now, or is starved of CPU, too (refused otherwise: saturated, it may not come back)")
	_ = f.MarkHidden("poll")
	addJournalFlag(cmd, d)
	return cmd
}

// manifestRun is the nodes and the manifest kind of an apiserver command.
type manifestRun struct {
	kind    *steps.Manifest
	targets []nodeops.Target
	close   func() error
}

func newManifestRun(ctx context.Context, d *Deps, o *apiserverOptions, backupDir string) (*manifestRun, error) {
	if len(o.nodes.sel.Nodes) == 0 && o.nodes.sel.NodesFile == "" {
		o.nodes.sel.Nodes = []string{steps.ShedNodes}
	}
	targets, err := resolveNodes(ctx, d, &o.nodes)
	if err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, usagef("no nodes selected\nhint: the inventory marks control-plane nodes with roles: [control-plane]; or pass --nodes")
	}
	env, closeRunner, err := d.nodeEnv(&o.ssh)
	if err != nil {
		return nil, err
	}
	k := env.Manifest(targets, o.manifestPath(d), backupDir)
	if err := k.Check(); err != nil {
		closeRunner()
		return nil, usagef("%v", err)
	}
	return &manifestRun{kind: k, targets: targets, close: closeRunner}, nil
}

// engine returns an engine with only the manifest kind, printing its
// events; in text, each node's start is said on stderr, for the wait
// that follows it.
func (r *manifestRun) engine(d *Deps) (*change.Engine, *change.Stream) {
	return d.kindEngine(r.kind, func(change.ItemStarted) string {
		return fmt.Sprintf("writing the manifest; waiting up to %s for its API server to restart and answer /livez and /readyz", r.kind.Wait)
	})
}

func runAPIServerTune(ctx context.Context, d *Deps, o *apiserverTuneOptions) error {
	r, err := newManifestRun(ctx, d, &o.apiserverOptions, o.backupDir)
	if err != nil {
		return err
	}
	defer r.close()
	r.kind.Wait, r.kind.Poll, r.kind.Force = o.wait, o.poll, o.force
	e, stream := r.engine(d)
	defer stream.Close()
	_, err = e.Run(ctx, steps.PlanTune(r.kind, r.targets, o.edits))
	return err
}

// --- apiserver status

// apiserverStatusWire is one node's line of apiserver status -o json.
type apiserverStatusWire struct {
	Type     string            `json:"type"` // apiserverStatus
	Node     string            `json:"node"`
	Manifest string            `json:"manifest"`
	Hash     string            `json:"sha256,omitempty"`
	Flags    map[string]string `json:"flags"`
	CPU      string            `json:"cpu,omitempty"`
	Memory   string            `json:"memory,omitempty"`
	Livez    int               `json:"livez"`
	Readyz   int               `json:"readyz"`
	Process  string            `json:"process,omitempty"`
	// Seats sums the priority levels' nominal concurrency limits, read
	// from the node's /metrics: what --max-requests-inflight and
	// --max-mutating-requests-inflight add up to, as the running API
	// server applies them (0 when not read).
	Seats   float64 `json:"seats,omitempty"`
	Problem string  `json:"problem,omitempty"`
}

// statusFlags are the flags apiserver status shows.
var statusFlags = []string{"max-requests-inflight", "max-mutating-requests-inflight", "goaway-chance"}

func newCmdAPIServerStatus(d *Deps) *cobra.Command {
	o := &apiserverOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each control-plane node's API server: its manifest's flags and resources, and whether it answers",
		Long: `Read the API server manifest on every selected control-plane node (default
role=control-plane) and show its --max-requests-inflight,
--max-mutating-requests-inflight and --goaway-chance (or "-" where the
flag is not set and the API server's default applies), its CPU and memory
requests, whether it answers /livez and /readyz on the node, the sum of
its priority levels' nominal concurrency seats from its /metrics (what the
two inflight limits add up to in the running API server), and the
kube-apiserver process running there (pid@start time).

` + apiserverExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			return runAPIServerStatus(cmd.Context(), d, o)
		},
	}
	addAPIServerFlags(cmd, o)
	return cmd
}

func runAPIServerStatus(ctx context.Context, d *Deps, o *apiserverOptions) error {
	r, err := newManifestRun(ctx, d, o, "")
	if err != nil {
		return err
	}
	defer r.close()
	k := r.kind
	results := fanout.RunOf(ctx, r.targets, fanout.OptionsOf[apiserverStatusWire]{Concurrency: d.Global.Concurrency, Timeout: d.Global.Timeout},
		func(ctx context.Context, t nodeops.Target) (apiserverStatusWire, error) {
			w := apiserverStatusWire{Type: "apiserverStatus", Node: t.Name, Manifest: k.Path, Flags: map[string]string{}}
			f, err := manifest.Read(ctx, k.Runner, t, k.Path)
			if err != nil {
				return w, err
			}
			w.Hash = f.Hash
			if pod, err := manifest.Parse(f.Bytes); err != nil {
				w.Problem = err.Error()
			} else {
				for _, fl := range statusFlags {
					if v, ok := manifest.FlagValue(pod, fl); ok {
						w.Flags[fl] = v
					}
				}
				if c, err := manifest.Container(pod); err == nil {
					if q, ok := c.Resources.Requests["cpu"]; ok {
						w.CPU = q.String()
					}
					if q, ok := c.Resources.Requests["memory"]; ok {
						w.Memory = q.String()
					}
				}
			}
			if l, err := k.Watch.Live(ctx, t); err == nil {
				w.Livez, w.Readyz = l.Livez, l.Readyz
				if l.Detail != "" && w.Problem == "" {
					w.Problem = l.Detail
				}
			}
			if in, err := k.Watch.Instance(ctx, t); err == nil {
				w.Process = in.ID
			}
			if nw, ok := k.Watch.(*steps.NodeAPIServer); ok && w.Readyz == 200 {
				if out, err := k.Runner.Run(ctx, t, nodeops.Command{Line: apiprobe.Script(nw.Probe)}); err == nil {
					if h, err := apiprobe.Parse(out.Stdout); err == nil {
						for _, l := range h.Levels {
							w.Seats += l.Seats
						}
					}
				}
			}
			return w, nil
		})
	p := newPrinter(d.Out, d.Global.Output)
	reads := &nodeReads{what: "apiserver status", total: len(results)}
	var rows [][]string
	for _, res := range results {
		if res.Err != nil {
			reads.fail(d.ErrOut, res.Target.Name, res.Status, res.Err)
			continue
		}
		w := res.Output
		if !p.Text() {
			if err := p.Object(w); err != nil {
				return err
			}
			continue
		}
		rows = append(rows, []string{w.Node, dash(w.Flags["max-requests-inflight"]), dash(w.Flags["max-mutating-requests-inflight"]),
			dash(w.Flags["goaway-chance"]), dash(w.CPU), dash(w.Memory), code(w.Livez), code(w.Readyz), seats(w.Seats), dash(w.Process), dash(w.Problem)})
	}
	if p.Text() {
		if err := p.Table([]string{"NODE", "INFLIGHT", "MUTATING", "GOAWAY", "CPU", "MEMORY", "LIVEZ", "READYZ", "SEATS", "PROCESS", "PROBLEM"}, rows); err != nil {
			return err
		}
	}
	return reads.err(ctx)
}

func seats(f float64) string {
	if f == 0 {
		return "-"
	}
	return fmt.Sprint(f)
}

func code(c int) string {
	if c == 0 {
		return "-"
	}
	return fmt.Sprint(c)
}
