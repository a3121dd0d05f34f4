// Package diagnose names what is hammering the API server, and shows what
// breaks because of it, from sources that still answer when the API server
// does not: etcd (a census of what the cluster holds and what changed) and
// the nodes themselves over SSH (who holds connections to the API server,
// mapped through containerd to pods and their owners; the API server's own
// readiness and flow-control figures read on each control-plane node).
//
// It is read-only and bounded: every etcd read goes through a counting store
// and every SSH session through a counting runner, both reported, and every
// node has its own deadline. Run is the Go API a runbook step calls; the
// top suspect's Selector is the default selector of the levers that follow
// (pods stop/hold, daemonset pause, shed flowschema).
package diagnose

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/apiprobe"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/netconn"
	"github.com/breakglass/breakglass/nodeops/pods"
)

// Env is what a diagnosis reads from.
type Env struct {
	// Store is etcd (required).
	Store *etcd.Store
	// Runner runs one command per node (nil: no node is read).
	Runner nodeops.Runner
	// Nodes are every node to read; those with the role control-plane are
	// also asked for their API server's health.
	Nodes []nodeops.Target
	// Containerd connects to a node's containerd, to map the pods that hold
	// connections to their names and labels (nil: pods are named by uid).
	Containerd func(ctx context.Context, t nodeops.Target) (*pods.Node, error)
	// APIServerPort is the API server's port on the control-plane nodes
	// (default 6443).
	APIServerPort int
	// Kubeconfigs are the admin kubeconfigs tried on control-plane nodes
	// (default apiprobe.DefaultKubeconfigs).
	Kubeconfigs []string
	// Since is how far back a change counts as recent (default 6h).
	Since time.Duration
	// NodeTimeout bounds everything done on one node (default 8s);
	// Concurrency is how many nodes are read at once (default 64).
	NodeTimeout time.Duration
	Concurrency int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Thresholds decide which suspects are reported as above threshold
	// (zero fields: DefaultThresholds').
	Thresholds Thresholds
	// Tunnel opens an SSH connection to a node that TCP connections are
	// made from: how cluster DNS is asked from every node (nil: it is
	// not asked).
	Tunnel func(ctx context.Context, t nodeops.Target) (Tunnel, error)
	// DNSService is NAMESPACE/NAME of the cluster DNS Service (default
	// DefaultDNSService); ClusterDomain the cluster's DNS domain
	// (default cluster.local).
	DNSService    string
	ClusterDomain string
}

// Report is a diagnosis. It is also the JSON output of breakglass
// diagnose -o json (docs/json-output.md).
type Report struct {
	Time    time.Time `json:"time"`
	TookMs  int64     `json:"tookMs"`
	SinceS  int64     `json:"sinceSeconds"`
	Port    int       `json:"apiserverPort"`
	Suspect *Suspect  `json:"top,omitempty"`
	// Suspects are ranked best first; only those AboveThreshold are
	// worth acting on.
	Suspects []Suspect `json:"suspects"`
	// Talkers are the clients of the API server found on the nodes, per
	// owner, most connections first.
	Talkers []Talker `json:"talkers"`
	// ControlPlane is each control-plane node's view of its API server:
	// its health, and its inbound connections per source.
	ControlPlane []ControlPlaneNode `json:"controlPlane"`
	// DNS is cluster DNS as every node sees it (absent when it was not
	// asked: no SSH, or no DNS Service in etcd, said in Notes).
	DNS    *DNSReport          `json:"dns,omitempty"`
	Nodes  []NodeResult        `json:"nodes"`
	Census *etcd.ClusterCensus `json:"census"`
	// Reads are diagnose's own etcd reads; SSH its own SSH use.
	Reads etcd.ReadStats `json:"etcdReads"`
	SSH   SSHStats       `json:"ssh"`
	Notes []string       `json:"notes,omitempty"`
}

// SSHStats is what diagnose did over SSH.
type SSHStats struct {
	// Sessions counts commands run (one session each); Containerd the
	// containerd connections opened (one channel each).
	Sessions   int64 `json:"sessions"`
	Containerd int64 `json:"containerd"`
	// Tunnels counts the SSH connections that cluster DNS was asked
	// through (one per node).
	Tunnels int64 `json:"tunnels"`
	Nodes   int   `json:"nodes"`
	Failed  int   `json:"failed"`
}

// NodeResult is how reading one node went.
type NodeResult struct {
	Node   string `json:"node"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	TookMs int64  `json:"tookMs"`
	// Outbound counts the node's connections to the API server port;
	// Processes says who holds them.
	Outbound  int               `json:"outbound"`
	Processes []netconn.Process `json:"processes,omitempty"`
	// Pods are the pods holding connections, as containerd named them.
	Pods []PodConns `json:"pods,omitempty"`
	// DNS is what cluster DNS answered this node.
	DNS []DNSCheck `json:"dns,omitempty"`
}

// PodConns is a pod that holds connections to the API server.
type PodConns struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid"`
	Conns     int    `json:"conns"`
	// Owner is KIND NAMESPACE/NAME when a workload's selector matches.
	Owner string `json:"owner,omitempty"`

	labels map[string]string
}

// ControlPlaneNode is one control-plane node's API server.
type ControlPlaneNode struct {
	Node   string           `json:"node"`
	Health *apiprobe.Health `json:"health,omitempty"`
	Error  string           `json:"error,omitempty"`
	// Inbound is the number of established connections to the port;
	// Sources the same per source address (and node, where known).
	Inbound int           `json:"inbound"`
	Sources []SourceConns `json:"sources,omitempty"`
}

// SourceConns is the connections from one address.
type SourceConns struct {
	Address string `json:"address"`
	Node    string `json:"node,omitempty"`
	Conns   int    `json:"conns"`
}

type countingRunner struct {
	r nodeops.Runner
	n *atomic.Int64
}

func (c countingRunner) Run(ctx context.Context, t nodeops.Target, cmd nodeops.Command) (nodeops.Output, error) {
	c.n.Add(1)
	return c.r.Run(ctx, t, cmd)
}

// nodeRead is what one node gave.
type nodeRead struct {
	table  *netconn.Table
	pods   []pods.Pod
	podErr error
	health *apiprobe.Health
	hErr   error
	dns    []DNSCheck
	dnsErr error
}

// Run diagnoses the cluster. It fails only when etcd cannot be read; a
// node that cannot be read is reported in Nodes and its evidence is
// missing.
func Run(ctx context.Context, env Env) (*Report, error) {
	if env.Store == nil {
		return nil, errors.New("diagnose: no etcd store")
	}
	now := time.Now
	if env.Now != nil {
		now = env.Now
	}
	start := time.Now()
	if env.APIServerPort == 0 {
		env.APIServerPort = 6443
	}
	if env.Since <= 0 {
		env.Since = 6 * time.Hour
	}
	if env.NodeTimeout <= 0 {
		env.NodeTimeout = 8 * time.Second
	}
	if env.Concurrency <= 0 {
		env.Concurrency = 64
	}
	th := env.Thresholds.withDefaults()
	rep := &Report{Time: now(), SinceS: int64(env.Since / time.Second), Port: env.APIServerPort}
	store, reads := env.Store.Counting()

	// etcd and the nodes are read at the same time: the census does not
	// need the nodes, and the nodes' pods are tied to their owners after.
	var wg sync.WaitGroup
	var census *etcd.ClusterCensus
	var censusErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		census, censusErr = store.Census(ctx, etcd.ClusterCensusOptions{Since: env.Since, Now: rep.Time})
	}()
	var sessions, crid, tunnels atomic.Int64
	var results []fanout.ResultOf[*nodeRead]
	var dns *dnsPlan
	if env.Tunnel != nil && env.Runner != nil && len(env.Nodes) > 0 {
		dns = rep.planDNS(ctx, store, env)
	}
	if env.Runner != nil && len(env.Nodes) > 0 {
		r := countingRunner{r: env.Runner, n: &sessions}
		index := map[string]int{}
		for i, t := range env.Nodes {
			index[t.Name] = i
		}
		open := func(ctx context.Context, t nodeops.Target) (Tunnel, error) {
			tunnels.Add(1)
			return env.Tunnel(ctx, t)
		}
		results = fanout.RunOf(ctx, env.Nodes, fanout.OptionsOf[*nodeRead]{Concurrency: env.Concurrency, Timeout: env.NodeTimeout, Retries: 1},
			func(ctx context.Context, t nodeops.Target) (*nodeRead, error) {
				// Cluster DNS is asked beside the node's reads, each
				// server within a quarter of the node's time at most: a
				// healthy one answers in milliseconds.
				var checks []DNSCheck
				var dnsErr error
				done := make(chan struct{})
				go func() {
					defer close(done)
					if dns != nil {
						checks, dnsErr = askDNS(ctx, open, t, dns, index[t.Name], min(2*time.Second, env.NodeTimeout/4))
					}
				}()
				nr, err := readNode(ctx, env, r, &crid, t)
				<-done
				nr.dns, nr.dnsErr = checks, dnsErr
				return nr, err
			})
	} else {
		rep.Notes = append(rep.Notes, "no nodes read (no inventory nodes or no SSH): suspects rest on etcd alone")
	}
	wg.Wait()
	if censusErr != nil {
		return nil, censusErr
	}
	rep.Census = census
	rep.nameFromEtcd(ctx, store, census, results)
	rep.assemble(env, census, results)
	rep.assembleDNS(dns)
	rep.Suspects = rank(rep, census, th)
	for i := range rep.Suspects {
		if rep.Suspects[i].AboveThreshold {
			rep.Suspect = &rep.Suspects[i]
			break
		}
	}
	rep.Reads = reads.Stats()
	rep.SSH = SSHStats{Sessions: sessions.Load(), Containerd: crid.Load(), Tunnels: tunnels.Load(), Nodes: len(results)}
	for _, n := range rep.Nodes {
		if n.Status != string(nodeops.StatusOK) {
			rep.SSH.Failed++
		}
	}
	rep.TookMs = time.Since(start).Milliseconds()
	return rep, nil
}

// readNode reads one node in one SSH session (and, on a control-plane
// node, a second for its API server's health; and a containerd connection
// when pods hold connections).
func readNode(ctx context.Context, env Env, r nodeops.Runner, crid *atomic.Int64, t nodeops.Target) (*nodeRead, error) {
	nr := &nodeRead{}
	var hwg sync.WaitGroup
	if t.HasRole("control-plane") {
		hwg.Add(1)
		go func() {
			defer hwg.Done()
			// /readyz is quick or telling; /metrics is megabytes that a
			// CPU-starved API server renders slowly: it gets the rest of
			// the node's time, less the session's own.
			readyz := min(2*time.Second, env.NodeTimeout/4)
			metrics := max(time.Second, env.NodeTimeout-readyz-1500*time.Millisecond)
			o := apiprobe.Options{Port: env.APIServerPort, Kubeconfigs: env.Kubeconfigs, ReadyzTimeout: readyz, MetricsTimeout: metrics}
			out, err := r.Run(ctx, t, nodeops.Command{Line: apiprobe.Script(o)})
			if err != nil {
				nr.hErr = err
				return
			}
			nr.health, nr.hErr = apiprobe.Parse(out.Stdout)
		}()
	}
	out, err := r.Run(ctx, t, nodeops.Command{Line: netconn.Script(env.APIServerPort)})
	if err == nil {
		nr.table, err = netconn.Parse(out.Stdout, env.APIServerPort)
	}
	if err == nil && env.Containerd != nil && hasPods(nr.table) {
		crid.Add(1)
		var n *pods.Node
		if n, nr.podErr = env.Containerd(ctx, t); nr.podErr == nil {
			nr.pods, nr.podErr = n.Pods(ctx)
			n.Close()
		}
	}
	hwg.Wait()
	if err != nil {
		return nr, err
	}
	return nr, nil
}

func hasPods(t *netconn.Table) bool {
	for _, p := range t.Processes {
		if p.PodUID != "" {
			return true
		}
	}
	return false
}

// assemble turns the node reads into per-node results, the control-plane
// view and the talkers.
func (rep *Report) assemble(env Env, c *etcd.ClusterCensus, results []fanout.ResultOf[*nodeRead]) {
	byAddr := map[netip.Addr]string{}
	for _, t := range env.Nodes {
		if a, err := netip.ParseAddr(t.Address); err == nil {
			byAddr[a] = t.Name
		}
	}
	talkers := map[string]*Talker{}
	var totalOut int
	for _, r := range results {
		nr := NodeResult{Node: r.Target.Name, Status: string(r.Status), TookMs: r.Duration.Milliseconds()}
		if r.Err != nil {
			nr.Error = r.Err.Error()
		}
		read := r.Output
		if read != nil && read.table != nil {
			nr.Outbound = read.table.Outbound()
			nr.Processes = read.table.Processes
			totalOut += nr.Outbound
			nr.Pods = podsOf(read)
			if read.podErr != nil {
				rep.Notes = append(rep.Notes, fmt.Sprintf("node %s: containerd: %v (its pods are named by uid)", r.Target.Name, read.podErr))
			}
			addTalkers(talkers, c, r.Target.Name, read.table, nr.Pods)
		}
		if read != nil {
			nr.DNS = read.dns
			if read.dnsErr != nil {
				rep.Notes = append(rep.Notes, fmt.Sprintf("node %s: cluster DNS not asked: %v", r.Target.Name, firstLine(read.dnsErr.Error())))
			}
		}
		if r.Target.HasRole("control-plane") {
			cp := ControlPlaneNode{Node: r.Target.Name}
			if read != nil {
				cp.Health = read.health
				if read.hErr != nil {
					cp.Error = read.hErr.Error()
				}
				if read.table != nil {
					for _, s := range read.table.BySource() {
						cp.Inbound += s.Conns
						cp.Sources = append(cp.Sources, SourceConns{Address: s.Address.String(), Node: byAddr[s.Address], Conns: s.Conns})
					}
				}
			} else if r.Err != nil {
				cp.Error = r.Err.Error()
			}
			rep.ControlPlane = append(rep.ControlPlane, cp)
		}
		rep.Nodes = append(rep.Nodes, nr)
	}
	rep.Talkers = sortTalkers(talkers, totalOut)
}

// MaxPodsByUID is the most pods the etcd fallback lists (metadata only) to
// name pods that a node's containerd could not.
const MaxPodsByUID = 5000

// nameFromEtcd names, from their objects in etcd, the pods holding
// connections that containerd did not name (unreachable socket, no sudo),
// when the cluster's pods are few enough to list.
func (rep *Report) nameFromEtcd(ctx context.Context, store *etcd.Store, c *etcd.ClusterCensus, results []fanout.ResultOf[*nodeRead]) {
	want := map[string]bool{}
	for _, r := range results {
		if r.Output == nil || r.Output.table == nil {
			continue
		}
		named := map[string]bool{}
		for _, p := range r.Output.pods {
			named[p.UID] = true
		}
		for _, p := range r.Output.table.Processes {
			if p.PodUID != "" && !named[p.PodUID] {
				want[p.PodUID] = true
			}
		}
	}
	if len(want) == 0 {
		return
	}
	if pc := c.Resource("pods"); pc == nil || pc.Objects > MaxPodsByUID {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d pods holding connections are named by uid only: containerd did not name them and the cluster has more than %d pods to look them up in etcd", len(want), MaxPodsByUID))
		return
	}
	found, err := store.PodsByUID(ctx, want)
	if err != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("pods not named from etcd: %v", err))
		return
	}
	for _, r := range results {
		if r.Output == nil || r.Output.table == nil {
			continue
		}
		for _, p := range r.Output.table.Processes {
			if ref, ok := found[p.PodUID]; ok && want[p.PodUID] {
				r.Output.pods = append(r.Output.pods, pods.Pod{Node: r.Target.Name, UID: p.PodUID, Namespace: ref.Namespace, Name: ref.Name, Labels: ref.Labels})
			}
		}
	}
	rep.Notes = append(rep.Notes, fmt.Sprintf("%d of %d pods that containerd did not name were named from etcd", len(found), len(want)))
}
