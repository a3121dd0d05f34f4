package sshclient

// These tests are in the package itself, not in sshclient_test, to set
// relayTools; they rebuild the few helpers of the external tests they need.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

// unixTestTimeout bounds every dial and round trip of these tests.
const unixTestTimeout = 60 * time.Second

func unixClient(t *testing.T, fx *sshdtest.Fixture) *Client {
	t.Helper()
	c, err := New(Options{User: "root", IdentityFiles: []string{fx.ClientKey}, KnownHosts: []string{fx.KnownHosts},
		GlobalKnownHosts: []string{filepath.Join(fx.Dir, "ssh_known_hosts")},
		DialTimeout:      5 * time.Second, HandshakeTimeout: 5 * time.Second, AuthTimeout: 5 * time.Second, SessionTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func unixTarget(fx *sshdtest.Fixture, user string) nodeops.Target {
	s := fx.Servers[0]
	return nodeops.Target{Name: s.Name, Address: s.Host, Port: s.Port, User: user}
}

// unixUser is sudo_test.go's throwawayUser: a local user that logs in with
// the fixture's key, with sudoers (USER replaced) if not empty.
func unixUser(t *testing.T, fx *sshdtest.Fixture, suffix, sudoers string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create users")
	}
	for _, tool := range []string{"useradd", "userdel", "sudo", "visudo", "su"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	name := fmt.Sprintf("bgt%d%s", os.Getpid()%100000, suffix)
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", "-p", "*", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", "-f", "-r", name).CombinedOutput(); err != nil {
			t.Logf("userdel %s: %v %s", name, err, out)
		}
	})
	pub, err := os.ReadFile(fx.ClientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	script := `mkdir -p ~/.ssh && cat > ~/.ssh/authorized_keys && chmod 700 ~/.ssh && chmod 600 ~/.ssh/authorized_keys`
	cmd := exec.Command("su", "-s", "/bin/sh", "-c", script, name)
	cmd.Stdin = bytes.NewReader(pub)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("authorized_keys for %s: %v %s", name, err, out)
	}
	if sudoers != "" {
		f := filepath.Join("/etc/sudoers.d", name)
		if err := os.WriteFile(f, []byte(strings.ReplaceAll(sudoers, "USER", name)+"\n"), 0o440); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(f) })
		if out, err := exec.Command("visudo", "-c", "-f", f).CombinedOutput(); err != nil {
			t.Fatalf("sudoers drop-in: %v %s", err, out)
		}
	}
	return name
}

// echoSocket listens on a unix socket that only root may open (0600 in a
// 0700 directory) and echoes every connection until its end of file, then
// closes it and reports on the returned channel. The directory is short
// (unix socket paths have 108 bytes) and removed with the test.
func echoSocket(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The quote and the space make every shell that carries the path
	// quote it right.
	path := filepath.Join(dir, "echo 'x'.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{}, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
				select {
				case ended <- struct{}{}:
				default:
				}
			}()
		}
	}()
	return path, ended
}

// roundTrip writes n random bytes, ends its writing side, and reads back
// until end of file: the echo must be the same bytes. The two directions
// run at once, so a relay that cannot do both would stall (and the
// deadline close the connection).
func roundTrip(t *testing.T, uc *UnixConn, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), unixTestTimeout)
	defer cancel()
	defer context.AfterFunc(ctx, func() { uc.Close() })()
	data := make([]byte, n)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		if _, err := uc.Write(data); err != nil {
			werr <- err
			return
		}
		werr <- uc.CloseWrite()
	}()
	got, err := io.ReadAll(uc)
	if err != nil {
		t.Fatalf("read back: %v (after %d bytes)", err, len(got))
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("round trip did not finish within %s", unixTestTimeout)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo: got %d bytes, want the %d sent back unchanged", len(got), len(data))
	}
}

// closeAndWait closes uc twice and waits for the echo server to see the
// connection end: nothing is left running on the node.
func closeAndWait(t *testing.T, uc *UnixConn, ended <-chan struct{}) {
	t.Helper()
	if err := uc.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := uc.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	select {
	case <-ended:
	case <-time.After(unixTestTimeout):
		t.Fatalf("the socket's connection was not closed within %s of Close", unixTestTimeout)
	}
}

func dialUnix(t *testing.T, c *Client, tg nodeops.Target, path string, via UnixVia) (*UnixConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), unixTestTimeout)
	defer cancel()
	uc, err := c.DialUnix(ctx, tg, path, via)
	if ctx.Err() != nil {
		t.Fatalf("DialUnix via %s did not return within %s", via, unixTestTimeout)
	}
	return uc, err
}

// wantUnixErr checks err is a *nodeops.Error with reason, and that its
// message names every want.
func wantUnixErr(t *testing.T, uc *UnixConn, err error, reason string, want ...string) *nodeops.Error {
	t.Helper()
	if err == nil {
		uc.Close()
		t.Fatalf("connected via %s, want an error with reason %s", uc.Via, reason)
	}
	var ne *nodeops.Error
	if !errors.As(err, &ne) || ne.Reason != reason {
		t.Fatalf("error %v (%T), want reason %s", err, err, reason)
	}
	msg := err.Error()
	for _, w := range append(want, "hint: ") {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not name %q:\n%s", w, msg)
		}
	}
	return ne
}

// withRelayTools makes the relay try only tools for the rest of the test.
func withRelayTools(t *testing.T, tools ...string) {
	old := relayTools
	relayTools = tools
	t.Cleanup(func() { relayTools = old })
}

// nodeHas reports whether the fixture's node (this machine, as sshd's
// sessions see it) has tool on its PATH.
func nodeHas(t *testing.T, c *Client, tg nodeops.Target, tool string) bool {
	t.Helper()
	tg.User = "root"
	_, err := c.Run(t.Context(), tg, nodeops.Command{Line: "command -v " + tool})
	return err == nil
}

var allRelayTools = []string{"socat", "python3", "perl"}

// TestUnixForwardRoot reaches a socket as root through a
// direct-streamlocal channel: megabytes echo back unchanged, and closing
// the connection ends the socket's connection.
func TestUnixForwardRoot(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	c := unixClient(t, fx)
	path, ended := echoSocket(t)
	base := runtime.NumGoroutine()

	uc, err := dialUnix(t, c, unixTarget(fx, "root"), path, UnixForward)
	if err != nil {
		t.Fatalf("DialUnix: %v\nsshd log:\n%s", err, fx.Servers[0].Log())
	}
	if uc.Via != UnixForward {
		t.Errorf("via %s, want %s", uc.Via, UnixForward)
	}
	if got := uc.RemoteAddr().String(); got != "node1:"+path || uc.RemoteAddr().Network() != "unix" {
		t.Errorf("remote address %s %q", uc.RemoteAddr().Network(), got)
	}
	if err := uc.SetDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Errorf("SetDeadline: %v", err)
	}
	roundTrip(t, uc, 3<<20)
	closeAndWait(t, uc, ended)
	if now, _ := c.OpenConnections(); now != 0 {
		t.Errorf("%d connections still open after Close", now)
	}
	waitGoroutines(t, base)
}

// TestUnixSudoRelayNonRoot reaches a root-only socket as a user with
// passwordless sudo: the forward is refused (sshd opens the socket as the
// user), auto falls back to the relay under sudo, once per relay tool.
func TestUnixSudoRelayNonRoot(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	user := unixUser(t, fx, "us", "USER ALL=(ALL) NOPASSWD: ALL")
	c := unixClient(t, fx)
	path, ended := echoSocket(t)
	tg := unixTarget(fx, user)

	uc, err := dialUnix(t, c, tg, path, UnixForward)
	ne := wantUnixErr(t, uc, err, "unix-forward", path, "--via sudo")
	if ne.Phase != nodeops.PhaseSession {
		t.Errorf("phase %s, want %s", ne.Phase, nodeops.PhaseSession)
	}

	for _, tool := range allRelayTools {
		t.Run(tool, func(t *testing.T) {
			if !nodeHas(t, c, tg, tool) {
				t.Skipf("%s is not installed on this machine: its relay is not tested", tool)
			}
			withRelayTools(t, tool)
			base := runtime.NumGoroutine()
			uc, err := dialUnix(t, c, tg, path, UnixAuto)
			if err != nil {
				t.Fatalf("DialUnix auto: %v", err)
			}
			if uc.Via != UnixSudo {
				t.Errorf("via %s, want %s", uc.Via, UnixSudo)
			}
			roundTrip(t, uc, 3<<20)
			closeAndWait(t, uc, ended)
			waitGoroutines(t, base)
		})
	}
}

// TestUnixSudoRefused: a user without sudo is refused at once, with the
// hint Run gives, never left waiting for a password.
func TestUnixSudoRefused(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	user := unixUser(t, fx, "un", "")
	c := unixClient(t, fx)
	path, _ := echoSocket(t)
	tg := unixTarget(fx, user)

	for _, via := range []UnixVia{UnixSudo, UnixAuto} {
		uc, err := dialUnix(t, c, tg, path, via)
		ne := wantUnixErr(t, uc, err, "sudo", "sudo -n refused for "+user, "NOPASSWD")
		if ne.Status != nodeops.StatusRefused {
			t.Errorf("via %s: status %s, want %s", via, ne.Status, nodeops.StatusRefused)
		}
		if via == UnixAuto && !strings.Contains(err.Error(), "forward was refused") {
			t.Errorf("via auto: the error does not say the forward was tried first:\n%v", err)
		}
	}
	if now, _ := c.OpenConnections(); now != 0 {
		t.Errorf("%d connections left open by failed dials", now)
	}
}

// TestUnixSocketMissing: a socket that is not there is named in the
// error, whichever way it is reached and whichever relay runs; a node
// without any relay tool says so.
func TestUnixSocketMissing(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	c := unixClient(t, fx)
	tg := unixTarget(fx, "root")
	path := filepath.Join(t.TempDir(), "missing.sock")

	uc, err := dialUnix(t, c, tg, path, UnixForward)
	wantUnixErr(t, uc, err, "unix-forward", path)

	for _, tool := range allRelayTools {
		t.Run(tool, func(t *testing.T) {
			if !nodeHas(t, c, tg, tool) {
				t.Skipf("%s is not installed on this machine: its relay is not tested", tool)
			}
			withRelayTools(t, tool)
			uc, err := dialUnix(t, c, tg, path, UnixSudo)
			ne := wantUnixErr(t, uc, err, "unix-connect", path)
			if ne.Status != nodeops.StatusFailed {
				t.Errorf("status %s, want %s", ne.Status, nodeops.StatusFailed)
			}
			t.Logf("%v", err)
		})
	}

	t.Run("no tool", func(t *testing.T) {
		withRelayTools(t)
		uc, err := dialUnix(t, c, tg, path, UnixSudo)
		wantUnixErr(t, uc, err, "no-relay", path, "install socat")
	})
	if now, _ := c.OpenConnections(); now != 0 {
		t.Errorf("%d connections left open by failed dials", now)
	}
}

// TestUnixForwardDisabled: with AllowStreamLocalForwarding no, forward is
// refused with a hint that names the option, and auto relays instead.
func TestUnixForwardDisabled(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{Extra: "AllowStreamLocalForwarding no"})
	c := unixClient(t, fx)
	path, ended := echoSocket(t)
	tg := unixTarget(fx, "root")

	uc, err := dialUnix(t, c, tg, path, UnixForward)
	ne := wantUnixErr(t, uc, err, "unix-forward", "AllowStreamLocalForwarding")
	t.Logf("forward: %s: %v", ne.Status, err)

	uc, err = dialUnix(t, c, tg, path, UnixAuto)
	if err != nil {
		t.Fatalf("DialUnix auto: %v", err)
	}
	if uc.Via != UnixSudo {
		t.Errorf("via %s, want %s", uc.Via, UnixSudo)
	}
	roundTrip(t, uc, 1<<20)
	closeAndWait(t, uc, ended)
}

// TestUnixBadVia: an unknown way is a configuration error, before any dial.
func TestUnixBadVia(t *testing.T) {
	c, err := New(Options{IdentityFiles: []string{"/nonexistent"}, KnownHosts: []string{os.DevNull}, GlobalKnownHosts: []string{os.DevNull}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.DialUnix(t.Context(), nodeops.Target{Name: "n", Address: "192.0.2.1"}, "/x.sock", "tcp")
	var ne *nodeops.Error
	if !errors.As(err, &ne) || ne.Reason != "config" || c.Dials() != 0 {
		t.Fatalf("error %v, dials %d: want a config error and no dial", err, c.Dials())
	}
}

// TestUnixRelayScriptLocal runs the relay script here, without sshd, for
// every tool this machine has: the only way to test socat's branch where
// sshd's sessions have no socat.
func TestUnixRelayScriptLocal(t *testing.T) {
	path, ended := echoSocket(t)
	for _, tool := range allRelayTools {
		t.Run(tool, func(t *testing.T) {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("%s is not on PATH: its relay is not tested", tool)
			}
			withRelayTools(t, tool)
			ctx, cancel := context.WithTimeout(t.Context(), unixTestTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, "sh", "-c", relayScript(path))
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			data := make([]byte, 2<<20)
			rand.Read(data)
			go func() {
				stdin.Write(data)
				stdin.Close()
			}()
			got, err := io.ReadAll(stdout)
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("relay: %v\n%s", err, stderr.Bytes())
			}
			if want := append([]byte(relayMarker), data...); !bytes.Equal(got, want) {
				t.Fatalf("got %d bytes (starting %q), want the marker and the %d bytes sent", len(got), got[:min(len(got), 8)], len(data))
			}
			select {
			case <-ended:
			case <-ctx.Done():
				t.Fatal("the echo connection did not end")
			}

			// A missing socket: the relay says so and exits 1.
			cmd = exec.CommandContext(ctx, "sh", "-c", relayScript(path+".missing"))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.HasPrefix(string(out), relayConnectFail+path+".missing: ") {
				t.Errorf("missing socket: %v %q", err, out)
			}
		})
	}
}

// waitGoroutines waits for the goroutine count to come back to base.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Errorf("goroutines: %d, want at most %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
