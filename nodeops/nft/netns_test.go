package nft_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/breakglass/breakglass/nodeops/nft"
)

// These helpers run the real nft binary, in network namespaces of the test's
// own (named bgnfttest-PID-N), so that nothing touches the host's ruleset or
// the lab's namespaces.

var netnsSeq atomic.Int64

type netns struct{ name string }

// requireNft skips the test where it cannot run the real nft.
func requireNft(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping the tests against the real nft")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: the tests against the real nft need root (network namespaces, nftables)")
	}
	for _, bin := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: %s is not installed: %v", bin, err)
		}
	}
}

// newNetns makes a fresh network namespace, deleted at cleanup.
func newNetns(t *testing.T) *netns {
	t.Helper()
	requireNft(t)
	n := &netns{name: fmt.Sprintf("bgnfttest-%d-%d", os.Getpid(), netnsSeq.Add(1))}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot create network namespace %s (a container without CAP_SYS_ADMIN?): %v: %s", n.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", n.name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", n.name, err, out)
		}
	})
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs `ip -n NS args...` and fails the test on error.
func (n *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
}

// nft runs nft in the namespace with stdin, returning stdout and an error
// that carries stderr.
func (n *netns) nft(stdin string, args ...string) ([]byte, []byte, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, "nft"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes(), stderr.Bytes(), err
}

// load sends a script to `nft -f -`, as the caller does over SSH.
func (n *netns) load(t *testing.T, script string) {
	t.Helper()
	if _, _, err := n.nft(script, "-f", "-"); err != nil {
		t.Fatalf("load script:\n%s\n%v", script, err)
	}
}

// list returns the outputs of `nft -j list table inet breakglass` and
// `nft list table inet breakglass`.
func (n *netns) list(t *testing.T) (jsonOut, textOut []byte) {
	t.Helper()
	j, _, err := n.nft("", "-j", "list", "table", "inet", nft.Table)
	if err != nil {
		t.Fatal(err)
	}
	x, _, err := n.nft("", "list", "table", "inet", nft.Table)
	if err != nil {
		t.Fatal(err)
	}
	return j, x
}

// states reads the table back both ways; both parsers must agree on all but
// Remaining (JSON has whole seconds, text milliseconds). The two listings
// are two commands: when the dead-man lapses between them they differ in
// Active, so a disagreement is read again, and fails only when it lasts.
func (n *netns) states(t *testing.T) (fromJSON, fromText nft.State) {
	t.Helper()
	var why string
	for try := 0; try < 3; try++ {
		j, x := n.list(t)
		sj, err := nft.ParseJSON(j)
		if err != nil {
			t.Fatalf("ParseJSON: %v\n%s", err, j)
		}
		sx, err := nft.ParseText(x)
		if err != nil {
			t.Fatalf("ParseText: %v\n%s", err, x)
		}
		a, b := sj, sx
		a.Remaining, b.Remaining = 0, 0
		// The counters may move between the two list commands.
		a.Packets, a.Bytes, b.Packets, b.Bytes = 0, 0, 0, 0
		if diff := stateDiff(a, b); diff != "" {
			why = fmt.Sprintf("ParseJSON and ParseText disagree: %s\njson: %s\ntext:\n%s", diff, j, x)
			continue
		}
		if d := sj.Remaining - sx.Remaining; d > time.Second || d < -2*time.Second {
			why = fmt.Sprintf("Remaining: json %v, text %v", sj.Remaining, sx.Remaining)
			continue
		}
		return sj, sx
	}
	t.Fatal(why)
	return
}

// run runs fn on an OS thread switched into the namespace: sockets fn
// creates stay in it. The thread is given back to the runtime only when it
// could be switched back; otherwise it ends with the goroutine.
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
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
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

// listen starts a TCP server in the namespace that writes "ok" to every
// connection; it stops at cleanup.
func (n *netns) listen(t *testing.T, addr string) {
	t.Helper()
	var ln net.Listener
	if err := n.run(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, n.name, err)
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

// dial connects from the namespace, from source address src, and reads the
// server's "ok".
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
		if string(buf) != "ok" {
			return fmt.Errorf("read %q, want ok", buf)
		}
		return nil
	})
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waited %v for %s; last: %s", timeout, what, last)
		case <-tick.C:
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
