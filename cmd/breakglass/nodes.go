package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/nodeops/sshclient"
)

func init() { register(newCmdNodes) }

func newCmdNodes(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the nodes breakglass reaches over SSH, and check them",
	}
	cmd.AddCommand(newCmdNodesList(d, nil), newCmdNodesCheck(d, nil))
	return cmd
}

type nodesListOptions struct{ nodes nodeFlags }

func newCmdNodesList(d *Deps, runF func(*nodesListOptions) error) *cobra.Command {
	opts := &nodesListOptions{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show the nodes as resolved: source, address, roles",
		Long: `Show the selected nodes (all by default) as commands will see them: where
each came from (inventory, etcd, nodes-file), its address, SSH port and user,
and its roles; -o wide adds labels. Nothing is contacted over SSH.

Output: table, wide, json ("type":"node"), yaml or name.
Exit codes: 0 ok, 1 error, 2 usage.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "wide", "json", "yaml", "name"); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return runNodesList(cmd.Context(), d, opts)
		},
	}
	addNodeFlags(cmd, &opts.nodes)
	return cmd
}

// nodeWire is the JSON wire struct of a node in nodes list.
type nodeWire struct {
	Type    string            `json:"type"` // node
	Name    string            `json:"name"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	User    string            `json:"user"`
	Roles   []string          `json:"roles"`
	Labels  map[string]string `json:"labels,omitempty"`
	Source  string            `json:"source"`
}

func runNodesList(ctx context.Context, d *Deps, opts *nodesListOptions) error {
	nodes, err := resolveNodes(ctx, d, &opts.nodes)
	if err != nil {
		return err
	}
	inv, _ := d.Inventory()
	p := newPrinter(d.Out, d.Global.Output)
	var rows [][]string
	for _, n := range nodes {
		port := n.Port
		if port == 0 {
			port = inv.SSH.Port
		}
		user := n.User
		if user == "" {
			user = inv.SSH.User
		}
		roles := n.Roles
		if roles == nil {
			roles = []string{}
		}
		if d.Global.Output == "name" {
			fmt.Fprintln(d.Out, n.Name)
			continue
		}
		if !p.Text() {
			if err := p.Object(nodeWire{Type: "node", Name: n.Name, Address: n.Address, Port: port, User: user,
				Roles: roles, Labels: n.Labels, Source: n.Source}); err != nil {
				return err
			}
			continue
		}
		row := []string{n.Name, n.Address, strconv.Itoa(port), user, dash(strings.Join(roles, ",")), n.Source}
		if d.Global.Output == "wide" {
			row = append(row, dash(sortedLabels(n.Labels)))
		}
		rows = append(rows, row)
	}
	if p.Text() && d.Global.Output != "name" {
		header := []string{"NAME", "ADDRESS", "PORT", "USER", "ROLES", "SOURCE"}
		if d.Global.Output == "wide" {
			header = append(header, "LABELS")
		}
		return p.Table(header, rows)
	}
	return nil
}

type nodesCheckOptions struct {
	nodes nodeFlags
	ssh   sshFlags
}

func newCmdNodesCheck(d *Deps, runF func(*nodesCheckOptions) error) *cobra.Command {
	opts := &nodesCheckOptions{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that every node can be reached and worked on",
		Long: `Connect to every selected node and check, in order: that it is reachable,
that its host key matches known_hosts, that authentication works, that sudo -n
works when the SSH user is not root, that containerd's socket answers, and
that nft can list the ruleset. A check that cannot run because an earlier
one failed shows "-".

Output: table, wide, json ("type":"nodeCheck"), yaml.
Exit codes: 0 every check passed, 1 error, 2 usage, 3 some node failed a
check, 4 refused (--accept-new-host-keys with nodes whose address comes
from etcd), 130 cancelled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "wide", "json", "yaml"); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return runNodesCheck(cmd.Context(), d, opts)
		},
	}
	addNodeFlags(cmd, &opts.nodes)
	addSSHFlags(cmd, &opts.ssh)
	return cmd
}

// checkScript probes sudo, containerd (at the socket SOCK names) and nft.
// It runs as the SSH user and uses sudo -n itself, so that it can report
// sudo separately.
const checkScript = `S=""; if [ "$(id -u)" != 0 ]; then S="sudo -n"; if sudo -n true 2>/dev/null; then echo sudo=ok; else echo sudo=fail; S=""; fi; else echo sudo=root; fi
if $S test -S $SOCK; then
  if command -v ctr >/dev/null 2>&1; then if $S ctr --address $SOCK --timeout 5s version >/dev/null 2>&1; then echo containerd=ok; else echo containerd=unresponsive; fi
  else echo containerd=socket; fi
else echo containerd=missing; fi
if command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ]; then if $S nft list tables >/dev/null 2>&1; then echo nft=ok; else echo nft=fail; fi
else echo nft=missing; fi`

// checkWire is the JSON wire struct of one node in nodes check. Each check
// is "ok", "fail" or "-" (not run); sudo may be "root" (not needed),
// containerd "missing", "unresponsive" or "socket" (present, no ctr to
// probe it), nft "missing".
type checkWire struct {
	Type       string `json:"type"` // nodeCheck
	Node       string `json:"node"`
	Address    string `json:"address"`
	OK         bool   `json:"ok"`
	Reachable  string `json:"reachable"`
	HostKey    string `json:"hostKey"`
	Auth       string `json:"auth"`
	Sudo       string `json:"sudo"`
	Containerd string `json:"containerd"`
	// ContainerdVia is how breakglass reaches containerd's socket from
	// here: "forward" (a forwarded unix socket), "sudo" (the relay under
	// sudo -n), "none" (neither: see error) or "-" (not tried).
	ContainerdVia string `json:"containerdVia"`
	Nft           string `json:"nft"`
	DurationMS    int64  `json:"durationMs"`
	Error         string `json:"error,omitempty"`
}

func runNodesCheck(ctx context.Context, d *Deps, opts *nodesCheckOptions) error {
	nodes, err := resolveNodes(ctx, d, &opts.nodes)
	if err != nil {
		return err
	}
	r, err := newRunner(d, &opts.ssh)
	if err != nil {
		return err
	}
	defer r.Close()
	bar := startProgress(d, "check", len(nodes))
	inv, err := d.Inventory()
	if err != nil {
		return err
	}
	script := "SOCK=" + nodeops.ShellQuote(inv.Containerd.Socket) + "\n" + checkScript
	results := fanout.RunCommand(ctx, r, nodes, nodeops.Command{Line: script, NoSudo: true}, fanoutOptions(d, &opts.ssh, bar.onEvent()))
	bar.clear()
	checks := make([]checkWire, len(results))
	for i, res := range results {
		checks[i] = checkOf(res)
	}
	if cl, ok := r.(*sshclient.Client); ok {
		if err := probeContainerd(ctx, d, cl, nodes, checks, fanoutOptions(d, &opts.ssh, nil)); err != nil {
			return err
		}
	}
	failed := 0
	for _, c := range checks {
		if !c.OK {
			failed++
		}
	}
	p := newPrinter(d.Out, d.Global.Output)
	if !p.Text() {
		for _, c := range checks {
			if err := p.Object(c); err != nil {
				return err
			}
		}
	} else {
		header := []string{"NODE", "REACHABLE", "HOST KEY", "AUTH", "SUDO", "CONTAINERD", "VIA", "NFT", "PROBLEM"}
		var rows [][]string
		for _, c := range checks {
			problem := c.Error
			if i := strings.IndexByte(problem, '\n'); i >= 0 {
				problem = problem[:i]
			}
			rows = append(rows, []string{c.Node, c.Reachable, c.HostKey, c.Auth, c.Sudo, c.Containerd, c.ContainerdVia, c.Nft, dash(problem)})
		}
		if err := p.Table(header, rows); err != nil {
			return err
		}
		fmt.Fprintf(d.Out, "\n%d nodes: %d passed every check, %d did not\n", len(checks), len(checks)-failed, failed)
	}
	printHints(d.ErrOut, results)
	if ctx.Err() != nil {
		return context.Canceled
	}
	if failed > 0 {
		sum := fanout.Summarize(results, 0)
		return &nodesFailedError{summary: checkSummary(sum, failed), what: "nodes check"}
	}
	return nil
}

// checkSummary counts the nodes that failed a check on the node itself
// (sudo, containerd, nft) as failed.
func checkSummary(s fanout.Summary, failed int) fanout.Summary {
	notOK := s.Total - s.Counts[nodeops.StatusOK]
	if extra := failed - notOK; extra > 0 {
		s.Counts[nodeops.StatusOK] -= extra
		s.Counts[nodeops.StatusFailed] += extra
	}
	return s
}

func checkOf(r fanout.Result) checkWire {
	c := checkWire{Type: "nodeCheck", Node: r.Target.Name, Address: r.Target.Address, DurationMS: ms(r.Duration),
		Reachable: "-", HostKey: "-", Auth: "-", Sudo: "-", Containerd: "-", ContainerdVia: "-", Nft: "-"}
	if r.Err != nil {
		c.Error = r.Err.Error()
	}
	var ne *nodeops.Error
	if r.Err != nil && asNodeError(r.Err, &ne) && ne.Phase != nodeops.PhaseCommand {
		switch ne.Phase {
		case nodeops.PhaseDial, nodeops.PhaseHandshake:
			if ne.Status != nodeops.StatusCancelled {
				c.Reachable = "fail"
			}
		case nodeops.PhaseHostKey:
			c.Reachable, c.HostKey = "ok", "fail"
		case nodeops.PhaseAuth:
			c.Reachable, c.HostKey, c.Auth = "ok", "ok", "fail"
		case nodeops.PhaseSession:
			c.Reachable, c.HostKey, c.Auth = "ok", "ok", "ok"
		}
		return c
	}
	if r.Status == nodeops.StatusCancelled || r.Status == nodeops.StatusFailed && r.Reason != "exit" {
		c.Reachable, c.HostKey, c.Auth = "ok", "ok", "ok"
		return c
	}
	c.Reachable, c.HostKey, c.Auth = "ok", "ok", "ok"
	for _, line := range strings.Split(string(r.Output.Stdout), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "sudo":
			c.Sudo = v
		case "containerd":
			c.Containerd = v
		case "nft":
			c.Nft = v
		}
	}
	c.OK = (c.Sudo == "ok" || c.Sudo == "root") && (c.Containerd == "ok" || c.Containerd == "socket") && c.Nft == "ok"
	if !c.OK && c.Error == "" {
		var bad []string
		for _, kv := range [][2]string{{"sudo", c.Sudo}, {"containerd", c.Containerd}, {"nft", c.Nft}} {
			if kv[1] != "ok" && kv[1] != "root" && !(kv[0] == "containerd" && kv[1] == "socket") {
				bad = append(bad, kv[0]+" "+kv[1])
			}
		}
		c.Error = strings.Join(bad, ", ")
	}
	return c
}

// probeContainerd tries, on every node whose containerd socket is there,
// the paths breakglass reaches it by (pods commands): a forwarded unix
// socket, then the relay under sudo -n, each up to a CRI Version call.
func probeContainerd(ctx context.Context, d *Deps, cl *sshclient.Client, nodes []nodeops.Target, checks []checkWire, fo fanout.Options) error {
	inv, err := d.Inventory()
	if err != nil {
		return err
	}
	var probe []nodeops.Target
	var idx []int
	for i, c := range checks {
		if c.Containerd == "ok" || c.Containerd == "socket" || c.Containerd == "unresponsive" {
			probe = append(probe, nodes[i])
			idx = append(idx, i)
		}
	}
	opts := fanout.OptionsOf[string]{Concurrency: fo.Concurrency, Timeout: fo.Timeout, Retries: fo.Retries}
	results := fanout.RunOf(ctx, probe, opts, func(ctx context.Context, t nodeops.Target) (string, error) {
		sock := inv.Containerd.Socket
		if t.ContainerdSocket != "" {
			sock = t.ContainerdSocket
		}
		var errs []string
		for _, via := range []sshclient.UnixVia{sshclient.UnixForward, sshclient.UnixSudo} {
			n, err := pods.Connect(ctx, t.Name, func(ctx context.Context) (net.Conn, error) { return cl.DialUnix(ctx, t, sock, via) })
			if err == nil {
				_, err = n.Version(ctx)
				n.Close()
			}
			if err == nil {
				return string(via), nil
			}
			errs = append(errs, fmt.Sprintf("%s: %s", via, firstLineOf(err.Error())))
		}
		return "none", errors.New(strings.Join(errs, "; "))
	})
	for j, r := range results {
		c := &checks[idx[j]]
		c.ContainerdVia = r.Output
		if r.Output == "" {
			c.ContainerdVia = "none"
		}
		if r.Err != nil {
			if c.Error != "" {
				c.Error += "; "
			}
			c.Error += "containerd not reachable by breakglass (" + r.Err.Error() + ")"
			c.OK = false
		}
	}
	return nil
}
