package iptables_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/breakglass/breakglass/nodeops/iptables"
	"github.com/breakglass/breakglass/nodeops/nft"
)

// These tests run the real iptables, in network namespaces of their own
// (bgipttest-PID-N), so that nothing touches the host's rules or the lab's.

var seq atomic.Int64

type netns struct{ name string }

func newNetns(t *testing.T) *netns {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping the tests against the real iptables")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: the tests against the real iptables need root")
	}
	for _, bin := range []string{"iptables-restore", "iptables-save", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: %s is not installed", bin)
		}
	}
	n := &netns{name: fmt.Sprintf("bgipttest-%d-%d", os.Getpid(), seq.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", n.name).Run() })
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "10.99.0.1/24", "dev", "lo"}, {"addr", "add", "10.99.0.2/24", "dev", "lo"}, {"addr", "add", "10.99.0.3/24", "dev", "lo"}} {
		if out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	return n
}

// sh runs a shell script in the namespace.
func (n *netns) sh(t *testing.T, script string) string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.name, "sh", "-c", script)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("script:\n%s\n%v: %s", script, err, errOut.String())
	}
	return out.String()
}

func (n *netns) state(t *testing.T) nft.State {
	t.Helper()
	v4 := n.sh(t, "iptables-save -c -t filter")
	v6 := n.sh(t, "ip6tables-save -c -t filter 2>/dev/null || true")
	st, err := iptables.Parse(v4, v6, time.Now())
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, v4)
	}
	return st
}

func (n *netns) run(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + n.name)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func (n *netns) listen(t *testing.T, addr string) {
	t.Helper()
	var ln net.Listener
	if err := n.run(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
}

func (n *netns) dial(src, dst string, timeout time.Duration) error {
	return n.run(func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", dst)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		buf := make([]byte, 2)
		if _, err := c.Read(buf); err != nil {
			return err
		}
		return nil
	})
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		ok, last := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waited %v for %s; last: %s", timeout, what, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func spec(mode nft.Mode, rate int) nft.Spec {
	return nft.Spec{Port: 6443, Mode: mode, Rate: rate, Allow: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/32"), netip.MustParsePrefix("::1/128")},
		TTL: 15 * time.Minute, Change: "20261203T070000-abc123"}
}

func load(t *testing.T, n *netns, s nft.Spec, ttl time.Duration) {
	t.Helper()
	v4, v6, err := iptables.Render(s)
	if err != nil {
		t.Fatal(err)
	}
	n.sh(t, iptables.ApplyScript(v4, v6, ttl))
}

// A reject shed refuses other sources at once and lets the allowed one
// through; it reads back as loaded; applying it again gives one jump; its
// date passes on the node and it ends by itself; lift removes the chain and
// the jump, and leaves another chain alone.
func TestShedOnRealIptables(t *testing.T) {
	n := newNetns(t)
	n.listen(t, "10.99.0.1:6443")
	n.sh(t, "iptables -N OTHERS && iptables -A OTHERS -p tcp --dport 6443 && iptables -A INPUT -j OTHERS")
	if got := n.sh(t, iptables.ChangeScript()); strings.TrimSpace(got) != "absent" {
		t.Fatalf("ChangeScript before any shed: %q, want absent", got)
	}
	load(t, n, spec(nft.ModeReject, 0), 4*time.Second)
	load(t, n, spec(nft.ModeReject, 0), 4*time.Second) // again: still one jump
	if c := strings.Count(n.sh(t, "iptables -S INPUT"), "-j "+iptables.Chain); c != 1 {
		t.Errorf("%d jumps to %s in INPUT, want 1", c, iptables.Chain)
	}
	if err := n.dial("10.99.0.2", "10.99.0.1:6443", time.Second); err != nil {
		t.Errorf("the allowed source was refused: %v", err)
	}
	err := n.dial("10.99.0.3", "10.99.0.1:6443", time.Second)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("another source: %v, want connection refused (a TCP reset)", err)
	}
	st := n.state(t)
	if !st.Present || !st.Active || st.Mode != nft.ModeReject || st.Port != 6443 || st.Change != "20261203T070000-abc123" || st.Packets == 0 {
		t.Errorf("state read back: %+v", st)
	}
	if st.Remaining <= 0 || st.Remaining > 5*time.Second {
		t.Errorf("remaining %v, want up to 4s", st.Remaining)
	}
	if fmt.Sprint(st.Allow) != "[10.99.0.2/32 ::1/128]" {
		t.Errorf("allow read back: %v", st.Allow)
	}
	if got := strings.TrimSpace(n.sh(t, iptables.ChangeScript())); got != "change=20261203T070000-abc123" {
		t.Errorf("ChangeScript: %q", got)
	}
	// The dead-man: nothing runs on the node, the date passes.
	waitFor(t, 15*time.Second, "the shed to end by itself", func() (bool, string) {
		err := n.dial("10.99.0.3", "10.99.0.1:6443", time.Second)
		return err == nil, fmt.Sprint(err)
	})
	if st := n.state(t); !st.Present || st.Active {
		t.Errorf("after the date: %+v, want present and inactive", st)
	}
	n.sh(t, iptables.LiftScript())
	n.sh(t, iptables.LiftScript()) // absent: not an error
	if out := n.sh(t, "iptables-save -t filter"); strings.Contains(out, iptables.Chain) || !strings.Contains(out, "-A OTHERS -p tcp -m tcp --dport 6443") {
		t.Errorf("after lift:\n%s", out)
	}
	if st := n.state(t); st.Present {
		t.Errorf("after lift the state is %+v", st)
	}
}

// Drop makes other sources time out; limit lets about its rate through.
func TestShedModesOnRealIptables(t *testing.T) {
	n := newNetns(t)
	n.listen(t, "10.99.0.1:6443")
	load(t, n, spec(nft.ModeDrop, 0), time.Minute)
	var ne net.Error
	if err := n.dial("10.99.0.3", "10.99.0.1:6443", 500*time.Millisecond); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("drop: %v, want a timeout", err)
	}
	load(t, n, spec(nft.ModeLimit, 5), time.Minute)
	if st := n.state(t); st.Mode != nft.ModeLimit || st.Rate != 5 {
		t.Errorf("limit read back: %+v", st)
	}
	ok, start := 0, time.Now()
	for time.Since(start) < 3*time.Second {
		if n.dial("10.99.0.3", "10.99.0.1:6443", 200*time.Millisecond) == nil {
			ok++
		}
	}
	secs := time.Since(start).Seconds()
	want := 5*secs + 5 // the rate, plus the burst
	t.Logf("limit 5/s: %d connections in %.1fs (about %.0f expected)", ok, secs, want)
	if float64(ok) < want/2 || float64(ok) > want*2 {
		t.Errorf("limit 5/s let %d through in %.1fs, want about %.0f", ok, secs, want)
	}
}

func TestParseIgnoresOthers(t *testing.T) {
	out := "*filter\n:INPUT ACCEPT [0:0]\n[3:180] -A INPUT -p tcp -m tcp --dport 6443 -j DROP\nCOMMIT\n"
	st, err := iptables.Parse(out, "", time.Now())
	if err != nil || st.Present {
		t.Errorf("Parse of someone else's rules: %+v, %v", st, err)
	}
	exp := strconv.FormatInt(time.Now().Add(90*time.Second).Unix(), 10)
	ours := "*filter\n:" + iptables.Chain + " - [0:0]\n[7:420] -A " + iptables.Chain + ` -p tcp -m tcp --dport 6443 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "breakglass shed change=x mode=drop port=6443 rate=0 expires=` + exp + `" -j DROP` + "\nCOMMIT\n"
	st, err = iptables.Parse(ours, "", time.Now())
	if err != nil || !st.Present || !st.Active || st.Packets != 7 || st.Bytes != 420 || st.Mode != nft.ModeDrop || st.Remaining < 80*time.Second {
		t.Errorf("Parse: %+v, %v", st, err)
	}
}
