package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/recover/diagnose"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdDiagnose(d, nil) }) }

type diagnoseOptions struct {
	nodes       nodeFlags
	ssh         sshFlags
	since       time.Duration
	nodeTimeout time.Duration
	port        int
	via         string
	kubeconfigs []string
	dnsService  string
	domain      string
}

func newCmdDiagnose(d *Deps, runF func(*diagnoseOptions) error) *cobra.Command {
	o := &diagnoseOptions{}
	cmd := &cobra.Command{
		Use:   "diagnose [--since 6h] [-o json]",
		Short: "Name what is hammering the API server, from etcd and the nodes",
		Long: `Diagnose finds the cause of an API server overload (or a preemption
cascade) from sources that still answer: etcd and the nodes over SSH. It
never sends a request through the API server's limits and changes nothing.

From etcd, at one revision: object counts per resource and namespace (keys
only) and the bytes of what workloads list; the DaemonSets, Deployments and
StatefulSets created or changed within --since, with the resources their
service account may list cluster-wide and what that costs for all their pods;
PriorityClasses and recent Preempted and FailedScheduling events; FlowSchemas
that exempt or favour clients; the API servers' leases and endpoints; node
readiness and lease ages; etcd's health and database size.

From every node, in one SSH session each: the established connections to
the API server port and the processes that hold them, mapped through the
node's containerd to pods and, by the workloads' selectors, to their owner;
on control-plane nodes also the connections per source address and, in a
second session, the API server's /readyz and its inflight, 429 and priority
and fairness figures, read on the node with its admin kubeconfig (kubeadm's
super-admin.conf or admin.conf; never printed).

Cluster DNS, the blast radius: from every node, through one more SSH
connection (direct-tcpip, no tool needed on the node), an A query over TCP
for kubernetes.default.svc.<cluster domain> to the DNS Service's cluster IP
(what the node's pods ask) and to up to 3 of its servers, read from its
EndpointSlices in etcd; a node where the Service does not answer with
default/kubernetes's address is failing. CoreDNS answers SERVFAIL while it
cannot sync with the API server.

The suspects are ranked best first, each with its evidence and the lever to
pull (the top suspect's selector, e.g. --daemonset telemetry/telemetry-agent).
Its own cost is reported: etcd reads and SSH sessions. See docs/diagnose.md.

Output: a one-screen summary, or -o json (one {"type":"diagnosis"} object,
docs/json-output.md).

Exit codes: 0 ok (whether or not a suspect was found), 1 error (etcd could
not be read), 2 usage, 3 some nodes could not be read (the report is still
printed), 130 cancelled.`,
		Example: `  breakglass diagnose
  breakglass diagnose --since 2h -o json | jq '.suspects[0]'
  breakglass pods hold $(breakglass diagnose -o json | jq -r '.top.selector | join(" ")')`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			if o.since <= 0 {
				return usagef("--since %s: must be positive", o.since)
			}
			if ns, name, ok := strings.Cut(o.dnsService, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
				return usagef("--dns-service %q: must be NAMESPACE/NAME, e.g. kube-system/kube-dns", o.dnsService)
			}
			if errs := validation.IsDNS1123Subdomain(strings.Trim(o.domain, ".")); len(errs) > 0 {
				return usagef("--cluster-domain %q: %s, e.g. cluster.local", o.domain, errs[0])
			}
			if o.nodeTimeout <= 0 {
				return usagef("--node-timeout %s: must be positive", o.nodeTimeout)
			}
			if runF != nil {
				return runF(o)
			}
			return runDiagnose(cmd.Context(), d, o)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.since, "since", 6*time.Hour, "how far back a workload, PriorityClass or event counts as recent")
	f.DurationVar(&o.nodeTimeout, "node-timeout", 8*time.Second, "how long each node may take (all its sessions)")
	f.IntVar(&o.port, "port", 0, "the API server port (default: the inventory's apiserver.port, else 6443)")
	f.StringSliceVar(&o.kubeconfigs, "admin-kubeconfig", nil, "admin kubeconfigs to try on control-plane nodes, in order (default /etc/kubernetes/super-admin.conf,/etc/kubernetes/admin.conf)")
	f.StringVar(&o.dnsService, "dns-service", diagnose.DefaultDNSService, "the cluster DNS Service (NAMESPACE/NAME) asked from every node")
	f.StringVar(&o.domain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	addViaFlag(cmd, &o.via)
	addNodeSSHFlags(cmd, &o.nodes, &o.ssh)
	addEtcdFlags(cmd, d)
	return cmd
}

func runDiagnose(ctx context.Context, d *Deps, o *diagnoseOptions) error {
	inv, err := d.Inventory()
	if err != nil {
		return err
	}
	store, err := d.Etcd(ctx)
	if err != nil {
		return err
	}
	env := diagnose.Env{Store: store, Since: o.since, NodeTimeout: o.nodeTimeout, Concurrency: d.Global.Concurrency, Now: d.Now, Kubeconfigs: o.kubeconfigs,
		DNSService: o.dnsService, ClusterDomain: o.domain}
	env.APIServerPort = o.port
	if env.APIServerPort == 0 && inv.APIServer.Port != 0 {
		env.APIServerPort = inv.APIServer.Port
	}
	// With no nodes anywhere, the diagnosis rests on etcd alone (and
	// says so) rather than failing.
	var targets []nodeops.Target
	if len(inv.Nodes) > 0 || o.nodes.source != "inventory" || len(o.nodes.sel.Nodes) > 0 || o.nodes.sel.NodesFile != "" {
		if targets, err = resolveNodes(ctx, d, &o.nodes); err != nil {
			return err
		}
	}
	if len(targets) > 0 {
		via, err := steps.ContainerdVia(inv, o.via)
		if err != nil {
			return &usageError{err}
		}
		r, err := newRunner(d, &o.ssh)
		if err != nil {
			return err
		}
		defer r.Close()
		env.Runner, env.Nodes = r, targets
		if cl, ok := r.(*sshclient.Client); ok {
			env.Containerd = func(ctx context.Context, t nodeops.Target) (*pods.Node, error) {
				sock := inv.Containerd.Socket
				if t.ContainerdSocket != "" {
					sock = t.ContainerdSocket
				}
				return pods.Connect(ctx, t.Name, func(ctx context.Context) (net.Conn, error) {
					return cl.DialUnix(ctx, t, sock, sshclient.UnixVia(via))
				})
			}
			env.Tunnel = func(ctx context.Context, t nodeops.Target) (diagnose.Tunnel, error) {
				return cl.OpenTunnel(ctx, t)
			}
		}
	}
	rep, err := diagnose.Run(ctx, env)
	if err != nil {
		return err
	}
	if d.Global.Output == "json" {
		if err := printJSON(d.Out, diagnosisWire{Type: "diagnosis", Report: rep}); err != nil {
			return err
		}
	} else if err := rep.WriteText(d.Out); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return context.Canceled
	}
	if rep.SSH.Failed > 0 {
		return &nodeReadsError{failed: rep.SSH.Failed, total: rep.SSH.Nodes}
	}
	return nil
}

// diagnosisWire is the JSON output: the report with its type.
type diagnosisWire struct {
	Type string `json:"type"`
	*diagnose.Report
}

// nodeReadsError: the report was printed, but some nodes could not be read
// (exit code 3).
type nodeReadsError struct{ failed, total int }

func (e *nodeReadsError) Error() string {
	return fmt.Sprintf("diagnose: %d of %d nodes could not be read (see the nodes in the report)", e.failed, e.total)
}
func (e *nodeReadsError) ExitCode() int { return exitNodesFail }
