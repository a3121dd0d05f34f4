package steps

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/nodeops/selector"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/recover/change"
)

// UnixDialer opens a unix socket on a node over SSH (containerd's):
// *sshclient.Client, or a test's.
type UnixDialer interface {
	DialUnix(ctx context.Context, t nodeops.Target, path string, via sshclient.UnixVia) (*sshclient.UnixConn, error)
}

// Env is what the levers are built from: the inventory, the SSH client,
// etcd, the clock and the fan-out options. A command and the runbook
// engine build the same kinds and planner inputs through it, so that a
// lever behaves the same whether a person or a runbook pulls it.
type Env struct {
	Inventory *inventory.Inventory
	// SSH reaches containerd's socket on nodes; Runner runs commands on
	// them (nft). Either may be nil when nothing needs it.
	SSH    UnixDialer
	Runner nodeops.Runner
	// Store is etcd; nil when etcd is not configured.
	Store *etcd.Store
	// NodeSource, if set, completes the inventory's nodes (Node objects
	// read from etcd).
	NodeSource nodeops.NodeSource
	Now        func() time.Time
	// Fanout is the concurrency, per-node timeout and retries of every
	// fan-out (its OnEvent is not used: the kinds report through events).
	Fanout fanout.Options
}

// KeepConnectionsUpTo is the largest run whose containerd connections are
// kept from the plan to the apply (about 100 KiB each).
const KeepConnectionsUpTo = 1000

// ContainerdVia is how containerd's socket is reached: flag when set, the
// inventory's containerd.via otherwise.
func ContainerdVia(inv *inventory.Inventory, flag string) (string, error) {
	via := flag
	if via == "" && inv != nil {
		via = inv.Containerd.Via
	}
	switch via {
	case "auto", "forward", "sudo":
		return via, nil
	}
	return "", fmt.Errorf("--via %q: must be auto, forward or sudo", via)
}

// Nodes resolves a node selection against the inventory (and NodeSource),
// in inventory order. The warnings are the node source's.
func (e *Env) Nodes(ctx context.Context, sel selector.Options) ([]nodeops.Target, []string, error) {
	universe, warnings, err := selector.Universe(ctx, e.Inventory, e.NodeSource)
	if err != nil {
		return nil, warnings, err
	}
	nodes, err := selector.Select(universe, sel)
	return nodes, warnings, err
}

// Pods returns the containerd kind for targets, reaching each node's
// socket via via (auto, forward or sudo). With a Store it also gets the
// etcd kind (holds change owners) and reads pods from etcd for protection.
// The caller closes it.
func (e *Env) Pods(targets []nodeops.Target, via string) *Pods {
	socket := "/run/containerd/containerd.sock"
	if e.Inventory != nil && e.Inventory.Containerd.Socket != "" {
		socket = e.Inventory.Containerd.Socket
	}
	dialer := e.SSH
	k := &Pods{
		Connect: func(ctx context.Context, t nodeops.Target) (*pods.Node, string, error) {
			if dialer == nil {
				return nil, "", fmt.Errorf("internal: no SSH client to reach containerd")
			}
			sock := socket
			if t.ContainerdSocket != "" {
				sock = t.ContainerdSocket
			}
			var used sshclient.UnixVia
			dial := func(ctx context.Context) (net.Conn, error) {
				c, err := dialer.DialUnix(ctx, t, sock, sshclient.UnixVia(via))
				if err != nil {
					return nil, err
				}
				used = c.Via
				return c, nil
			}
			n, err := pods.Connect(ctx, t.Name, dial)
			if err != nil {
				return nil, "", err
			}
			return n, string(used), nil
		},
		Targets: targets,
		Now:     e.Now,
		// Connections are kept from plan to apply while they fit in
		// memory; a larger fleet connects again to apply.
		Keep:    len(targets) <= KeepConnectionsUpTo,
		Options: fanout.OptionsOf[NodeResult]{Concurrency: e.Fanout.Concurrency, Timeout: e.Fanout.Timeout, Retries: e.Fanout.Retries},
	}
	if e.Store != nil {
		k.Store = e.Store
		k.Etcd = &change.Etcd{Store: e.Store}
	}
	return k
}

// Nft returns the nft kind (breakglass's shed table) for targets.
func (e *Env) Nft(targets []nodeops.Target) *Nft {
	return &Nft{Runner: e.Runner, Targets: targets,
		Options: fanout.OptionsOf[NftResult]{Concurrency: e.Fanout.Concurrency, Timeout: e.Fanout.Timeout, Retries: e.Fanout.Retries}}
}

// ShedDefaultNames are the parts of the default shed allowlist, as
// --no-default-allow names them.
var ShedDefaultNames = []string{"operator", "control-plane", "etcd", "loopback"}

// ValidateShedDefaults checks the names of default allowlist parts to
// leave out.
func ValidateShedDefaults(leaveOut []string) error {
	for _, n := range leaveOut {
		if !slices.Contains(ShedDefaultNames, n) {
			return fmt.Errorf("--no-default-allow %q: want operator, control-plane, etcd or loopback", n)
		}
	}
	return nil
}

// ShedNodes is the default node selection of a shed: the control plane.
const ShedNodes = "role=control-plane"

// ShedPort is the API server port a shed acts on: port when set, the
// inventory's apiserver.port, else 6443.
func (e *Env) ShedPort(port int) int {
	if port == 0 && e.Inventory != nil {
		port = e.Inventory.APIServer.Port
	}
	if port == 0 {
		port = 6443
	}
	return port
}

// ShedDefaults is the allowlist every shed keeps, but for the parts
// leaveOut names (ShedDefaultNames): the control-plane nodes' addresses,
// the etcd endpoints' (not loopback) and loopback. The operator's own
// address is added per node at plan time (ShedSpec.NoOperator).
func (e *Env) ShedDefaults(ctx context.Context, leaveOut []string) ([]netip.Prefix, error) {
	if err := ValidateShedDefaults(leaveOut); err != nil {
		return nil, err
	}
	var defaults []netip.Prefix
	inv := e.Inventory
	if inv == nil {
		inv = inventory.Empty()
	}
	if !slices.Contains(leaveOut, "control-plane") {
		for _, n := range inv.Nodes {
			if !n.HasRole("control-plane") {
				continue
			}
			if a, err := netip.ParseAddr(n.Address); err == nil {
				defaults = append(defaults, netip.PrefixFrom(a, a.BitLen()))
			} else if ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", n.Address); err == nil {
				for _, a := range ips {
					defaults = append(defaults, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
				}
			}
		}
	}
	if !slices.Contains(leaveOut, "etcd") {
		for _, ep := range inv.Etcd.Endpoints {
			if u, err := url.Parse(ep); err == nil {
				if a, err := netip.ParseAddr(u.Hostname()); err == nil && !a.IsLoopback() {
					defaults = append(defaults, netip.PrefixFrom(a, a.BitLen()))
				}
			}
		}
	}
	if !slices.Contains(leaveOut, "loopback") {
		defaults = append(defaults, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
	}
	return defaults, nil
}

// ParseAllow reads allowlist entries: CIDRs or addresses, each value
// possibly comma separated.
func ParseAllow(vals []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range vals {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			if p, err := netip.ParsePrefix(s); err == nil {
				out = append(out, p.Masked())
				continue
			}
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("--allow %q: want a CIDR (10.0.0.0/8) or an address", s)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out, nil
}
