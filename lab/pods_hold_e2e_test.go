package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
)

// holdWindow is how long TestIncidentOverloadPodsHold watches a hold
// through kubelet's activity: 60 s in make test; make soak-hold sets
// BREAKGLASS_HOLD_WINDOW=10m.
func holdWindow(t *testing.T) time.Duration {
	if v := os.Getenv("BREAKGLASS_HOLD_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("BREAKGLASS_HOLD_WINDOW=%q: %v", v, err)
		}
		return d
	}
	return time.Minute
}

// bgRun runs the real binary as an operator does.
type bgRun struct {
	t   *testing.T
	bin string
	inv string
	jnl string
}

// newBGRun is a bgRun of the binary make test built on st's inventory,
// with a journal of its own.
func newBGRun(t *testing.T, st *lab.State) *bgRun {
	t.Helper()
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make test sets it)")
	}
	b := &bgRun{t: t, bin: bin, inv: st.Inventory, jnl: filepath.Join(t.TempDir(), "breakglass", "journal.jsonl")}
	if err := os.MkdirAll(filepath.Dir(b.jnl), 0o755); err != nil {
		t.Fatal(err)
	}
	return b
}

type bgResult struct {
	code           int
	stdout, stderr string
}

func (b *bgRun) run(args ...string) bgResult {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args = append(args, "--inventory", b.inv)
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+filepath.Dir(b.jnl))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Run()
	r := bgResult{cmd.ProcessState.ExitCode(), out.String(), errOut.String()}
	b.t.Logf("breakglass %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// agentPods lists the telemetry pods from the workers' containerd.
func (b *bgRun) agentPods() []map[string]any {
	b.t.Helper()
	r := b.run("pods", "list", "-n", lab.TelemetryNamespace, "--nodes", "role=worker", "-o", "json")
	if r.code != 0 {
		b.t.Fatalf("pods list: exit %d\n%s", r.code, r.stderr)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			b.t.Fatalf("pods list -o json: %v: %q", err, l)
		}
		if m["type"] == "pod" {
			out = append(out, m)
		}
	}
	return out
}

// runningImages returns, per node, the image IDs of the running agent
// containers of the telemetry pods.
func runningImages(pods []map[string]any) map[string][]string {
	out := map[string][]string{}
	for _, p := range pods {
		if p["state"] != "ready" {
			continue
		}
		cs, _ := p["containers"].([]any)
		for _, c := range cs {
			m := c.(map[string]any)
			if m["state"] == "running" {
				out[p["node"].(string)] = append(out[p["node"].(string)], m["imageRef"].(string))
			}
		}
	}
	return out
}

// containerdState is what a dry run must leave alone on every worker:
// containerd's containers, tasks and image records, read with ctr.
func containerdState(t *testing.T, st *lab.State) string {
	t.Helper()
	var b strings.Builder
	for _, h := range st.HostsWithRole("worker") {
		sock := filepath.Join(h.Root, "run/containerd/containerd.sock")
		for _, args := range [][]string{{"containers", "ls"}, {"tasks", "ls"}, {"images", "ls"}} {
			out, err := exec.Command("ctr", append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: ctr %v: %v %s", h.Name, args, err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			sort.Strings(lines)
			fmt.Fprintf(&b, "%s %v:\n%s\n", h.Name, args, strings.Join(lines, "\n"))
		}
	}
	return b.String()
}

func waitCond(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last: %s)", timeout, what, last)
		}
		time.Sleep(time.Second)
	}
}

// TestIncidentOverloadPodsHold is issue 9's test on the real cluster: under
// the overload incident, through the real binary, the telemetry agent is
// stopped and held on every worker; it stays stopped through kubelet's
// restarts of its containers, a kubelet restart and a containerd restart;
// when the apiserver is healthy again the DaemonSet does not come back;
// lifting the hold brings it back with the original image. A dry run
// leaves containerd as it was, and a worker whose containerd hangs is
// reported while the others are stopped. What runs is judged by the
// processes on the nodes, not by breakglass's own output.
func TestIncidentOverloadPodsHold(t *testing.T) {
	l := incidentLab(t)
	st := l.State
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make test sets it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// The journal's directory is made before the cleanup is registered,
	// so that it is still there when the cleanup lifts a hold the test
	// left (cleanups run last-registered first).
	b := &bgRun{t: t, bin: bin, inv: st.Inventory, jnl: filepath.Join(t.TempDir(), "breakglass", "journal.jsonl")}
	var thaws []func() error
	var holdID string
	t.Cleanup(func() {
		for _, thaw := range thaws {
			thaw()
		}
		// A hold left on the workers (the test failed before the lift)
		// would make the next incident's agents run the pause image:
		// lift it first.
		if holdID != "" {
			if r := b.run("pods", "hold", "list", "--nodes", "role=worker", "-o", "json"); r.code != 0 || strings.Contains(r.stdout, holdID) {
				if r := b.run("pods", "hold", "lift", holdID, "--yes", "--nodes", "role=worker", "--journal", b.jnl); r.code != 0 {
					t.Errorf("cleanup: pods hold lift %s: exit %d", holdID, r.code)
				}
			}
		}
		if err := l.Reset(context.Background(), testLog{t}); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	if r := b.run("pods", "hold", "list", "--nodes", "role=worker", "-o", "json"); r.code != 0 || strings.TrimSpace(r.stdout) != "" {
		t.Fatalf("before the test: pods hold list: exit %d, want no hold on any worker (an earlier run left one: lift it with breakglass pods hold lift):\n%s", r.code, r.stdout)
	}
	if _, err := l.Overload(ctx, testLog{t}); err != nil {
		t.Fatal(err)
	}
	workers := st.HostsWithRole("worker")
	names := make([]string, len(workers))
	for i, w := range workers {
		names[i] = w.Name
	}
	agents := func() map[string]int {
		n, err := l.ProcessesOnWorkers(lab.TelemetryExe)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	noneRun := func() (bool, string) {
		n := agents()
		for _, w := range names {
			if n[w] > 0 {
				return false, fmt.Sprintf("agent processes per worker: %v", n)
			}
		}
		return true, ""
	}
	allRun := func() (bool, string) {
		n := agents()
		for _, w := range names {
			if n[w] == 0 {
				return false, fmt.Sprintf("agent processes per worker: %v", n)
			}
		}
		return true, ""
	}
	waitCond(t, "the agent running on every worker", 2*time.Minute, allRun)
	origID := map[string]string{}
	for node, ids := range runningImages(b.agentPods()) {
		origID[node] = ids[0]
	}
	sel := []string{"--daemonset", lab.TelemetryNamespace + "/" + lab.TelemetryDaemonSet, "--nodes", "role=worker", "--journal", b.jnl}

	// A dry run changes nothing on any worker.
	before := containerdState(t, st)
	if r := b.run(append([]string{"pods", "hold", "--dry-run"}, sel...)...); r.code != 0 || !strings.Contains(r.stdout, "dry run") {
		t.Fatalf("pods hold --dry-run: exit %d", r.code)
	}
	if r := b.run(append([]string{"pods", "stop", "--dry-run"}, sel...)...); r.code != 0 {
		t.Fatalf("pods stop --dry-run: exit %d", r.code)
	}
	if after := containerdState(t, st); after != before {
		t.Fatalf("a dry run changed containerd:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if ok, why := allRun(); !ok {
		t.Fatalf("after a dry run: %s", why)
	}

	// A worker whose containerd hangs is reported; the others are stopped.
	hung := names[len(names)-1]
	thaw, err := l.FreezeComponent(hung, "containerd")
	if err != nil {
		t.Fatal(err)
	}
	thaws = append(thaws, thaw)
	r := b.run(append([]string{"pods", "stop", "--yes", "--grace", "1s", "--timeout", "10s", "-o", "json"}, sel...)...)
	thaw()
	if r.code != 3 || !strings.Contains(r.stdout+r.stderr, hung) {
		t.Fatalf("pods stop with %s's containerd hung: exit %d, want 3 naming it", hung, r.code)
	}
	for _, w := range names[:len(names)-1] {
		if !strings.Contains(r.stdout, `"node":"`+w+`"`) {
			t.Errorf("pods stop did not report %s as stopped", w)
		}
	}
	waitCond(t, "containerd on "+hung+" answering again", time.Minute, func() (bool, string) {
		rr := b.run("pods", "list", "--nodes", hung)
		return rr.code == 0, rr.stderr
	})
	// Kubelet starts stopped pods again: a stop is not a hold.
	waitCond(t, "kubelet starting the stopped agents again", 3*time.Minute, allRun)

	// The hold, with the API down for the controllers: the
	// controller-manager is frozen, as it was in the outage, so the owner
	// layer cannot act and the image layer alone keeps the agents away
	// while kubelet restarts their containers.
	thawCM, err := l.FreezeComponent("cp-1", "kube-controller-manager")
	if err != nil {
		t.Fatal(err)
	}
	thaws = append(thaws, thawCM)
	r = b.run(append([]string{"pods", "hold", "--yes", "--grace", "1s", "-o", "json"}, sel...)...)
	if r.code != 0 {
		t.Fatalf("pods hold: exit %d", r.code)
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["type"] == "change" && m["id"] != nil {
			holdID = m["id"].(string)
		}
	}
	if holdID == "" {
		t.Fatalf("pods hold printed no change ID:\n%s", r.stdout)
	}
	waitCond(t, "no agent process on any worker", time.Minute, noneRun)
	// Kubelet starts the held containers again, and they run the pause
	// image: the hold met kubelet's restart logic on every worker.
	pauseRuns := func() (bool, string) {
		imgs := runningImages(b.agentPods())
		for _, w := range names {
			if len(imgs[w]) == 0 || imgs[w][0] == origID[w] {
				return false, fmt.Sprintf("running agent containers' images: %v (original %v)", imgs, origID)
			}
		}
		return true, ""
	}
	waitCond(t, "kubelet restarting the held agents with the pause image", 3*time.Minute, pauseRuns)
	if ok, why := noneRun(); !ok {
		t.Fatalf("held, yet %s", why)
	}

	// Through a kubelet restart and a containerd restart, for the window.
	if _, err := l.RestartComponent(ctx, names[0], "kubelet"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.RestartComponent(ctx, names[1%len(names)], "containerd"); err != nil {
		t.Fatal(err)
	}
	window := holdWindow(t)
	t.Logf("watching the hold for %s", window)
	for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(2 * time.Second) {
		if ok, why := noneRun(); !ok {
			t.Fatalf("the hold broke after the restarts: %s", why)
		}
	}
	waitCond(t, "the held agents running the pause image after the restarts", 3*time.Minute, pauseRuns)
	if ok, why := noneRun(); !ok {
		t.Fatalf("the hold broke: %s", why)
	}
	r = b.run("pods", "hold", "list", "--nodes", "role=worker", "-o", "json")
	if r.code != 0 || strings.Count(r.stdout, `"change":"`+holdID+`"`) != len(names) {
		t.Fatalf("pods hold list: exit %d, want one hold of %s per worker", r.code, holdID)
	}

	// The apiserver healthy again, the controllers back: the DaemonSet
	// controller removes the pods for good (the owner layer), and nothing
	// comes back.
	thawCM()
	if err := l.HealAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "the DaemonSet controller to want no pod (desiredNumberScheduled 0 for the paused spec, from etcd)", 3*time.Minute, func() (bool, string) {
		rr := b.run("get", "daemonset", "-n", lab.TelemetryNamespace, lab.TelemetryDaemonSet, "-o", "json")
		var ds struct {
			Metadata struct{ Generation int64 }
			Status   struct {
				ObservedGeneration     int64
				DesiredNumberScheduled int64
				CurrentNumberScheduled int64
			}
		}
		if err := json.Unmarshal([]byte(rr.stdout), &ds); err != nil {
			return false, err.Error()
		}
		return ds.Status.ObservedGeneration == ds.Metadata.Generation && ds.Status.DesiredNumberScheduled == 0 && ds.Status.CurrentNumberScheduled == 0,
			fmt.Sprintf("%+v", ds)
	})
	waitCond(t, "the agent pods gone from the workers", 3*time.Minute, func() (bool, string) {
		ps := b.agentPods()
		return len(runningImages(ps)) == 0, fmt.Sprintf("%d pods", len(ps))
	})
	if ok, why := noneRun(); !ok {
		t.Fatalf("the DaemonSet came back with the apiserver: %s", why)
	}

	// A lift from a machine whose journal does not have the hold works
	// from the nodes' own records: the first worker's image is restored,
	// the others stay held, and the owner in etcd is left alone.
	other := filepath.Join(t.TempDir(), "other-journal.jsonl")
	r = b.run("pods", "hold", "lift", holdID, "--yes", "--nodes", names[0], "--journal", other)
	if r.code != 0 || !strings.Contains(r.stdout+r.stderr, "not in this journal") {
		t.Fatalf("pods hold lift without the hold's journal: exit %d, want 0 with a note that the owners are left alone", r.code)
	}
	r = b.run("pods", "hold", "list", "--nodes", "role=worker", "-o", "json")
	if r.code != 0 || strings.Contains(r.stdout, `"node":"`+names[0]+`"`) || strings.Count(r.stdout, `"change":"`+holdID+`"`) != len(names)-1 {
		t.Fatalf("after the lift of %s from the nodes alone: exit %d, want the hold on the other workers only:\n%s", names[0], r.code, r.stdout)
	}

	// Lifting the hold, a worker at a time, brings the agent back with its
	// original image on every worker.
	r = b.run("pods", "hold", "lift", holdID, "--batch", "1", "--yes", "--nodes", "role=worker", "--journal", b.jnl)
	if r.code != 0 {
		t.Fatalf("pods hold lift: exit %d", r.code)
	}
	waitCond(t, "the agent running again on every worker with its original image", 3*time.Minute, func() (bool, string) {
		imgs := runningImages(b.agentPods())
		for _, w := range names {
			if len(imgs[w]) == 0 || imgs[w][0] != origID[w] {
				return false, fmt.Sprintf("running agent images %v, original %v", imgs, origID)
			}
		}
		return true, ""
	})
	waitCond(t, "agent processes on every worker", time.Minute, allRun)
	r = b.run("pods", "hold", "list", "--nodes", "role=worker", "-o", "json")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "" {
		t.Fatalf("holds left after the lift: exit %d\n%s", r.code, r.stdout)
	}
}
