package diagnose_test

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/dnsprobe/dnstest"
	"github.com/breakglass/breakglass/recover/diagnose"
)

// dnsService writes kube-system/kube-dns with cluster IP svcAddr's host and
// port, one EndpointSlice with the endpoints, and default/kubernetes.
func (c *cluster) dnsService(svcAddr string, endpoints ...string) {
	c.t.Helper()
	host, port := splitAddr(c.t, svcAddr)
	c.put("services", "kube-system", "kube-dns", &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system"},
		Spec:       corev1.ServiceSpec{ClusterIP: host, Ports: []corev1.ServicePort{{Name: "dns-tcp", Port: int32(port), Protocol: corev1.ProtocolTCP}}},
	}, "", "v1", "Service")
	c.put("services", "default", "kubernetes", &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1"},
	}, "", "v1", "Service")
	for i, ep := range endpoints {
		h, p := splitAddr(c.t, ep)
		name := "kube-dns-" + strconv.Itoa(i)
		c.put("endpointslices", "kube-system", name, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: map[string]string{discoveryv1.LabelServiceName: "kube-dns"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("dns-tcp"), Port: ptr.To(int32(p))}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{h}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		}, "discovery.k8s.io", "v1", "EndpointSlice")
	}
}

func splitAddr(t *testing.T, addr string) (string, int) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

// Real etcd, real sshd: the DNS Service's address and its servers are
// asked from every node through its SSH connection. A good Service answer
// makes the node answered, whatever a server behind it says; a server that
// answers SERVFAIL (CoreDNS not synced) is counted as such.
func TestRunAsksClusterDNSFromEveryNode(t *testing.T) {
	c := newCluster(t)
	c.node("n1")
	good := dnstest.Start(t, dnstest.Server{Name: "kubernetes.default.svc.cluster.local.", Address: "10.96.0.1"})
	unsynced := dnstest.Start(t, dnstest.Server{Rcode: dnsmessage.RCodeServerFailure})
	c.dnsService(good, unsynced)
	ssh, targets := sshEnv(t, 2)
	env := diagnose.Env{Store: c.store, Runner: ssh, Nodes: targets, APIServerPort: holdConns(t, 1), NodeTimeout: 20 * time.Second,
		Tunnel: func(ctx context.Context, t nodeops.Target) (diagnose.Tunnel, error) { return ssh.OpenTunnel(ctx, t) }}
	rep, err := diagnose.Run(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	d := rep.DNS
	if d == nil {
		t.Fatalf("no DNS report; notes: %v", rep.Notes)
	}
	if d.Nodes != 2 || d.Answered != 2 || len(d.Failing) != 0 || d.Want != "10.96.0.1" || d.Name != "kubernetes.default.svc.cluster.local." {
		t.Errorf("dns: %+v", d)
	}
	if len(d.Servers) != 2 || !d.Servers[0].Service || d.Servers[0].Answered != 2 || d.Servers[1].Server != unsynced || d.Servers[1].Asked != 2 || d.Servers[1].Answered != 0 {
		t.Errorf("servers: %+v", d.Servers)
	}
	for _, n := range rep.Nodes {
		if len(n.DNS) != 2 || n.DNS[1].Rcode != "SERVFAIL" || n.DNS[0].Addresses[0] != "10.96.0.1" {
			t.Errorf("node %s: %+v", n.Node, n.DNS)
		}
	}
	if rep.SSH.Tunnels != 2 {
		t.Errorf("tunnels: %d, want one per node", rep.SSH.Tunnels)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "cluster DNS kube-system/kube-dns (127.0.0.1): answered on 2 of 2 nodes") || !strings.Contains(text.String(), "2 DNS tunnels") {
		t.Errorf("text:\n%s", text.String())
	}
}

// The December 2024 blast radius: the Service answers SERVFAIL (its
// CoreDNS cannot sync) and the node is failing; a Service address where
// nothing listens is failing too, as UNREACHABLE; nothing is asked (and a
// note says why) without the Service in etcd.
func TestRunReportsClusterDNSFailing(t *testing.T) {
	c := newCluster(t)
	c.node("n1")
	unsynced := dnstest.Start(t, dnstest.Server{Rcode: dnsmessage.RCodeServerFailure})
	ssh, targets := sshEnv(t, 1)
	env := diagnose.Env{Store: c.store, Runner: ssh, Nodes: targets, APIServerPort: holdConns(t, 1), NodeTimeout: 20 * time.Second,
		Tunnel: func(ctx context.Context, t nodeops.Target) (diagnose.Tunnel, error) { return ssh.OpenTunnel(ctx, t) }}

	rep, err := diagnose.Run(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	if rep.DNS != nil || !strings.Contains(strings.Join(rep.Notes, "\n"), "cluster DNS not asked: no cluster DNS service") {
		t.Errorf("without a DNS Service: dns %+v, notes %v", rep.DNS, rep.Notes)
	}

	c.dnsService(unsynced)
	rep, err = diagnose.Run(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	if d := rep.DNS; d == nil || d.Answered != 0 || len(d.Failing) != 1 || d.Rcodes["SERVFAIL"] != 1 {
		t.Fatalf("servfail: %+v", d)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "answered on 0 of 1 nodes (SERVFAIL 1): SERVFAIL for a Service name") {
		t.Errorf("text:\n%s", text.String())
	}

	// Nothing listens on a port of a closed listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	c.dnsService(closed)
	rep, err = diagnose.Run(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	if d := rep.DNS; d == nil || d.Answered != 0 || d.Rcodes["UNREACHABLE"] != 1 || rep.Nodes[0].DNS[0].Error == "" {
		t.Fatalf("unreachable: %+v %+v", d, rep.Nodes)
	}
}
