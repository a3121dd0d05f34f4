package sshclient_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/simssh"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

func targets(fx *sshdtest.Fixture) []nodeops.Target {
	var ts []nodeops.Target
	for _, s := range fx.Servers {
		ts = append(ts, nodeops.Target{Name: s.Name, Address: s.Host, Port: s.Port})
	}
	return ts
}

func newClient(t *testing.T, o sshclient.Options) *sshclient.Client {
	t.Helper()
	if o.HandshakeTimeout == 0 {
		o.DialTimeout, o.HandshakeTimeout, o.AuthTimeout, o.SessionTimeout = 5*time.Second, 5*time.Second, 5*time.Second, 5*time.Second
	}
	c, err := sshclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fixtureOptions trusts the fixture's known_hosts. The global known_hosts
// is a file of the fixture's (absent unless a test writes it), so that
// tests never read the machine's /etc/ssh/ssh_known_hosts.
func fixtureOptions(fx *sshdtest.Fixture) sshclient.Options {
	return sshclient.Options{User: "root", IdentityFiles: []string{fx.ClientKey}, KnownHosts: []string{fx.KnownHosts},
		GlobalKnownHosts: []string{filepath.Join(fx.Dir, "ssh_known_hosts")}}
}

// checkNoLeak waits for the goroutine count to come back to base.
func checkNoLeak(t *testing.T, base int) {
	t.Helper()
	var n int
	for i := 0; i < 100; i++ {
		if n = runtime.NumGoroutine(); n <= base {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Errorf("goroutines: %d, want at most %d\n%s", n, base, buf)
}

func TestExecOnRealSSHD(t *testing.T) {
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	o := fixtureOptions(fx)
	o.ReuseConnections = true
	c := newClient(t, o)
	var events []fanout.Event
	res := fanout.RunCommand(context.Background(), c, targets(fx), nodeops.Command{Line: "echo hello; id -u"},
		fanout.Options{Concurrency: 8, OnEvent: func(e fanout.Event) { events = append(events, e) }})
	for i, r := range res {
		if r.Status != nodeops.StatusOK || r.ExitCode != 0 {
			t.Fatalf("%s: %s %v", r.Target.Name, r.Status, r.Err)
		}
		if got := string(r.Output.Stdout); got != "hello\n0\n" {
			t.Errorf("%s stdout %q", r.Target.Name, got)
		}
		if r.Index != i || r.Target.Name != fx.Servers[i].Name {
			t.Errorf("result %d is %s", i, r.Target.Name)
		}
	}
	started, finished := 0, 0
	for _, e := range events {
		switch e.Type {
		case fanout.EventStarted:
			started++
		case fanout.EventFinished:
			finished++
		}
	}
	if started != 3 || finished != 3 {
		t.Errorf("events: %d started, %d finished", started, finished)
	}

	// A later step of the same run reuses the idle connections.
	dials := c.Dials()
	res = fanout.RunCommand(context.Background(), c, targets(fx), nodeops.Command{Line: "exit 7"}, fanout.Options{Concurrency: 8})
	for _, r := range res {
		if r.Status != nodeops.StatusFailed || r.ExitCode != 7 || r.Reason != "exit" {
			t.Errorf("%s: %s %s exit %d %v", r.Target.Name, r.Status, r.Reason, r.ExitCode, r.Err)
		}
	}
	if c.Dials() != dials {
		t.Errorf("second step dialled %d new connections, want 0", c.Dials()-dials)
	}
}

func TestChangedHostKeyRefusedOthersProceed(t *testing.T) {
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	// Replace node2's line with another key, as after a reinstall.
	_, other, err := sshdtest.WriteKey(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i, s := range fx.Servers {
		k := s.HostKey
		if i == 1 {
			k = other
		}
		lines = append(lines, knownhosts.Line([]string{knownhosts.Normalize(s.Addr())}, k))
	}
	os.WriteFile(fx.KnownHosts, []byte(strings.Join(lines, "\n")+"\n"), 0o600)

	c := newClient(t, fixtureOptions(fx))
	res := fanout.RunCommand(context.Background(), c, targets(fx), nodeops.Command{Line: "true"}, fanout.Options{Concurrency: 8})
	if res[0].Status != nodeops.StatusOK || res[2].Status != nodeops.StatusOK {
		t.Fatalf("other nodes: %v / %v", res[0].Err, res[2].Err)
	}
	r := res[1]
	if r.Status != nodeops.StatusRefused || r.Reason != "host-key-changed" || r.Attempts != 1 {
		t.Fatalf("node2: %s %s attempts %d: %v", r.Status, r.Reason, r.Attempts, r.Err)
	}
	msg := r.Err.Error()
	for _, want := range []string{ssh.FingerprintSHA256(fx.Servers[1].HostKey), ssh.FingerprintSHA256(other), fx.KnownHosts + ":2", "hint: "} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not name %q:\n%s", want, msg)
		}
	}
}

func TestUnknownHostRefusedUnlessAccepted(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	kh := filepath.Join(t.TempDir(), "known_hosts")
	o := fixtureOptions(fx)
	o.KnownHosts = []string{kh}
	ts := targets(fx)

	_, err := newClient(t, o).Run(context.Background(), ts[0], nodeops.Command{Line: "true"})
	if st, reason := nodeops.StatusOf(err); st != nodeops.StatusRefused || reason != "host-key-unknown" {
		t.Fatalf("unknown host: %s %s: %v", st, reason, err)
	}
	if !strings.Contains(err.Error(), "--accept-new-host-keys") {
		t.Errorf("no hint: %v", err)
	}

	o.AcceptNewHostKeys = true
	if _, err := newClient(t, o).Run(context.Background(), ts[0], nodeops.Command{Line: "true"}); err != nil {
		t.Fatalf("accept-new: %v", err)
	}
	b, _ := os.ReadFile(kh)
	want := knownhosts.Line([]string{knownhosts.Normalize(fx.Servers[0].Addr())}, fx.Servers[0].HostKey)
	if strings.TrimSpace(string(b)) != want {
		t.Fatalf("known_hosts: %q, want %q", b, want)
	}
	// Recorded: a client without accept-new now trusts it.
	o.AcceptNewHostKeys = false
	if _, err := newClient(t, o).Run(context.Background(), ts[0], nodeops.Command{Line: "true"}); err != nil {
		t.Fatalf("after recording: %v", err)
	}
}

func TestHostKeyAlgorithmsFromKnownHosts(t *testing.T) {
	// sshd offers ed25519 and rsa; known_hosts has only the rsa key, so the
	// client must ask for rsa rather than refuse the ed25519 key.
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	s := fx.Servers[0]
	rsaKey := filepath.Join(t.TempDir(), "ssh_host_rsa_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsaKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	cfg, _ := os.ReadFile(s.Config)
	os.WriteFile(s.Config, append(cfg, []byte("HostKey "+rsaKey+"\n")...), 0o600)
	s.Kill()
	restart(t, s)
	pubText, _ := os.ReadFile(rsaKey + ".pub")
	pub, _, _, _, err := ssh.ParseAuthorizedKey(pubText)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(fx.KnownHosts, []byte(knownhosts.Line([]string{knownhosts.Normalize(s.Addr())}, pub)+"\n"), 0o600)
	c := newClient(t, fixtureOptions(fx))
	if _, err := c.Run(context.Background(), targets(fx)[0], nodeops.Command{Line: "true"}); err != nil {
		t.Fatalf("rsa-only known_hosts: %v", err)
	}
}

// restart starts sshd again with its (edited) config.
func restart(t *testing.T, s *sshdtest.Server) {
	t.Helper()
	cmd := exec.Command(sshdtest.SSHD, "-D", "-e", "-f", s.Config)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", s.Addr()); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("sshd did not come back on %s", s.Addr())
}

func TestAuthFailure(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	stranger, _, err := sshdtest.WriteKey(filepath.Join(t.TempDir(), "stranger"))
	if err != nil {
		t.Fatal(err)
	}
	o := fixtureOptions(fx)
	o.IdentityFiles = []string{stranger}
	_, err = newClient(t, o).Run(context.Background(), targets(fx)[0], nodeops.Command{Line: "true"})
	var ne *nodeops.Error
	if !errors.As(err, &ne) || ne.Status != nodeops.StatusRefused || ne.Reason != "auth" || ne.Phase != nodeops.PhaseAuth {
		t.Fatalf("want refused auth, got %v", err)
	}
	if !strings.Contains(err.Error(), "hint: ") {
		t.Errorf("no hint: %v", err)
	}
}

func TestNodeKilledMidCommand(t *testing.T) {
	fx := sshdtest.Start(t, 2, sshdtest.Options{})
	c := newClient(t, fixtureOptions(fx))
	base := runtime.NumGoroutine()
	// A command line no other test runs, so that pgrep finds only ours.
	marker := fmt.Sprintf("sleep 31.%d", time.Now().UnixNano()%1000000)
	go func() {
		// Kill node1 (sshd and its sessions) once the command runs there.
		for i := 0; i < 500; i++ {
			out, _ := exec.Command("pgrep", "-f", marker).Output()
			if len(out) > 0 {
				fx.Servers[0].Kill()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	ts := targets(fx)
	res := fanout.Run(context.Background(), ts, fanout.Options{Concurrency: 2}, func(ctx context.Context, tg nodeops.Target) (nodeops.Output, error) {
		line := "true"
		if tg.Name == "node1" {
			line = marker
		}
		return c.Run(ctx, tg, nodeops.Command{Line: line})
	})
	if r := res[0]; r.Status != nodeops.StatusFailed || r.Reason != "connection-lost" || r.Attempts != 1 {
		t.Fatalf("killed node: %s %s attempts %d: %v", r.Status, r.Reason, r.Attempts, r.Err)
	}
	if res[1].Status != nodeops.StatusOK {
		t.Fatalf("other node: %v", res[1].Err)
	}
	c.Close()
	checkNoLeak(t, base)
}

// TestStalledServersEndWithinDeadline covers the servers that hang: a
// tarpit, one that stalls after the key exchange and one that never opens
// a session, plus a refused port and a port where traffic is dropped. Each
// ends in its own phase's timeout, is reported once, and leaves no
// goroutine behind.
func TestStalledServersEndWithinDeadline(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	hostKey := simssh.NewHostKey()
	kh, _ := os.ReadFile(fx.KnownHosts)
	var ts []nodeops.Target
	var servers []*simssh.Server
	base := runtime.NumGoroutine()
	ts = append(ts, targets(fx)...)
	add := func(name, addr string) {
		host, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		ts = append(ts, nodeops.Target{Name: name, Address: host, Port: port})
		kh = append(kh, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostKey.PublicKey())+"\n")...)
	}
	for _, m := range []struct {
		name string
		mode simssh.Mode
	}{{"tarpit", simssh.Tarpit}, {"stall-auth", simssh.StallAuth}, {"stall-session", simssh.StallSession}, {"hang", simssh.Hang}} {
		srv := simssh.New(m.mode, hostKey)
		servers = append(servers, srv)
		l, err := srv.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		add(m.name, l.Addr().String())
	}
	// A port nobody listens on.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := l.Addr().String()
	l.Close()
	add("refused", refused)
	if dropped, ok := dropAddress(t); ok {
		add("dropped", dropped)
	}
	os.WriteFile(fx.KnownHosts, kh, 0o600)

	o := fixtureOptions(fx)
	o.DialTimeout, o.HandshakeTimeout, o.AuthTimeout, o.SessionTimeout = 700*time.Millisecond, 700*time.Millisecond, 700*time.Millisecond, 700*time.Millisecond
	o.CommandTimeout = 700 * time.Millisecond
	c, err := sshclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	var ends = map[string]int{}
	res := fanout.RunCommand(context.Background(), c, ts, nodeops.Command{Line: "true"},
		fanout.Options{Concurrency: 16, Backoff: 10 * time.Millisecond, OnEvent: func(e fanout.Event) {
			if e.Result != nil {
				ends[e.Target.Name]++
			}
		}})
	want := map[string]struct {
		status nodeops.Status
		reason string
		phase  nodeops.Phase
	}{
		"node1":         {nodeops.StatusOK, "", ""},
		"tarpit":        {nodeops.StatusUnreachable, "timeout", nodeops.PhaseHandshake},
		"stall-auth":    {nodeops.StatusUnreachable, "timeout", nodeops.PhaseAuth},
		"stall-session": {nodeops.StatusUnreachable, "timeout", nodeops.PhaseSession},
		"hang":          {nodeops.StatusFailed, "timeout", nodeops.PhaseCommand},
		"refused":       {nodeops.StatusUnreachable, "connection-refused", nodeops.PhaseDial},
		"dropped":       {nodeops.StatusUnreachable, "timeout", nodeops.PhaseDial},
	}
	for _, r := range res {
		w := want[r.Target.Name]
		var ne *nodeops.Error
		errors.As(r.Err, &ne)
		phase := nodeops.Phase("")
		if ne != nil {
			phase = ne.Phase
		}
		if r.Status != w.status || r.Reason != w.reason || phase != w.phase {
			t.Errorf("%s: %s/%s/%s, want %s/%s/%s: %v", r.Target.Name, r.Status, r.Reason, phase, w.status, w.reason, w.phase, r.Err)
		}
		if ends[r.Target.Name] != 1 {
			t.Errorf("%s reported %d times", r.Target.Name, ends[r.Target.Name])
		}
		t.Logf("%-14s %-12s %-20s %6s attempts=%d", r.Target.Name, r.Status, r.Reason, r.Duration.Round(time.Millisecond), r.Attempts)
	}
	if r := res[len(ts)-1]; r.Target.Name == "refused" && r.Attempts != 3 {
		t.Errorf("connection refused was tried %d times, want 3 (retried)", r.Attempts)
	}
	c.Close()
	// The simulated servers run in this process: stop them, then what is
	// left over would be the client's.
	for _, srv := range servers {
		srv.Close()
	}
	checkNoLeak(t, base)
}

// dropAddress returns an address whose SYNs nft drops, in a table of our
// own that is removed when the test ends.
func dropAddress(t *testing.T) (string, bool) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Log("nft not installed: skipping the dropped-traffic node")
		return "", false
	}
	table := fmt.Sprintf("bg_nodeops_test_%d", os.Getpid())
	addr := "127.203.0.1:22"
	script := fmt.Sprintf(`table inet %s {
	chain out { type filter hook output priority 0; policy accept; ip daddr 127.203.0.1 tcp dport 22 drop; }
}`, table)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("nft: %v %s: skipping the dropped-traffic node", err, out)
		return "", false
	}
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", table).Run() })
	return addr, true
}

func TestJumpHost(t *testing.T) {
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	bastion := fx.Servers[0]
	o := fixtureOptions(fx)
	o.JumpHost = "root@" + bastion.Addr()
	o.JumpHandshakes = 1
	c := newClient(t, o)
	ts := targets(fx)[1:]
	res := fanout.RunCommand(context.Background(), c, ts, nodeops.Command{Line: "echo $SSH_CONNECTION"}, fanout.Options{Concurrency: 4})
	for _, r := range res {
		if r.Status != nodeops.StatusOK {
			t.Fatalf("%s: %v", r.Target.Name, r.Err)
		}
		// Through the bastion, the node sees a connection from the bastion's
		// sshd, not from this process's socket.
		t.Logf("%s: %s", r.Target.Name, strings.TrimSpace(string(r.Output.Stdout)))
	}
	if got := c.JumpConnections(); got != 1 {
		t.Errorf("jump connections: %d, want 1 shared", got)
	}

	// A jump host that cannot be reached makes every node behind it
	// unreachable, each with its own result.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	o.JumpHost = "root@" + dead
	c2 := newClient(t, o)
	res = fanout.RunCommand(context.Background(), c2, ts, nodeops.Command{Line: "true"}, fanout.Options{Concurrency: 4, Retries: -1})
	for _, r := range res {
		if r.Status != nodeops.StatusUnreachable || r.Reason != "jump-host" {
			t.Errorf("%s behind a dead jump host: %s %s %v", r.Target.Name, r.Status, r.Reason, r.Err)
		}
	}
}
