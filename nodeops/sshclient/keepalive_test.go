package sshclient_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/simssh"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

// simNodes starts one simulated server per mode on loopback and returns
// the targets and client options that trust them.
func simNodes(t *testing.T, modes ...simssh.Mode) ([]nodeops.Target, sshclient.Options) {
	t.Helper()
	dir := t.TempDir()
	hostKey := simssh.NewHostKey()
	clientKey, _, err := sshdtest.WriteKey(filepath.Join(dir, "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	var kh []byte
	var ts []nodeops.Target
	for i, m := range modes {
		srv := simssh.New(m, hostKey)
		l, err := srv.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		host, p, _ := net.SplitHostPort(l.Addr().String())
		port, _ := strconv.Atoi(p)
		ts = append(ts, nodeops.Target{Name: "sim" + strconv.Itoa(i), Address: host, Port: port})
		kh = append(kh, []byte(knownhosts.Line([]string{knownhosts.Normalize(l.Addr().String())}, hostKey.PublicKey())+"\n")...)
	}
	khFile := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(khFile, kh, 0o600); err != nil {
		t.Fatal(err)
	}
	return ts, sshclient.Options{User: "root", IdentityFiles: []string{clientKey}, KnownHosts: []string{khFile}}
}

// waitOpen waits (up to a generous bound: this is not a timing test) until
// the client has want connections open.
func waitOpen(t *testing.T, c *sshclient.Client, want int64) {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if now, _ := c.OpenConnections(); now == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	now, _ := c.OpenConnections()
	t.Fatalf("%d connections open, want %d", now, want)
}

// TestConnectionsClosedWithoutReuse: without ReuseConnections (exec's
// case) no connection outlives its command.
func TestConnectionsClosedWithoutReuse(t *testing.T) {
	ts, o := simNodes(t, simssh.Normal, simssh.Normal, simssh.Normal)
	c := newClient(t, o)
	res := fanout.RunCommand(context.Background(), c, ts, nodeops.Command{Line: "true"}, fanout.Options{Concurrency: 3})
	for _, r := range res {
		if r.Status != nodeops.StatusOK {
			t.Fatalf("%s: %v", r.Target.Name, r.Err)
		}
	}
	if now, peak := c.OpenConnections(); now != 0 || peak < 1 {
		t.Errorf("open %d (want 0), peak %d (want >= 1)", now, peak)
	}
	if c.Dials() != 3 {
		t.Errorf("dials %d, want 3", c.Dials())
	}
}

// TestKeepaliveExpiry keeps idle connections to a server that answers
// keepalives and to one that stops answering them: the latter is closed
// after KeepaliveCountMax intervals, the former stays, and the next step
// on the dead one dials a new connection instead of failing.
func TestKeepaliveExpiry(t *testing.T) {
	ts, o := simNodes(t, simssh.Normal, simssh.NoKeepalive)
	o.ReuseConnections = true
	// Probes every 100ms, dead after 500ms without an answer: slack for a
	// loaded machine, where the live server may answer late.
	o.KeepaliveInterval = 100 * time.Millisecond
	o.KeepaliveCountMax = 5
	c := newClient(t, o)
	for _, tg := range ts {
		if _, err := c.Run(context.Background(), tg, nodeops.Command{Line: "true"}); err != nil {
			t.Fatalf("%s: %v", tg.Name, err)
		}
	}
	// Both idle in the pool; the silent one is closed by its keepalive.
	waitOpen(t, c, 1)
	// Several intervals later the answering one is still open.
	time.Sleep(2 * time.Duration(o.KeepaliveCountMax) * o.KeepaliveInterval)
	if now, _ := c.OpenConnections(); now != 1 {
		t.Fatalf("%d open, want 1: the server that answers keepalives lost its connection", now)
	}
	dials := c.Dials()
	if _, err := c.Run(context.Background(), ts[0], nodeops.Command{Line: "true"}); err != nil {
		t.Fatal(err)
	}
	if c.Dials() != dials {
		t.Errorf("the live idle connection was not reused")
	}
	if _, err := c.Run(context.Background(), ts[1], nodeops.Command{Line: "true"}); err != nil {
		t.Fatalf("after keepalive expiry: %v", err)
	}
	if c.Dials() != dials+1 {
		t.Errorf("dials %d, want %d: the expired connection must be replaced", c.Dials(), dials+1)
	}
}
