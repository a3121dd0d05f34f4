package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/breakglass/breakglass/etcd/etcdtest"
)

// These tests run the real binary, the way a user meets its errors: through
// main, its signal handling and its exit code. Tests that drive only the
// cobra tree cannot see what main does with an error.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// breakglassBinary returns the binary under test: $BREAKGLASS_BIN when make
// test built it, else one built from this package.
func breakglassBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BREAKGLASS_BIN"); p != "" {
		return p
	}
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "breakglass-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "breakglass")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("go build: %v", binErr)
	}
	return binPath
}

type binResult struct {
	code           int
	stdout, stderr string
}

// startBinary starts the binary in a clean environment (no inventory, no
// ETCDCTL_* from the machine) plus env.
func startBinary(t *testing.T, env []string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(breakglassBinary(t), args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + cmd.Dir, "XDG_STATE_HOME=" + cmd.Dir}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &out, &errOut
}

func waitBinary(t *testing.T, cmd *exec.Cmd, out, errOut *bytes.Buffer) binResult {
	t.Helper()
	err := cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return binResult{cmd.ProcessState.ExitCode(), out.String(), errOut.String()}
}

func runBinary(t *testing.T, env []string, args ...string) binResult {
	t.Helper()
	cmd, out, errOut := startBinary(t, env, args...)
	return waitBinary(t, cmd, out, errOut)
}

// silentListener accepts TCP connections on loopback and never answers: an
// etcd that hangs. accepted is closed at the first connection.
func silentListener(t *testing.T) (addr string, accepted <-chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{})
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		var once sync.Once
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			once.Do(func() { close(ch) })
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String(), ch
}

func TestBinaryErrorsSayWhatFailed(t *testing.T) {
	srv := etcdtest.Start(t)
	hung, _ := silentListener(t)
	tests := []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		want     []string // all of these in stderr
	}{
		{"missing inventory", nil, []string{"--inventory", "/nonexistent/inventory.yaml", "get", "pods"},
			1, []string{"/nonexistent/inventory.yaml", "no such file", "hint:"}},
		{"unknown resource", nil, []string{"--endpoints", srv.Endpoint, "get", "nosuchresource"},
			1, []string{`unknown resource "nosuchresource"`, "hint:"}},
		{"unknown command", nil, []string{"diagnosis-please"},
			2, []string{`unknown command "diagnosis-please"`, "hint:"}},
		{"bad flag value", nil, []string{"--timeout", "soon", "version"},
			2, []string{"--timeout", "soon"}},
		// Refused before any node is reached: there is no inventory.
		{"shed ttl out of range", nil, []string{"shed", "apply", "--ttl", "30s"},
			2, []string{"--ttl", "30s", "hint:"}},
		{"shed limit without a rate", nil, []string{"shed", "apply", "--ttl", "15m", "--mode", "limit"},
			2, []string{"--rate"}},
		{"timed-out wait", []string{"ETCDCTL_DIAL_TIMEOUT=1s"}, []string{"--endpoints", "http://" + hung, "get", "pods"},
			1, []string{hung, "no endpoint answered within 1s", "hint:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runBinary(t, tt.env, tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, tt.wantCode, r.stderr)
			}
			if strings.Contains(r.stderr, "cancelled") {
				t.Errorf("nothing was cancelled, yet stderr says so:\n%s", r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

func TestBinaryOnlyASignalCancels(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			hung, accepted := silentListener(t)
			// An etcd that never answers and no dial limit: the command
			// waits until something ends it.
			cmd, out, errOut := startBinary(t, []string{"ETCDCTL_DIAL_TIMEOUT=1h"}, "--endpoints", "http://"+hung, "get", "pods")
			select {
			case <-accepted:
			case <-time.After(time.Minute):
				cmd.Process.Kill()
				t.Fatalf("the binary never connected to the hung etcd; stderr:\n%s", errOut)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			r := waitBinary(t, cmd, out, errOut)
			if r.code != 130 {
				t.Errorf("exit %d after %v, want 130; stderr:\n%s", r.code, sig, r.stderr)
			}
			name := map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}[sig]
			if !strings.Contains(r.stderr, "cancelled (interrupted by "+name+")") {
				t.Errorf("stderr does not say the command was cancelled by %s:\n%s", name, r.stderr)
			}
		})
	}
}
