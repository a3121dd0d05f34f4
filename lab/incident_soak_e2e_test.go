package lab_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// TestIncidentSoak starts each incident and resets it BREAKGLASS_LAB_SOAK
// times in a row on one lab, through the real binary as an operator runs
// them, and checks every round: the incident's evidence shows it started,
// and after the reset etcd holds none of its objects and no worker's
// containerd runs any of its containers. make soak runs it on a fresh lab.
func TestIncidentSoak(t *testing.T) {
	s := labtest.Lab(t)
	rounds, _ := strconv.Atoi(os.Getenv("BREAKGLASS_LAB_SOAK"))
	if rounds < 1 {
		t.Skip("the incident soak runs in make soak (BREAKGLASS_LAB_SOAK=N rounds)")
	}
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make soak sets it)")
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err != nil {
			return out.String(), &runError{args, err, errOut.String()}
		}
		return out.String(), nil
	}
	reset := func(round int, incident string) {
		t.Helper()
		if _, err := run("lab", "incident", "reset", "--dir", s.Dir); err != nil {
			t.Fatalf("round %d %s: reset: %v", round, incident, err)
		}
		if left := incidentLeftovers(t, run, s); len(left) > 0 {
			t.Fatalf("round %d %s: after reset, etcd still holds %s", round, incident, strings.Join(left, ", "))
		}
	}
	// A round that fails leaves its incident running: end it, so that the
	// lab is usable afterwards.
	t.Cleanup(func() { run("lab", "incident", "reset", "--dir", s.Dir) })
	workers := len(s.HostsWithRole("worker"))
	incidents := []string{lab.IncidentOverload, lab.IncidentPreemption}
	if only := os.Getenv("BREAKGLASS_LAB_SOAK_ONLY"); only != "" {
		incidents = strings.Split(only, ",")
	}
	for _, incident := range incidents {
		for round := 1; round <= rounds; round++ {
			out, err := run("lab", "incident", incident, "--dir", s.Dir, "-o", "json")
			if err != nil {
				t.Fatalf("round %d %s: %v", round, incident, err)
			}
			switch incident {
			case lab.IncidentOverload:
				var res lab.OverloadResult
				if err := json.Unmarshal([]byte(out), &res); err != nil {
					t.Fatalf("round %d: %v: %s", round, err, out)
				}
				bad := res.After.Requests - res.After.OK + res.After.Slow
				t.Logf("round %d overload: before ok %d/%d; after ok %d (%d slower than %s), 429 %d, timeouts %d of %d, p50 %dms; apiserver 429s %d; agents %d/%d",
					round, res.Before.OK, res.Before.Requests, res.After.OK, res.After.Slow, lab.SLO, res.After.Throttled, res.After.TimedOut, res.After.Requests,
					res.After.P50Ms, res.After.Rejected429, res.TelemetryPods, workers)
				if bad < res.After.Requests/2 || res.TelemetryPods != workers {
					t.Errorf("round %d: the overload incident did not saturate the apiserver (see the line above)", round)
				}
			case lab.IncidentPreemption:
				var res lab.PreemptionResult
				if err := json.Unmarshal([]byte(out), &res); err != nil {
					t.Fatalf("round %d: %v: %s", round, err, out)
				}
				t.Logf("round %d preemption: %d of %d original ingesters preempted, %d Preempted events",
					round, res.Evicted, res.OriginalIngesters, res.PreemptedEvents)
				if res.Evicted != res.OriginalIngesters || res.PreemptedEvents == 0 {
					t.Errorf("round %d: the preemption cascade did not run through", round)
				}
			}
			reset(round, incident)
		}
	}
}

type runError struct {
	args   []string
	err    error
	stderr string
}

func (e *runError) Error() string {
	return "breakglass " + strings.Join(e.args, " ") + ": " + e.err.Error() + "\n" + e.stderr
}

// incidentLeftovers lists the incidents' objects that etcd still holds,
// read with breakglass get (from etcd, not through the apiserver).
func incidentLeftovers(t *testing.T, run func(...string) (string, error), s *lab.State) []string {
	t.Helper()
	var left []string
	for _, q := range []struct {
		resource string
		names    map[string]bool
	}{
		{"namespaces", map[string]bool{lab.TelemetryNamespace: true, lab.IngesterNamespace: true, lab.NewClusterNS: true}},
		{"priorityclasses", map[string]bool{"critical": true, "high": true, "medium": true, "low": true}},
		{"clusterroles", map[string]bool{"telemetry-agent": true}},
		{"clusterrolebindings", map[string]bool{"telemetry-agent": true}},
		{"daemonsets", map[string]bool{lab.TelemetryDaemonSet: true}},
		{"pods", nil},
	} {
		args := []string{"--inventory", s.Inventory, "get", q.resource, "-o", "name"}
		if q.resource == "daemonsets" || q.resource == "pods" {
			args = append(args, "-A")
		}
		out, err := run(args...)
		if err != nil {
			t.Fatalf("reading %s from etcd: %v", q.resource, err)
		}
		for _, line := range strings.Fields(out) {
			name := line[strings.LastIndex(line, "/")+1:]
			if q.names[name] || (q.resource == "pods" && incidentPod(name)) {
				left = append(left, line)
			}
		}
	}
	return left
}

func incidentPod(name string) bool {
	for _, p := range []string{lab.TelemetryDaemonSet + "-", "ingester-", "new-cluster-"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
