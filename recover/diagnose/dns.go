package diagnose

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/dnsprobe"
)

// Tunnel is one SSH connection to a node that TCP connections are opened
// from (sshclient.Tunnel).
type Tunnel interface {
	Dial(ctx context.Context, addr string) (net.Conn, error)
	Close() error
}

// DefaultDNSService is the cluster DNS Service of kubeadm and most
// distributions (CoreDNS keeps kube-dns's name).
const DefaultDNSService = "kube-system/kube-dns"

// MaxDNSEndpoints is how many of the DNS Service's servers each node asks
// besides the Service's address; the nodes take turns, so that every
// server is asked by some node.
const MaxDNSEndpoints = 3

// DNSReport is the cluster DNS as the nodes see it: the blast radius of an
// API server that CoreDNS cannot sync with (December 2024: service
// discovery failed once the caches expired).
type DNSReport struct {
	// Service and ClusterIP are the DNS Service (kubelet's clusterDNS);
	// Endpoints the servers behind it, from its EndpointSlices in etcd.
	Service   string             `json:"service"`
	ClusterIP string             `json:"clusterIP,omitempty"`
	Endpoints []etcd.DNSEndpoint `json:"endpoints"`
	// Name is the question asked from every node (an A query over TCP,
	// through the node's SSH connection); Want the address a good answer
	// has (default/kubernetes's cluster IP).
	Name string `json:"name"`
	Want string `json:"want,omitempty"`
	// Nodes were asked; Answered got a good answer from the Service's
	// address (or, without one, from a server behind it); Failing are the
	// others (at most MaxNotReady names), with the answers' codes counted
	// in Rcodes (TIMEOUT and UNREACHABLE where none came).
	Nodes    int            `json:"nodes"`
	Answered int            `json:"answered"`
	Failing  []string       `json:"failing,omitempty"`
	Rcodes   map[string]int `json:"rcodes,omitempty"`
	// Servers is, per server asked, how many nodes got a good answer
	// from it and how many asked.
	Servers []DNSServerStat `json:"servers,omitempty"`
}

// DNSServerStat is one DNS server's answers across the nodes.
type DNSServerStat struct {
	Server   string `json:"server"`
	Service  bool   `json:"service,omitempty"`
	Asked    int    `json:"asked"`
	Answered int    `json:"answered"`
	// MedianMs is the median time of its answers (good or not).
	MedianMs int64 `json:"medianMs"`
}

// DNSCheck is one question asked from one node.
type DNSCheck struct {
	Server string `json:"server"`
	// Service marks the Service's own address (what pods ask).
	Service   bool     `json:"service,omitempty"`
	Rcode     string   `json:"rcode,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
	Ms        int64    `json:"ms"`
	OK        bool     `json:"ok"`
	Error     string   `json:"error,omitempty"`
}

// dnsPlan is what every node asks.
type dnsPlan struct {
	d    *etcd.ClusterDNS
	name string
}

// targets are the checks node i makes: the Service's address, then up
// to MaxDNSEndpoints of its servers starting at i, ready ones first.
func (p *dnsPlan) targets(i int) []DNSCheck {
	var out []DNSCheck
	if p.d.ClusterIP != "" {
		out = append(out, DNSCheck{Server: net.JoinHostPort(p.d.ClusterIP, fmt.Sprint(p.d.Port)), Service: true})
	}
	eps := append([]etcd.DNSEndpoint(nil), p.d.Endpoints...)
	sort.SliceStable(eps, func(a, b int) bool { return eps[a].Ready && !eps[b].Ready })
	for k := 0; k < len(eps) && k < MaxDNSEndpoints; k++ {
		out = append(out, DNSCheck{Server: eps[(i+k)%len(eps)].Address})
	}
	return out
}

// askDNS asks every target from node t through one tunnel, at once, each
// within timeout.
func askDNS(ctx context.Context, open func(context.Context, nodeops.Target) (Tunnel, error), t nodeops.Target, p *dnsPlan, idx int, timeout time.Duration) ([]DNSCheck, error) {
	checks := p.targets(idx)
	if len(checks) == 0 {
		return nil, nil
	}
	tu, err := open(ctx, t)
	if err != nil {
		return nil, err
	}
	defer tu.Close()
	var wg sync.WaitGroup
	for i := range checks {
		wg.Add(1)
		go func(c *DNSCheck) {
			defer wg.Done()
			qctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			start := time.Now()
			conn, err := tu.Dial(qctx, c.Server)
			if err != nil {
				c.Rcode, c.Error = "UNREACHABLE", err.Error()
				c.Ms = time.Since(start).Milliseconds()
				return
			}
			defer conn.Close()
			a, err := dnsprobe.Query(qctx, conn, p.name)
			c.Ms = time.Since(start).Milliseconds()
			if err != nil {
				c.Rcode, c.Error = "ERROR", err.Error()
				if errors.Is(err, context.DeadlineExceeded) {
					c.Rcode = "TIMEOUT"
				}
				return
			}
			c.Rcode, c.Addresses, c.OK = a.Rcode, a.Addresses, a.OK(p.d.KubernetesIP)
		}(&checks[i])
	}
	wg.Wait()
	return checks, nil
}

// dnsVerdict is whether node's checks show cluster DNS working there: the
// Service's address answered well, or, with no Service address, a server.
func dnsVerdict(checks []DNSCheck) (ok bool, rcode string) {
	for _, c := range checks {
		if c.Service {
			return c.OK, c.Rcode
		}
	}
	for _, c := range checks {
		if c.OK {
			return true, c.Rcode
		}
		rcode = c.Rcode
	}
	return false, rcode
}

// assembleDNS sums up the nodes' checks.
func (rep *Report) assembleDNS(p *dnsPlan) {
	if p == nil {
		return
	}
	d := &DNSReport{Service: p.d.Service, ClusterIP: p.d.ClusterIP, Endpoints: p.d.Endpoints, Name: p.name, Want: p.d.KubernetesIP, Rcodes: map[string]int{}}
	stats := map[string]*DNSServerStat{}
	times := map[string][]int64{}
	var order []string
	for _, n := range rep.Nodes {
		if n.DNS == nil {
			continue
		}
		d.Nodes++
		ok, rcode := dnsVerdict(n.DNS)
		if ok {
			d.Answered++
		} else {
			if len(d.Failing) < etcd.MaxNotReady {
				d.Failing = append(d.Failing, n.Node)
			}
			if rcode != "" {
				d.Rcodes[rcode]++
			}
		}
		for _, c := range n.DNS {
			s := stats[c.Server]
			if s == nil {
				s = &DNSServerStat{Server: c.Server, Service: c.Service}
				stats[c.Server] = s
				order = append(order, c.Server)
			}
			s.Asked++
			if c.OK {
				s.Answered++
			}
			times[c.Server] = append(times[c.Server], c.Ms)
		}
	}
	for _, srv := range order {
		s := stats[srv]
		ts := times[srv]
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		s.MedianMs = ts[len(ts)/2]
		d.Servers = append(d.Servers, *s)
	}
	rep.DNS = d
}

// Line is the report's one line on cluster DNS.
func (d *DNSReport) Line() string {
	addr := d.ClusterIP
	if addr == "" {
		addr = "no cluster IP"
	}
	s := fmt.Sprintf("cluster DNS %s (%s): answered on %d of %d nodes", d.Service, addr, d.Answered, d.Nodes)
	if len(d.Rcodes) > 0 {
		var codes []string
		for c, n := range d.Rcodes {
			codes = append(codes, fmt.Sprintf("%s %d", c, n))
		}
		sort.Strings(codes)
		s += " (" + strings.Join(codes, ", ") + ")"
		if d.Rcodes["SERVFAIL"] > 0 {
			s += ": SERVFAIL for a Service name is what CoreDNS answers while it has not synced with the API server"
		}
	}
	return s
}

// planDNS reads the cluster DNS Service from etcd; with none, or when it
// cannot be read, DNS is not asked and a note says why.
func (rep *Report) planDNS(ctx context.Context, store *etcd.Store, env Env) *dnsPlan {
	svc := env.DNSService
	if svc == "" {
		svc = DefaultDNSService
	}
	domain := strings.Trim(env.ClusterDomain, ".")
	if domain == "" {
		domain = "cluster.local"
	}
	ns, name, ok := strings.Cut(svc, "/")
	if !ok || ns == "" || name == "" {
		rep.Notes = append(rep.Notes, fmt.Sprintf("cluster DNS not asked: service %q is not NAMESPACE/NAME", svc))
		return nil
	}
	d, err := store.ClusterDNS(ctx, ns, name)
	if err != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("cluster DNS not asked: %v", err))
		return nil
	}
	if d.ClusterIP == "" && len(d.Endpoints) == 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("cluster DNS not asked: service %s has no cluster IP and no endpoints", svc))
		return nil
	}
	return &dnsPlan{d: d, name: "kubernetes.default.svc." + domain + "."}
}
