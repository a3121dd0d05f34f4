package lab_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
)

// TestLabDownLeftNothing runs after make test's lab down: no namespace,
// process, mount, cgroup or bridge of the lab may remain.
func TestLabDownLeftNothing(t *testing.T) {
	dir := os.Getenv("BREAKGLASS_LAB_DOWN_CHECK")
	if dir == "" {
		t.Skip("runs after lab down in make test (BREAKGLASS_LAB_DOWN_CHECK=DIR)")
	}
	assertClean(t, dir)
}

func assertClean(t *testing.T, dir string) {
	t.Helper()
	if left := lab.Leftovers(context.Background()); len(left) > 0 {
		t.Errorf("left behind: %s", strings.Join(left, ", "))
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("lab directory %s still exists", dir)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), dir) || strings.Contains(string(mi), "/run/bglab") {
		t.Errorf("mounts of the lab remain:\n%s", mi)
	}
	// No live process still runs from the lab's directory or binaries.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		st, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if strings.Contains(string(st), ") Z ") {
			continue // a zombie waiting for init to reap it holds nothing
		}
		if strings.Contains(cmd, dir+"/") || strings.Contains(cmd, "lab supervise") {
			t.Errorf("process left: %s: %s", p, cmd)
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), "bglab-") {
		t.Errorf("netns left:\n%s", out)
	}
}

// TestLabDownAfterCrashedUp kills lab up midway (SIGKILL, as a crash or an
// OOM kill would) once hosts and processes exist, then checks that lab down
// still removes everything. make test runs it before the shared lab comes
// up, with BREAKGLASS_LAB_CRASH_TEST=1 and BREAKGLASS_BIN set.
func TestLabDownAfterCrashedUp(t *testing.T) {
	bin := os.Getenv("BREAKGLASS_BIN")
	if os.Getenv("BREAKGLASS_LAB_CRASH_TEST") != "1" || bin == "" {
		t.Skip("runs in its own phase of make test as root (BREAKGLASS_LAB_CRASH_TEST=1, BREAKGLASS_BIN)")
	}
	dir := filepath.Join(t.TempDir(), "crashlab")
	up := exec.Command(bin, "lab", "up", "--dir", dir, "--workers", "1")
	up.Stdout, up.Stderr = os.Stderr, os.Stderr
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the worker's kubelet has been started: by then there are
	// namespaces, mounts, cgroups and supervised processes to clean up.
	kubeletPid := filepath.Join(dir, "run", "worker-1-kubelet.pid")
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if _, err := os.Stat(kubeletPid); err == nil {
			break
		}
		if time.Now().After(deadline) {
			up.Process.Kill()
			t.Fatal("lab up never started the kubelet")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	up.Process.Signal(syscall.SIGKILL)
	up.Wait()
	if left := lab.Leftovers(context.Background()); len(left) == 0 {
		t.Fatal("the crashed lab up left nothing to clean: the test proves nothing")
	}
	down := exec.Command(bin, "lab", "down", "--dir", dir)
	if out, err := down.CombinedOutput(); err != nil {
		t.Fatalf("lab down: %v\n%s", err, out)
	}
	assertClean(t, dir)
}
