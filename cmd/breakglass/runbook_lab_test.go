package main

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
	"github.com/breakglass/breakglass/lab/labtest"
	"github.com/breakglass/breakglass/recover/runbook/schematest"
)

// validEvents fails the test unless every line the run printed is an
// event of docs/schema/runbook-events.schema.json.
func validEvents(t *testing.T, what, out string) {
	t.Helper()
	n, err := schematest.ValidateEvents(strings.NewReader(out))
	if err != nil {
		t.Errorf("%s: the -o json events do not match docs/schema/runbook-events.schema.json:\n%v", what, err)
	}
	t.Logf("%s: events validated against the schema: %v", what, n)
}

// runbookLab runs the CLI in-process against the lab with the test's own
// inventory (absolute paths) and journal.
type runbookLab struct {
	st      *lab.State
	l       *lab.Lab
	inv     string
	journal string
}

func (r *runbookLab) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	d := newDeps()
	d.In, d.Out, d.ErrOut = strings.NewReader(""), &out, &errOut
	d.InIsTTY, d.OutIsTTY, d.ErrIsTTY = false, false, false
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	root := newRootCmd(d)
	args = append(args, "--inventory", r.inv)
	if args[0] == "runbook" {
		args = append(args, "--journal", r.journal)
	}
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	code = reportError(&errOut, err, ctx)
	t.Logf("breakglass %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return out.String(), errOut.String(), code
}

// nodesAndEtcd is what the runbook may change, read from the components
// themselves: the telemetry DaemonSet's bytes in etcd, breakglass's nft
// table on the control plane (nft, over SSH), and the workers' containerd
// (ctr). Counters and timers that move by themselves are left out.
func (r *runbookLab) nodesAndEtcd(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	// The DaemonSets' spec and generation, as etcd holds them (their
	// status moves by itself while kubelets report).
	gout, _, code := r.run(t, "get", "daemonsets", "-n", lab.TelemetryNamespace, "-o", "json")
	if code != 0 {
		t.Fatalf("get daemonsets: exit %d", code)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name       string `json:"name"`
				Generation int64  `json:"generation"`
			} `json:"metadata"`
			Spec json.RawMessage `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(gout), &list); err != nil {
		t.Fatalf("get -o json: %v", err)
	}
	for _, it := range list.Items {
		// One line: get -o json indents as kubectl does.
		var spec bytes.Buffer
		if err := json.Compact(&spec, it.Spec); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "daemonset %s generation %d spec %s\n", it.Metadata.Name, it.Metadata.Generation, spec.String())
	}
	so, _, code := r.run(t, "shed", "status", "-o", "json")
	if code != 0 {
		t.Fatalf("shed status: exit %d", code)
	}
	for _, l := range jsonLines(t, so) {
		fmt.Fprintf(&b, "shed %v %v %v %v\n", l["node"], l["state"], l["change"], l["mode"])
	}
	for _, h := range r.st.HostsWithRole("worker") {
		sock := filepath.Join(h.Root, "run/containerd/containerd.sock")
		for _, args := range [][]string{{"images", "ls"}, {"containers", "ls"}} {
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

// agents counts the telemetry agent's processes on each worker.
func (r *runbookLab) agents(t *testing.T) map[string]int {
	t.Helper()
	n, err := r.l.ProcessesOnWorkers(lab.TelemetryExe)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLabRunbookApiserverOverload is issue 13's scripted test on the real
// lab: under the overload incident, the built-in apiserver-overload
// runbook with --dry-run leaves etcd and every node as they were; with
// --yes -o json it reaches the recovered state (the agent runs on no
// worker, the DaemonSet is paused in etcd, no shed is left, an ordinary
// user is answered within the SLO: the runbook's own last check) and its
// events are the documented JSON lines; runbook undo returns to the start
// (the DaemonSet as it was, the agents running again, no shed).
func TestLabRunbookApiserverOverload(t *testing.T) {
	st := labtest.Lab(t)
	l, err := lab.Open(st.Dir)
	if err != nil {
		t.Fatal(err)
	}
	r := &runbookLab{st: st, l: l, inv: labInventory(t, st, nil), journal: filepath.Join(t.TempDir(), "journal.jsonl")}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if err := l.Reset(context.Background(), testWriter{t}); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	if _, err := l.Overload(ctx, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	params := []string{"--param", "daemonset=" + lab.TelemetryNamespace + "/" + lab.TelemetryDaemonSet, "--param", "kubeconfig=" + st.OncallKubeconfig}

	before := r.nodesAndEtcd(t)
	out, _, code := r.run(t, append([]string{"runbook", "run", "apiserver-overload", "--dry-run", "-o", "json"}, params...)...)
	if code != 0 {
		t.Fatalf("dry run: exit %d", code)
	}
	validEvents(t, "runbook run apiserver-overload --dry-run -o json", out)
	if after := r.nodesAndEtcd(t); after != before {
		t.Errorf("the dry run changed etcd or a node:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	planned := 0
	for _, l := range jsonLines(t, out) {
		if l["type"] == "stepFinished" && l["status"] == "planned" {
			planned++
		}
	}
	if planned < 3 {
		t.Errorf("the dry run planned %d change steps, want the shed, hold, limit and lift", planned)
	}

	out, _, code = r.run(t, append([]string{"runbook", "run", "apiserver-overload", "--yes", "-o", "json"}, params...)...)
	if code != 0 {
		t.Fatalf("run: exit %d", code)
	}
	validEvents(t, "runbook run apiserver-overload --yes -o json", out)
	var runID string
	seen := map[string]bool{}
	for _, l := range jsonLines(t, out) {
		typ, _ := l["type"].(string)
		seen[typ] = true
		switch typ {
		case "runStarted":
			runID, _ = l["runId"].(string)
		case "stepFinished":
			if l["status"] == "failed" {
				t.Errorf("step failed: %v", l)
			}
		case "runFinished":
			if l["status"] != "ok" || l["healthyMs"] == nil {
				t.Errorf("run finished %v", l)
			}
			t.Logf("recovered: healthy after %v ms, run %v ms", l["healthyMs"], l["elapsedMs"])
		}
	}
	for _, typ := range []string{"runStarted", "stepStarted", "change", "stepCheck", "stepFinished", "runFinished"} {
		if !seen[typ] {
			t.Errorf("no %q event in the JSON output", typ)
		}
	}
	if runID == "" {
		t.Fatal("no run ID")
	}
	// The end state, from the nodes and etcd.
	for w, n := range r.agents(t) {
		if n > 0 {
			t.Errorf("%s still runs %d telemetry agent process(es)", w, n)
		}
	}
	recovered := r.nodesAndEtcd(t)
	if !strings.Contains(daemonSetLine(recovered), `"nodeSelector"`) {
		t.Errorf("the DaemonSet is not paused in etcd: %s", daemonSetLine(recovered))
	}
	if strings.Contains(recovered, " active ") {
		t.Errorf("a shed is still active after the runbook:\n%s", recovered)
	}

	r.undoOverloadRun(t, runID, before)
}

// undoOverloadRun undoes an apiserver-overload run, lifts the incident's
// CPU cap, and checks the lab is back as before the run (the nodes and
// etcd as nodesAndEtcd read them): the agents run again on every worker, the DaemonSet's spec is the one it
// had, no shed is active.
func (r *runbookLab) undoOverloadRun(t *testing.T, runID, before string) {
	t.Helper()
	if _, _, code := r.run(t, "runbook", "undo", runID, "--yes"); code != 0 {
		t.Fatalf("runbook undo %s: exit %d", runID, code)
	}
	// The undo puts the offender back, and under the incident's CPU cap
	// its return saturates the API server again: the controller,
	// scheduler and kubelets that must start the agents then wait on it
	// (a clean-clone run at 50m had one worker of three running its agent
	// after 3 minutes). One undoes a recovery once the incident is over:
	// the API server gets its CPU back first, with every object as the
	// undo left it.
	if err := r.l.HealAPIServer(t.Context()); err != nil {
		t.Fatalf("lifting the incident's CPU cap before the agents come back: %v", err)
	}
	waitFor(t, "the telemetry agents to run again on every worker", 3*time.Minute, func() (bool, error) {
		n := r.agents(t)
		for _, h := range r.st.HostsWithRole("worker") {
			if n[h.Name] == 0 {
				return false, fmt.Errorf("agents per worker: %v", n)
			}
		}
		return true, nil
	})
	undone := r.nodesAndEtcd(t)
	if got, want := specOf(daemonSetLine(undone)), specOf(daemonSetLine(before)); got == "" || got != want {
		t.Errorf("undo did not put the DaemonSet's spec back:\nbefore: %s\nafter:  %s", want, got)
	}
	if strings.Contains(undone, " active ") {
		t.Errorf("a shed is active after undo:\n%s", undone)
	}
}

// daemonSetLine is the line of the telemetry DaemonSet.
func daemonSetLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "daemonset "+lab.TelemetryDaemonSet+" ") {
			return l
		}
	}
	return ""
}

// specOf is the spec of a daemonset line (undo writes the spec back as a
// new generation).
func specOf(line string) string {
	_, spec, _ := strings.Cut(line, " spec ")
	return spec
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestLabRunbookPreemptionCascade: under the preemption incident, the
// built-in priority-preemption-cascade runbook (--yes -o json) finds the
// PriorityClass and the preemptor with its diagnose step (no preemptor
// parameter), neutralises the class and scales the preemptor down in etcd and waits until every original ingester's
// replacement runs again; what runs is read from the workers' containerd
// (pods list), not from the apiserver. Undo scales the preemptor back.
func TestLabRunbookPreemptionCascade(t *testing.T) {
	st := labtest.Lab(t)
	l, err := lab.Open(st.Dir)
	if err != nil {
		t.Fatal(err)
	}
	r := &runbookLab{st: st, l: l, inv: labInventory(t, st, nil), journal: filepath.Join(t.TempDir(), "journal.jsonl")}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if err := l.Reset(context.Background(), testWriter{t}); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	res, err := l.Preemption(ctx, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint(res.OriginalIngesters)
	out, _, code := r.run(t, "runbook", "run", "priority-preemption-cascade", "--yes", "-o", "json",
		"--param", "victims="+lab.IngesterNamespace,
		"--param", "victimSelector=app=ingester", "--param", "victimCount="+want, "--param", "timeout=5m")
	if code != 0 {
		t.Fatalf("run: exit %d", code)
	}
	validEvents(t, "runbook run priority-preemption-cascade --yes -o json", out)
	var runID string
	for _, l := range jsonLines(t, out) {
		if l["type"] == "runFinished" {
			runID, _ = l["runId"].(string)
			if l["status"] != "ok" {
				t.Errorf("run finished %v", l)
			}
		}
	}
	// The diagnose step named the class: it is neutralised in etcd.
	pcOut, _, _ := r.run(t, "get", "priorityclasses", "medium", "-o", "json")
	var pc struct {
		GlobalDefault    bool   `json:"globalDefault"`
		PreemptionPolicy string `json:"preemptionPolicy"`
	}
	if err := json.Unmarshal([]byte(pcOut), &pc); err != nil || pc.GlobalDefault || pc.PreemptionPolicy != "Never" {
		t.Errorf("PriorityClass medium after the run: %+v (%v), want globalDefault false and preemptionPolicy Never", pc, err)
	}
	// From the workers' containerd: the ingesters run, the preemptor not.
	so, _, _ := r.run(t, "pods", "list", "--nodes", "role=worker", "-o", "json")
	running := map[string]int{}
	for _, p := range podLines(t, so) {
		if p.State == "ready" && (p.Namespace == lab.IngesterNamespace || p.Namespace == lab.NewClusterNS) {
			for _, c := range p.Containers {
				if c.State == "running" {
					running[p.Namespace]++
					break
				}
			}
		}
	}
	if fmt.Sprint(running[lab.IngesterNamespace]) != want || running[lab.NewClusterNS] != 0 {
		t.Errorf("running pods per namespace %v, want %s ingesters and no preemptor", running, want)
	}
	// The controller updated the Deployment's status since the scale:
	// undo refuses it (exit 4) unless --force.
	if _, _, code := r.run(t, "runbook", "undo", runID, "--yes"); code != 4 {
		t.Errorf("undo without --force: exit %d, want 4 (the object changed since)", code)
	}
	if _, _, code := r.run(t, "runbook", "undo", runID, "--yes", "--force"); code != 0 {
		t.Errorf("undo --force: exit %d", code)
	}
	pcOut, _, _ = r.run(t, "get", "priorityclasses", "medium", "-o", "json")
	pc.GlobalDefault, pc.PreemptionPolicy = false, ""
	if err := json.Unmarshal([]byte(pcOut), &pc); err != nil || !pc.GlobalDefault || pc.PreemptionPolicy == "Never" {
		t.Errorf("PriorityClass medium after the undo: %+v (%v), want it as it was (globalDefault)", pc, err)
	}
	gout, _, _ := r.run(t, "get", "deployments", "-n", lab.NewClusterNS, "new-cluster", "-o", "json")
	if !strings.Contains(gout, fmt.Sprintf(`"replicas": %d`, len(st.HostsWithRole("worker")))) && !strings.Contains(gout, fmt.Sprintf(`"replicas":%d`, len(st.HostsWithRole("worker")))) {
		t.Errorf("undo did not scale the preemptor back:\n%s", gout)
	}
}

// TestLabRunbookCheckAPIServerRestartable runs the apiserver-restartable
// check (what the built-in apiserver-overload runbook waits on before its
// tune) through a runbook of its own on the healthy lab: cp-1's API server
// answers /livez and /readyz on the node and its CPU stall is measured
// from its cgroup's cpu.pressure, so the check holds and says so. The
// starved side is TestIncidentOverload/tune, under the incident, through
// the same steps.Manifest.Unrestartable.
func TestLabRunbookCheckAPIServerRestartable(t *testing.T) {
	st := labtest.Lab(t)
	l, err := lab.Open(st.Dir)
	if err != nil {
		t.Fatal(err)
	}
	r := &runbookLab{st: st, l: l, inv: labInventory(t, st, nil), journal: filepath.Join(t.TempDir(), "journal.jsonl")}
	rb := filepath.Join(t.TempDir(), "restartable.yaml")
	if err := os.WriteFile(rb, []byte(`name: restartable
steps:
  - id: calm
    type: wait-until
    title: the API servers answer and have CPU to spare
    params:
      check: apiserver-restartable
      timeout: 1m
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code := r.run(t, "runbook", "run", rb, "--yes", "-o", "json")
	if code != 0 {
		t.Fatalf("runbook run: exit %d", code)
	}
	validEvents(t, "runbook run restartable.yaml -o json", out)
	if !strings.Contains(out, "the API server answers and has CPU to spare on 1 node(s)") {
		t.Errorf("the check did not say it measured cp-1's API server:\n%s", out)
	}
}
