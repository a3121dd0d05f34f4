package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/nft"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(newCmdShed) }

const shedExitCodes = `Exit codes: 0 ok, 1 error, 2 usage, 3 some nodes failed or did not answer
(the others were changed), 4 refused (an allowlist that cuts you off, not
confirmed), 130 cancelled.`

func newCmdShed(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shed",
		Short: "Shed traffic to the API server: node firewall rules that expire by themselves",
		Long: `Block or throttle the clients that flood the API server while keeping your
own access, with the control-plane nodes' own nft: breakglass's table
(inet ` + nft.Table + `) is written as one atomic transaction, every rule is
gated on an element of a timed set so that it stops matching when the TTL
passes even if breakglass dies, and lifting deletes that table and nothing
else.

` + shedExitCodes,
	}
	cmd.AddCommand(newCmdShedApply(d), newCmdShedStatus(d), newCmdShedExtend(d), newCmdShedLift(d), newCmdShedFlowSchema(d))
	return cmd
}

type shedOptions struct {
	nodes    nodeFlags
	ssh      sshFlags
	firewall string
}

func addShedNodeFlags(cmd *cobra.Command, o *shedOptions) {
	addNodeSSHFlags(cmd, &o.nodes, &o.ssh)
	cmd.Flags().Lookup("nodes").Usage = "nodes to shed on (default role=control-plane): names, globs, role=ROLE (add your load balancers), label=SELECTOR"
	cmd.Flags().StringVar(&o.firewall, "firewall", "auto", "how the shed is written on a node: auto (nft, or iptables where the node has no nft), nft or iptables")
}

// shedRun is the nodes and the nft kind of a shed command.
type shedRun struct {
	env     *steps.Env
	kind    *steps.Nft
	targets []nodeops.Target
	close   func() error
}

func newShedRun(ctx context.Context, d *Deps, o *shedOptions) (*shedRun, error) {
	if len(o.nodes.sel.Nodes) == 0 && o.nodes.sel.NodesFile == "" {
		o.nodes.sel.Nodes = []string{steps.ShedNodes}
	}
	targets, err := resolveNodes(ctx, d, &o.nodes)
	if err != nil {
		return nil, err
	}
	if err := steps.ValidateFirewall(o.firewall); err != nil {
		return nil, usagef("--firewall %v", err)
	}
	env, closeRunner, err := d.nodeEnv(&o.ssh)
	if err != nil {
		return nil, err
	}
	kind := env.Nft(targets)
	kind.Firewall = o.firewall
	return &shedRun{env: env, kind: kind, targets: targets, close: closeRunner}, nil
}

func (r *shedRun) engine(d *Deps) (*change.Engine, *change.Stream) {
	return d.kindEngine(r.kind, nil)
}

// --- shed apply

type shedApplyOptions struct {
	shedOptions
	allow     []string
	port      int
	mode      string
	rate      int
	ttl       time.Duration
	noDefault []string
}

func newCmdShedApply(d *Deps) *cobra.Command {
	o := &shedApplyOptions{}
	cmd := &cobra.Command{
		Use:   "apply --ttl DURATION [--allow CIDR]...",
		Short: "Block (drop, reject) or rate-limit the API server port for every source not allowed",
		Long: `Put breakglass's nft table on every selected node (default: the control-plane
nodes): connections to --port from sources not in the allowlist are dropped,
reset (reject) or, with --mode limit, let through at --rate new connections
per second. The allowlist always holds, unless --no-default-allow names
them: your own address as each node sees it (the source of the SSH
session), the control-plane nodes' addresses, the etcd peers' and loopback.
An allowlist that would cut you off from a node is refused.

Every rule expires on the node --ttl after it is applied, even if breakglass
dies: the rules match only while an element of a timed set is there, and the
kernel removes it when the TTL passes. Where the node runs systemd, a
transient timer deletes the table a minute later as a second belt. apply is
idempotent: a node already shedding the same way is left as it is.

--dry-run prints the exact nft transaction per node.

` + shedExitCodes,
		Example: `  breakglass shed apply --ttl 15m --dry-run
  breakglass shed apply --ttl 15m --allow 10.20.0.0/16 --mode reject
  breakglass shed apply --ttl 10m --mode limit --rate 50`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			return runShedApply(cmd.Context(), d, o)
		},
	}
	addShedNodeFlags(cmd, &o.shedOptions)
	f := cmd.Flags()
	f.StringArrayVar(&o.allow, "allow", nil, "also let these sources through (`CIDR` or address; repeatable, comma separated)")
	f.IntVar(&o.port, "port", 0, "the API server port to shed (default: the inventory's apiserver.port, else 6443)")
	f.StringVar(&o.mode, "mode", "drop", "drop (silently), reject (TCP reset) or limit (--rate new connections/s let through)")
	f.IntVar(&o.rate, "rate", 0, "with --mode limit: new connections per second let through from sources not allowed")
	f.DurationVar(&o.ttl, "ttl", 0, "how long the rules hold on the node (1m to 24h; required)")
	f.StringSliceVar(&o.noDefault, "no-default-allow", nil, "leave these out of the allowlist: operator, control-plane, etcd, loopback")
	addJournalFlag(cmd, d)
	return cmd
}

func runShedApply(ctx context.Context, d *Deps, o *shedApplyOptions) error {
	if o.ttl == 0 {
		return usagef("--ttl is required: how long the rules hold on the node (e.g. --ttl 15m)")
	}
	// Checked here, before any node is reached, so that a bad flag is a
	// usage error that names it.
	if err := nft.ValidateTTL(o.ttl); err != nil {
		return usagef("--ttl: %v", err)
	}
	if o.port != 0 {
		if err := nft.ValidatePort(o.port); err != nil {
			return usagef("--port: %v", err)
		}
	}
	mode := nft.Mode(o.mode)
	if mode != "drop" && mode != "reject" && mode != "limit" {
		return usagef("--mode %q: must be drop, reject or limit", o.mode)
	}
	if (mode == "limit") != (o.rate > 0) {
		return usagef("--rate goes with --mode limit, and --mode limit needs --rate N (new connections per second)")
	}
	if err := steps.ValidateShedDefaults(o.noDefault); err != nil {
		return &usageError{err}
	}
	allow, err := steps.ParseAllow(o.allow)
	if err != nil {
		return usagef("%v", err)
	}
	if _, err := d.Inventory(); err != nil {
		return err
	}
	env := d.stepsEnv(&o.ssh)
	port := env.ShedPort(o.port)
	defaults, err := env.ShedDefaults(ctx, o.noDefault)
	if err != nil {
		return &usageError{err}
	}
	r, err := newShedRun(ctx, d, &o.shedOptions)
	if err != nil {
		return err
	}
	defer r.close()
	e, stream := r.engine(d)
	defer stream.Close()
	_, err = e.Run(ctx, steps.PlanShedApply(r.kind, r.targets, steps.ShedSpec{Port: port, Mode: mode, Rate: o.rate, TTL: o.ttl,
		Allow: allow, Defaults: defaults, NoOperator: slices.Contains(o.noDefault, "operator")}))
	return err
}

// --- shed extend, lift

func newCmdShedExtend(d *Deps) *cobra.Command {
	o := &shedOptions{}
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "extend --ttl DURATION",
		Short: "Renew the shed's expiry on every node, atomically",
		Long: `Renew the dead-man element of breakglass's table on every selected node that has
one: the rules hold --ttl from now (also when the TTL had already passed).
The renewal is one nft transaction per node.

` + shedExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if ttl == 0 {
				return usagef("--ttl is required (e.g. --ttl 15m)")
			}
			if err := nft.ValidateTTL(ttl); err != nil {
				return usagef("--ttl: %v", err)
			}
			r, err := newShedRun(cmd.Context(), d, o)
			if err != nil {
				return err
			}
			defer r.close()
			e, stream := r.engine(d)
			defer stream.Close()
			_, err = e.Run(cmd.Context(), steps.PlanShedExtend(r.kind, r.targets, ttl))
			return err
		},
	}
	addShedNodeFlags(cmd, o)
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the rules hold from now (1m to 24h)")
	addJournalFlag(cmd, d)
	return cmd
}

func newCmdShedLift(d *Deps) *cobra.Command {
	o := &shedOptions{}
	var only string
	var flows []string
	cmd := &cobra.Command{
		Use:   "lift",
		Short: "Remove breakglass's table from every node, and its flow-control sheds from etcd",
		Long: `Delete breakglass's nft table (inet ` + nft.Table + `) from every selected node
that has one, and cancel its systemd timer where there is one; then, when
etcd is configured, delete breakglass's FlowSchemas and their priority
levels (every one, or those --flowschema names). Other tables and rules on
the nodes, and other flow-control objects, are not touched. The two are
separate changes, each with its own ID and undo.

` + shedExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if only != "" && only != "network" && only != "flowschema" {
				return usagef("--only %q: want network or flowschema", only)
			}
			ctx := cmd.Context()
			if only != "flowschema" {
				r, err := newShedRun(ctx, d, o)
				if err != nil {
					return err
				}
				defer r.close()
				e, stream := r.engine(d)
				_, err = e.Run(ctx, steps.PlanShedLift(r.kind, r.targets))
				stream.Close()
				if err != nil {
					return err
				}
			}
			if only == "network" || (only == "" && len(flows) == 0 && !etcdConfigured(ctx, d)) {
				return nil
			}
			e, k, stream, err := d.changeEngine(ctx)
			if err != nil {
				return err
			}
			defer stream.Close()
			e.Register(&steps.FlowControl{Etcd: k})
			if only == "" && len(flows) == 0 {
				list, err := steps.ListFlowSheds(ctx, k.Store, d.Now())
				if err != nil || len(list) == 0 {
					return err
				}
			}
			_, err = e.Run(ctx, steps.PlanFlowLift(k, flows))
			return err
		},
	}
	addShedNodeFlags(cmd, o)
	cmd.Flags().StringVar(&only, "only", "", "lift only the network shed (network) or only the flow-control sheds (flowschema)")
	cmd.Flags().StringArrayVar(&flows, "flowschema", nil, "lift only this flow-control shed (`NAME`, as shed status shows it; repeatable)")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

// --- shed status

type shedStatusWire struct {
	Type         string   `json:"type"` // shedStatus
	Node         string   `json:"node"`
	State        string   `json:"state"`             // active, lapsed, none
	Backend      string   `json:"backend,omitempty"` // nft or iptables
	Change       string   `json:"change,omitempty"`
	Mode         string   `json:"mode,omitempty"`
	Rate         int      `json:"rate,omitempty"`
	Port         int      `json:"port,omitempty"`
	Allow        []string `json:"allow,omitempty"`
	RemainingSec int64    `json:"remainingSeconds"`
	Packets      uint64   `json:"packets"`
	Bytes        uint64   `json:"bytes"`
	Operator     string   `json:"operator,omitempty"`
}

func newCmdShedStatus(d *Deps) *cobra.Command {
	o := &shedOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the shed on every node: mode, allowlist, time left, packets and bytes shed",
		Long: `Read breakglass's table on every selected node (JSON from nft where the node's
nft has it, its text listing otherwise) and show per node: active (the rules
match), lapsed (the TTL passed: the table is inert, lift removes it) or none;
the mode, port, allowlist, time left, and the packets and bytes the shed rule
has dropped, reset or let through over the limit.

` + shedExitCodes,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "wide", "json", "yaml"); err != nil {
				return err
			}
			return runShedStatus(cmd.Context(), d, o)
		},
	}
	addShedNodeFlags(cmd, o)
	addEtcdFlags(cmd, d)
	return cmd
}

func runShedStatus(ctx context.Context, d *Deps, o *shedOptions) error {
	r, err := newShedRun(ctx, d, o)
	if err != nil {
		return err
	}
	defer r.close()
	results := r.kind.Probe(ctx, r.targets)
	p := newPrinter(d.Out, d.Global.Output)
	var rows [][]string
	reads := &nodeReads{what: "shed status", total: len(results)}
	for _, res := range results {
		if res.Err != nil {
			reads.fail(d.ErrOut, res.Target.Name, res.Status, res.Err)
			continue
		}
		st := res.Output.State
		w := shedStatusWire{Type: "shedStatus", Node: res.Target.Name, State: "none", Backend: res.Output.Backend}
		if res.Output.Operator.IsValid() {
			w.Operator = res.Output.Operator.String()
		}
		if st.Present {
			w.State = "lapsed"
			if st.Active {
				w.State = "active"
			}
			w.Change, w.Mode, w.Rate, w.Port = st.Change, string(st.Mode), st.Rate, st.Port
			w.RemainingSec = int64(st.Remaining / time.Second)
			w.Packets, w.Bytes = st.Packets, st.Bytes
			for _, a := range st.Allow {
				w.Allow = append(w.Allow, a.String())
			}
		}
		if !p.Text() {
			if err := p.Object(w); err != nil {
				return err
			}
			continue
		}
		left := "-"
		if st.Active {
			left = st.Remaining.Round(time.Second).String()
		}
		row := []string{w.Node, w.State, dash(w.Mode), dash(portText(w.Port)), left, fmt.Sprint(w.Packets), fmt.Sprint(w.Bytes), dash(w.Change)}
		if d.Global.Output == "wide" {
			row = append(row, dash(strings.Join(w.Allow, ",")))
		}
		rows = append(rows, row)
	}
	if p.Text() {
		header := []string{"NODE", "STATE", "MODE", "PORT", "LEFT", "PACKETS", "BYTES", "CHANGE"}
		if d.Global.Output == "wide" {
			header = append(header, "ALLOW")
		}
		if err := p.Table(header, rows); err != nil {
			return err
		}
	}
	if err := flowStatus(ctx, d, p); err != nil {
		return err
	}
	return reads.err(ctx)
}

func portText(p int) string {
	if p == 0 {
		return ""
	}
	return fmt.Sprint(p)
}

// --- shed flowschema

type shedFlowOptions struct {
	f      steps.FlowShed
	shares int
}

func newCmdShedFlowSchema(d *Deps) *cobra.Command {
	o := &shedFlowOptions{}
	cmd := &cobra.Command{
		Use:   "flowschema (--serviceaccount NS/NAME | --user U | --group G) (--reject | --shares N) --ttl DURATION",
		Short: "Shed one identity through the API server's own flow control, written in etcd",
		Long: `Write a PriorityLevelConfiguration and a FlowSchema (flowcontrol.apiserver.k8s.io/v1)
straight into etcd, as compare-and-swap creates, journaled: the API server's
API Priority and Fairness controller picks them up from its storage and
answers the identity's requests with 429 (--reject: at most one request at a
time runs) or gives it --shares concurrency shares with no borrowing. The
FlowSchema's precedence (10) beats every suggested schema and leaves
system:masters (exempt) and health probes alone.

The objects never carry the annotation that lets the API server's config
maintenance delete or overwrite them, and the mandatory exempt and catch-all
objects are never edited. The TTL is kept on the objects (an annotation):
nothing on the API server removes them when it passes; "shed status" warns
and "shed lift" removes them. The API server must run with API Priority and
Fairness on (the default).

Refused (exit 4): system:masters; without --force, the control plane's own
identities (kube-system service accounts, nodes, the controller manager,
scheduler, every authenticated user).

` + shedExitCodes,
		Example: `  breakglass shed flowschema --serviceaccount telemetry/telemetry-agent --reject --ttl 15m --dry-run
  breakglass shed flowschema --user ci-bot --shares 1 --ttl 30m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			o.f.Shares = int32(o.shares)
			o.f.Now = d.Now()
			if err := o.f.Validate(); err != nil {
				var refused *change.RefusedError
				if errors.As(err, &refused) {
					return err
				}
				return &usageError{err}
			}
			e, k, stream, err := d.changeEngine(cmd.Context())
			if err != nil {
				return err
			}
			defer stream.Close()
			e.Register(&steps.FlowControl{Etcd: k})
			_, err = e.Run(cmd.Context(), steps.PlanFlowShed(k, o.f))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.f.ServiceAccount, "serviceaccount", "", "the service account to shed (`NAMESPACE/NAME`, or NAMESPACE/* for all of them)")
	f.StringVar(&o.f.User, "user", "", "the user to shed")
	f.StringVar(&o.f.Group, "group", "", "the group to shed")
	f.BoolVar(&o.f.Reject, "reject", false, "answer its requests with 429 (at most one runs at a time)")
	f.IntVar(&o.shares, "shares", 0, "give it this many concurrency shares instead, the rest answered 429")
	f.DurationVar(&o.f.TTL, "ttl", 0, "how long the shed is meant to hold (1m to 24h; kept on the objects, enforced by shed status and lift)")
	f.BoolVar(&o.f.Force, "force", false, "shed a control-plane identity too (never system:masters)")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

type flowShedWire struct {
	Type         string    `json:"type"` // flowShedStatus
	Name         string    `json:"name"`
	Identity     string    `json:"identity"`
	Reject       bool      `json:"reject"`
	Shares       int32     `json:"shares"`
	Created      time.Time `json:"created"`
	ExpiresAt    time.Time `json:"expiresAt"`
	Expired      bool      `json:"expired"`
	RemainingSec int64     `json:"remainingSeconds"`
	Change       string    `json:"change,omitempty"`
	Problem      string    `json:"problem,omitempty"`
}

// flowStatus prints the flow-control sheds in etcd, when etcd is
// configured, and warns about the ones whose TTL passed: nothing on the
// API server removes them.
func flowStatus(ctx context.Context, d *Deps, p Printer) error {
	if !etcdConfigured(ctx, d) {
		return nil
	}
	st, err := d.Etcd(ctx)
	if err != nil {
		return err
	}
	list, err := steps.ListFlowSheds(ctx, st, d.Now())
	if err != nil {
		return err
	}
	var rows [][]string
	for _, f := range list {
		left := f.ExpiresAt.Sub(d.Now())
		if left < 0 {
			left = 0
		}
		w := flowShedWire{Type: "flowShedStatus", Name: f.Name, Identity: f.Identity, Reject: f.Reject, Shares: f.Shares,
			Created: f.Created.UTC(), ExpiresAt: f.ExpiresAt.UTC(), Expired: f.Expired, RemainingSec: int64(left / time.Second), Change: f.Change, Problem: f.Problem}
		if !p.Text() {
			if err := p.Object(w); err != nil {
				return err
			}
			continue
		}
		limit := fmt.Sprintf("%d shares", f.Shares)
		if f.Reject {
			limit = "reject"
		}
		state := left.Round(time.Second).String() + " left"
		if f.Expired {
			state = "EXPIRED " + d.Now().Sub(f.ExpiresAt).Round(time.Second).String() + " ago"
			fmt.Fprintf(d.ErrOut, "warning: flow-control shed %s (%s) is past its TTL and still acts: expiry is on the operator's side; lift it with breakglass shed lift --flowschema %s\n", f.Name, f.Identity, f.Name)
		}
		rows = append(rows, []string{f.Name, f.Identity, limit, age(d.Now().Sub(f.Created)), state, dash(f.Change), dash(f.Problem)})
	}
	if p.Text() && len(rows) > 0 {
		fmt.Fprintln(d.Out)
		return p.Table([]string{"FLOWSCHEMA", "IDENTITY", "LIMIT", "AGE", "TTL", "CHANGE", "PROBLEM"}, rows)
	}
	return nil
}
