package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// apiserverArgs is the command line of the kube-apiserver process that runs
// in cp's network namespace, read on cp over SSH ("" when none runs).
func apiserverArgs(t *testing.T, st *lab.State, cp lab.Host) string {
	t.Helper()
	pids := ownProcs(t, st, cp, "kube-apiserver")
	if len(pids) != 1 {
		return ""
	}
	out, err := sshHost(st, cp, st.KnownHosts, "tr '\\0' ' ' < /proc/"+pids[0]+"/cmdline")
	if err != nil {
		t.Fatalf("%s: read the apiserver's command line: %v\n%s", cp.Name, err, out)
	}
	return out
}

// manifestsDir lists cp's manifests directory.
func manifestsDir(t *testing.T, cp lab.Host) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(lab.APIServerManifest(cp)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestLabAPIServerTune is issue 11's tune on the real thing: cp-1's
// kubelet runs the API server as a static pod, and breakglass apiserver
// tune, over SSH, edits its manifest. --max-requests-inflight 777 makes the
// kubelet restart the API server with the flag (its process arguments on
// the node, its /metrics), leaving nothing but the original files in the
// manifests directory; a tune with a flag the API server refuses is rolled
// back on that node by itself, the command exits non-zero, and the API
// server answers again with the previous flags; undo restores the
// original manifest's bytes.
func TestLabAPIServerTune(t *testing.T) {
	st := labtest.Lab(t)
	// It restarts the API server the other lab tests talk to: the
	// incidents phase of make test runs it, alone.
	if os.Getenv("BREAKGLASS_LAB_INCIDENTS") != "1" {
		t.Skip("runs in the incidents phase of make test, alone (BREAKGLASS_LAB_INCIDENTS=1): it restarts the API server")
	}
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make test sets it)")
	}
	cp := st.HostsWithRole("control-plane")[0]
	b := &bgRun{t: t, bin: bin, inv: st.Inventory, jnl: filepath.Join(t.TempDir(), "breakglass", "journal.jsonl")}
	if err := os.MkdirAll(filepath.Dir(b.jnl), 0o755); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(lab.APIServerManifest(cp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever failed, the lab's own manifest back for the tests
		// after this one.
		if cur, _ := os.ReadFile(lab.APIServerManifest(cp)); string(cur) != string(orig) {
			l, err := lab.Open(st.Dir)
			if err == nil {
				err = l.HealAPIServer(t.Context())
			}
			if err != nil {
				t.Errorf("restoring the apiserver: %v", err)
			}
		}
	})
	before := manifestsDir(t, cp)
	if args := apiserverArgs(t, st, cp); !strings.Contains(args, "--max-requests-inflight=400") {
		t.Fatalf("the apiserver runs with %q, want the lab's --max-requests-inflight=400", args)
	}

	// The two limits as the running API server applies them, from its
	// /metrics on the node: its priority levels' nominal seats add up to
	// inflight + mutating (each level's share rounded up).
	if s := statusSeats(t, b, cp.Name); s < 600 || s >= 620 {
		t.Errorf("before the tune: %v seats in /metrics, want 400+200 (up to 620 with rounding)", s)
	}

	dry := b.run("apiserver", "tune", "--max-requests-inflight", "777", "--dry-run")
	if dry.code != 0 || !strings.Contains(dry.stdout, "--max-requests-inflight=777") {
		t.Fatalf("dry run: exit %d", dry.code)
	}
	if cur, _ := os.ReadFile(lab.APIServerManifest(cp)); string(cur) != string(orig) {
		t.Fatal("the dry run changed the manifest")
	}

	r := b.run("apiserver", "tune", "--max-requests-inflight", "777", "--yes", "-o", "json", "--journal", b.jnl)
	if r.code != 0 {
		t.Fatalf("tune: exit %d", r.code)
	}
	if args := apiserverArgs(t, st, cp); !strings.Contains(args, "--max-requests-inflight=777") {
		t.Errorf("after the tune the apiserver runs with %q", args)
	}
	st2 := b.run("apiserver", "status", "-o", "json")
	if st2.code != 0 || !strings.Contains(st2.stdout, "777") {
		t.Errorf("apiserver status after the tune: exit %d, want 777 among its flags", st2.code)
	}
	if got := manifestsDir(t, cp); !slices.Equal(got, before) {
		t.Errorf("the manifests directory holds %q after the tune, had %q", got, before)
	}
	if s := statusSeats(t, b, cp.Name); s < 977 || s >= 997 {
		t.Errorf("after the tune: %v seats in /metrics, want 777+200 (up to 997 with rounding)", s)
	}
	change := changeID(t, r.stdout)

	// A flag the API server refuses to start with: rolled back, exit
	// non-zero, the apiserver answers again with 777.
	bad := b.run("apiserver", "tune", "--flag", "no-such-flag=1", "--wait", "90s", "--yes", "--journal", b.jnl)
	if bad.code == 0 || !strings.Contains(bad.stderr, "rolled back") {
		t.Errorf("a tune the apiserver cannot start with: exit %d, want non-zero and rolled back", bad.code)
	}
	if args := apiserverArgs(t, st, cp); !strings.Contains(args, "--max-requests-inflight=777") || strings.Contains(args, "no-such-flag") {
		t.Errorf("after the rollback the apiserver runs with %q", args)
	}
	if got := manifestsDir(t, cp); !slices.Equal(got, before) {
		t.Errorf("the manifests directory holds %q after the rollback", got)
	}
	l, err := lab.Open(st.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := l.WaitHealthy(t.Context(), 2*time.Minute); err != nil {
		t.Errorf("after the rollback: %v (%s)", err, p)
	}

	// Undo of the first tune: the original bytes, and the lab's flags.
	if u := b.run("undo", change, "--yes", "--journal", b.jnl); u.code != 0 {
		t.Fatalf("undo: exit %d", u.code)
	}
	if cur, _ := os.ReadFile(lab.APIServerManifest(cp)); string(cur) != string(orig) {
		t.Error("undo left other bytes than the original manifest")
	}
	if args := apiserverArgs(t, st, cp); !strings.Contains(args, "--max-requests-inflight=400") {
		t.Errorf("after undo the apiserver runs with %q", args)
	}
}

// statusSeats is apiserver status's seats for node (read from its
// /metrics), waiting a little for an API server that just restarted.
func statusSeats(t *testing.T, b *bgRun, node string) float64 {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r := b.run("apiserver", "status", "--nodes", node, "-o", "json")
		var w struct {
			Seats float64 `json:"seats"`
		}
		if r.code == 0 && json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &w) == nil && w.Seats > 0 {
			return w.Seats
		}
		if time.Now().After(deadline) {
			t.Errorf("apiserver status --nodes %s: no seats from /metrics after 1m (exit %d)", node, r.code)
			return 0
		}
		time.Sleep(2 * time.Second)
	}
}

// changeID is the id of the first change line of a command's -o json.
func changeID(t *testing.T, stdout string) string {
	t.Helper()
	for _, line := range strings.Split(stdout, "\n") {
		var ev struct{ Type, ID string }
		if json.Unmarshal([]byte(line), &ev) == nil && ev.Type == "change" && ev.ID != "" {
			return ev.ID
		}
	}
	t.Fatalf("no change line in:\n%s", stdout)
	return ""
}

// tuneRefusedUnderOverload is a subtest of TestIncidentOverload: with
// cp-1's API server saturated, apiserver tune is refused (exit 4), naming
// the API server starved of CPU, and leaves the manifest and the running
// API server as they were. Restarted into the load, that API server did
// not come back: at 40m, its post-start hook
// start-service-ip-repair-controllers timed out, it exited, and kubelet
// started it into the load again (docs/apiserver.md).
//
// The refusal rests on the API server's CPU stall (its cgroup's
// cpu.pressure), 85 to 99% at every cap the incident searched: its
// /livez and /readyz are exempt from API Priority and Fairness and cheap,
// and in one CI run they answered within the probe's 2 s five times in a
// row. It is a dry run, which plans (and refuses) exactly as the tune
// does; the stall is measured over a second, so a dry run that is not
// refused is asked again (at most 5 times), and must have changed nothing
// either. The refusal of a real tune, with nothing written or journaled,
// is tested on real sshd (TestAPIServerTuneCommand,
// TestTuneRefusesAnAPIServerStarvedOfCPU).
func tuneRefusedUnderOverload(t *testing.T, l *lab.Lab) {
	st := l.State
	cp := st.Hosts[0]
	b := newBGRun(t, st)
	before := apiserverArgs(t, st, cp)
	if before == "" {
		t.Fatalf("no single kube-apiserver process on %s", cp.Name)
	}
	refused := false
	for i := 0; i < 5 && !refused; i++ {
		r := b.run("apiserver", "tune", "--nodes", cp.Name, "--max-requests-inflight", "1200", "--max-mutating-requests-inflight", "600",
			"--dry-run", "--journal", b.jnl)
		switch {
		case r.code == 4 && strings.Contains(r.stderr, "does not answer or is starved of CPU now on "+cp.Name) &&
			strings.Contains(r.stderr, "starved of CPU: its threads waited for CPU") && strings.Contains(r.stderr, "--force"):
			refused = true
		case r.code != 0:
			t.Fatalf("tune --dry-run under the incident: exit %d, want 4 (refused, starved of CPU) or 0\n%s", r.code, r.stderr)
		}
	}
	if !refused {
		t.Errorf("5 dry runs of a tune of the saturated API server: none refused as starved of CPU")
	}
	if _, err := os.Stat(b.jnl); !os.IsNotExist(err) {
		t.Errorf("the dry runs journaled: %v", err)
	}
	if after := apiserverArgs(t, st, cp); after != before {
		t.Errorf("after the dry runs cp-1's API server runs with %q, before %q", after, before)
	}
}

// inflightRaisedBeforeOverload is the inflight lever, a subtest of
// TestIncidentOverload on the lab it reset: breakglass apiserver tune
// doubles cp-1's inflight limits (800 and 400) while the API server is
// healthy (under the saturation the tune is refused, see
// tuneRefusedUnderOverload), and the seats API Priority and Fairness gives
// each priority level double. With BREAKGLASS_LAB_INFLIGHT=1 (make
// soak-inflight; a few minutes more than make test can spare) the
// overload incident then runs again at the cap that saturated it with the
// default limits, and who is refused, and how the ordinary users are
// answered, with the default limits and the doubled ones, is printed side
// by side (docs/lab.md says what it showed).
func inflightRaisedBeforeOverload(t *testing.T, l *lab.Lab, res *lab.OverloadResult, calm, saturated lab.Refusals) {
	st := l.State
	cp := st.Hosts[0]
	b := newBGRun(t, st)
	r := b.run("apiserver", "tune", "--nodes", cp.Name, "--max-requests-inflight", "800", "--max-mutating-requests-inflight", "400", "--yes", "--journal", b.jnl)
	if r.code != 0 {
		t.Fatalf("tune of the healthy API server: exit %d", r.code)
	}
	if args := apiserverArgs(t, st, cp); !strings.Contains(args, "--max-requests-inflight=800") || !strings.Contains(args, "--max-mutating-requests-inflight=400") {
		t.Fatalf("after the tune the apiserver runs with %q", args)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// The lever took: APF's levels have twice the seats (each level's
	// share is rounded up, so allow one seat of rounding per doubling),
	// read from the API server while it answers.
	seats, err := l.NominalSeats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, level := range []string{"global-default", "workload-low"} {
		if d, r := calm.Seats[level], seats[level]; d == 0 || r < 2*d-1 {
			t.Errorf("%s: %d nominal seats with the default limits, %d raised: want about twice", level, d, r)
		}
	}
	if os.Getenv("BREAKGLASS_LAB_INFLIGHT") != "1" {
		t.Logf("the overload again with the raised limits, measured: make soak-inflight (BREAKGLASS_LAB_INFLIGHT=1)")
		return
	}
	again, err := l.OverloadWith(ctx, testLog{t}, lab.OverloadOptions{CPUMillis: res.CPUMillis, KeepFlags: true})
	if err != nil {
		t.Fatal(err)
	}
	raised, err := l.MeasureRefusals(ctx, "raised", refusalRequests, nil)
	if err != nil {
		t.Fatal(err)
	}
	saturated.Phase = "default"
	var tbl strings.Builder
	lab.WriteRefusals(&tbl, []lab.Refusals{saturated, raised})
	fmt.Fprintf(&tbl, "APF rejected: default limits %s; raised %s\n", saturated.RejectedLine(), raised.RejectedLine())
	res.After.Phase, again.After.Phase = "default", "raised"
	lab.WriteProbes(&tbl, []lab.Probe{res.After, again.After})
	t.Logf("the overload at %dm CPU, inflight limits 400/200 (default) and 800/400 (raised):\n%s", res.CPUMillis, tbl.String())
	fmt.Printf("overload with the inflight limits raised (%dm CPU on cp-1; 400/200, then 800/400):\n%s", res.CPUMillis, tbl.String())
}
