package lab_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
)

// In the overload incident (API Priority and Fairness on, in its default
// configuration), shedding the telemetry service account through etcd
// brings an ordinary user's requests back within the SLO; lifting the shed
// lets the load back in.
func TestIncidentShedFlowSchemaRecovers(t *testing.T) {
	l := incidentLab(t)
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make test sets it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b := &bgRun{t: t, bin: bin, inv: l.State.Inventory, jnl: t.TempDir() + "/journal.jsonl"}
	t.Cleanup(func() {
		b.run("shed", "lift", "--only", "flowschema", "--yes", "--journal", b.jnl)
		if err := l.Reset(context.Background(), testLog{t}); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	res, err := l.Overload(ctx, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if bad := res.After.Requests - res.After.OK + res.After.Slow; bad < res.After.Requests/2 {
		t.Fatalf("the incident did not saturate the apiserver: %+v", res.After)
	}
	r := b.run("shed", "flowschema", "--serviceaccount", lab.TelemetryNamespace+"/"+lab.TelemetryDaemonSet, "--reject", "--ttl", "15m", "--yes", "--journal", b.jnl)
	if r.code != 0 {
		t.Fatalf("shed flowschema: exit %d\n%s", r.code, r.stderr)
	}
	shed := time.Now()
	healthy, err := l.WaitHealthy(ctx, 3*time.Minute)
	if err != nil {
		t.Fatalf("after shedding the telemetry service account: %v", err)
	}
	took := time.Since(shed).Round(time.Second)
	after, err := l.Probe(ctx, "shed", 20)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	lab.WriteProbes(&table, []lab.Probe{res.Before, res.After, healthy, after})
	t.Logf("within the %s SLO %s after the shed:\n%s", lab.SLO, took, table.String())
	if after.P50 >= lab.SLO {
		t.Errorf("after the shed the oncall user's median is %s, want under %s", after.P50, lab.SLO)
	}
	if r := b.run("shed", "status", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, "telemetry") {
		t.Errorf("shed status: exit %d, want the telemetry shed listed:\n%s", r.code, r.stdout)
	}
}
