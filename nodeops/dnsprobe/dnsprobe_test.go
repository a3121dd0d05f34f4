package dnsprobe_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/breakglass/breakglass/nodeops/dnsprobe"
	"github.com/breakglass/breakglass/nodeops/dnsprobe/dnstest"
)

const kubernetes = "kubernetes.default.svc.cluster.local."

func query(t *testing.T, addr, name string, timeout time.Duration) (dnsprobe.Answer, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return dnsprobe.Query(ctx, c, name)
}

func TestQuery(t *testing.T) {
	addr := dnstest.Start(t, dnstest.Server{Name: kubernetes, Address: "10.96.0.1"})
	a, err := query(t, addr, "kubernetes.default.svc.cluster.local", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if a.Rcode != "NOERROR" || len(a.Addresses) != 1 || a.Addresses[0] != "10.96.0.1" || !a.OK("10.96.0.1") || !a.OK("") {
		t.Errorf("answer: %+v", a)
	}
	if a.OK("10.96.0.2") {
		t.Errorf("OK with an address the answer does not have")
	}
	a, err = query(t, addr, "other.default.svc.cluster.local.", 5*time.Second)
	if err != nil || a.Rcode != "NXDOMAIN" || a.OK("") {
		t.Errorf("an unknown name: %+v, %v", a, err)
	}
}

func TestQueryServerFailure(t *testing.T) {
	a, err := query(t, dnstest.Start(t, dnstest.Server{Rcode: dnsmessage.RCodeServerFailure}), kubernetes, 5*time.Second)
	if err != nil || a.Rcode != "SERVFAIL" || a.OK("") {
		t.Errorf("answer %+v, err %v", a, err)
	}
}

func TestQueryTimesOut(t *testing.T) {
	_, err := query(t, dnstest.Start(t, dnstest.Server{Stall: true}), kubernetes, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("a server that never answers: err = %v, want the deadline", err)
	}
}

func TestQueryBadName(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	if _, err := dnsprobe.Query(context.Background(), c1, strings.Repeat("a", 300)); err == nil {
		t.Fatal("a name longer than 255 bytes was sent")
	}
}

func TestRcodeName(t *testing.T) {
	if dnsprobe.RcodeName(dnsmessage.RCodeServerFailure) != "SERVFAIL" || dnsprobe.RcodeName(17) != "RCODE17" {
		t.Errorf("names: %s %s", dnsprobe.RcodeName(dnsmessage.RCodeServerFailure), dnsprobe.RcodeName(17))
	}
}
