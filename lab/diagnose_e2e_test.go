package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/recover/diagnose"
)

// diagnosis runs the real binary's diagnose -o json against the lab and
// decodes its report.
func diagnosis(t *testing.T, st *lab.State) *diagnose.Report {
	t.Helper()
	return diagnosisWith(t, st, st.Inventory)
}

func diagnosisWith(t *testing.T, st *lab.State, inventory string) *diagnose.Report {
	t.Helper()
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make test sets it)")
	}
	b := &bgRun{t: t, bin: bin, inv: inventory, jnl: filepath.Join(t.TempDir(), "breakglass", "journal.jsonl")}
	r := b.run("diagnose", "-o", "json", "--since", "1h")
	if r.code != 0 {
		t.Fatalf("diagnose: exit %d\n%s", r.code, r.stderr)
	}
	var rep diagnose.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("diagnose -o json: %v", err)
	}
	text := b.run("diagnose", "--since", "1h")
	if text.code != 0 {
		t.Errorf("diagnose (text): exit %d", text.code)
	}
	// What a diagnosis costs is reported, whatever it finds: reads, one
	// session per node and one more per control-plane node, every node.
	hosts := len(st.Hosts)
	if rep.Reads.Ranges == 0 || rep.Reads.Txns != 0 || rep.SSH.Nodes != hosts || rep.SSH.Failed != 0 ||
		rep.SSH.Sessions != int64(hosts+len(st.HostsWithRole("control-plane"))) {
		t.Errorf("cost: etcd %+v, ssh %+v (lab of %d hosts)", rep.Reads, rep.SSH, hosts)
	}
	// The probe ran on the node: an answer, or why there was none (a
	// saturated API server may not answer even its admin in time, which
	// is a finding, not a failure).
	if len(rep.ControlPlane) == 0 || rep.ControlPlane[0].Health == nil {
		t.Errorf("control plane not read: %+v", rep.ControlPlane)
	} else if h := rep.ControlPlane[0].Health; h.Code == 0 && len(h.Problems) == 0 {
		t.Errorf("control plane probe: no answer and no reason: %+v", h)
	} else {
		t.Logf("cp-1 apiserver: readyz %d in %d ms, 429s %.0f, problems %v", h.Code, h.LatencyMs, h.Rejected429, h.Problems)
	}
	if rep.DNS != nil && rep.SSH.Tunnels != int64(hosts) {
		t.Errorf("cost: %d DNS tunnels, want one per node (%d)", rep.SSH.Tunnels, hosts)
	}
	if rep.Census == nil || rep.Census.Nodes.Total != len(st.KubeletHosts()) {
		t.Errorf("census nodes: %+v", rep.Census)
	}
	t.Logf("diagnose took %d ms: %d etcd reads (%d keys, %d bytes), %d SSH sessions, %d containerd connections",
		rep.TookMs, rep.Reads.Ranges+rep.Reads.Status, rep.Reads.Keys, rep.Reads.Bytes, rep.SSH.Sessions, rep.SSH.Containerd)
	return &rep
}

// healthy checks a healthy lab's diagnosis: no suspect above threshold.
func healthy(t *testing.T, st *lab.State) {
	t.Helper()
	rep := diagnosis(t, st)
	if rep.Suspect != nil {
		t.Errorf("healthy lab: top suspect %s %s (%v)", rep.Suspect.Kind, rep.Suspect.Ref(), rep.Suspect.Why)
	}
	for _, s := range rep.Suspects {
		if s.AboveThreshold {
			t.Errorf("healthy lab: suspect above threshold: %s %s score %.0f", s.Kind, s.Ref(), s.Score)
		}
	}
	if len(rep.ControlPlane) == 0 || rep.ControlPlane[0].Health == nil || !rep.ControlPlane[0].Health.Ready {
		t.Errorf("healthy lab: apiserver not ready on the node: %+v", rep.ControlPlane)
	}
	// Cluster DNS answers on every node, through the Service's address
	// (the lab's stand-in for kube-proxy) and from the real CoreDNS, with
	// default/kubernetes's address; CoreDNS's own connections to the API
	// server make it no suspect.
	if d := rep.DNS; d == nil || d.Nodes != len(st.Hosts) || d.Answered != d.Nodes || d.ClusterIP != lab.ClusterDNS || len(d.Endpoints) != min(2, len(st.HostsWithRole("worker"))) || d.Want == "" {
		t.Errorf("healthy lab: cluster DNS %+v (notes %v)", d, rep.Notes)
	} else {
		t.Logf("%s", d.Line())
	}
	for _, s := range rep.Suspects {
		if s.Kind == "Deployment" && s.Ref() == "kube-system/"+lab.CoreDNSDeployment && s.Evidence.Conns > 0 {
			t.Errorf("healthy lab: CoreDNS a suspect by its connections: %+v", s)
		}
	}
}

// diagnoseOverload is issue 12's test on the real cluster, a subtest of
// TestIncidentOverload (a healthy lab has no suspect: checked there before
// the incident): under the overload incident the telemetry
// DaemonSet is the top suspect, with connections from every worker seen
// in each worker's /proc and named through its containerd, and the selector
// the levers take.
func diagnoseOverload(t *testing.T, l *lab.Lab) {
	st := l.State
	rep := diagnosis(t, st)
	ref := lab.TelemetryNamespace + "/" + lab.TelemetryDaemonSet
	top := rep.Suspect
	if top == nil || top.Kind != "DaemonSet" || top.Ref() != ref || top.Rank != 1 {
		t.Fatalf("top suspect: %+v, want DaemonSet %s (suspects %+v)", top, ref, rep.Suspects)
	}
	t.Logf("top suspect %s %s score %.0f: %s", top.Kind, top.Ref(), top.Score, strings.Join(top.Why, "; "))
	perNode := map[string]int{}
	for _, n := range top.Evidence.PerNode {
		perNode[n.Node] = n.Conns
	}
	for _, w := range st.HostsWithRole("worker") {
		if perNode[w.Name] == 0 {
			t.Errorf("no connections of the agent counted on %s: %v", w.Name, top.Evidence.PerNode)
		}
	}
	t.Logf("agent connections per worker: %v", perNode)
	// The blast radius: cluster DNS asked from every node, whatever it
	// answers now (the incident restarted CoreDNS under the saturated API
	// server; TestIncidentDNSBlastRadius makes the failure certain).
	if rep.DNS == nil || rep.DNS.Nodes != len(st.Hosts) {
		t.Errorf("cluster DNS under the incident: %+v (notes %v)", rep.DNS, rep.Notes)
	} else {
		t.Logf("under the incident: %s", rep.DNS.Line())
	}
	if strings.Join(top.Selector, " ") != "--daemonset "+ref || top.ServiceAccount != ref {
		t.Errorf("selector %v, service account %q", top.Selector, top.ServiceAccount)
	}
	if !top.Evidence.New || !contains(top.Evidence.Lists, "pods") || top.Evidence.Footprint == 0 {
		t.Errorf("evidence: %+v", top.Evidence)
	}
	// The control-plane node sees the same clients by source address.
	var in int
	if len(rep.ControlPlane) == 0 {
		t.Fatal("no control-plane node in the report")
	}
	for _, s := range rep.ControlPlane[0].Sources {
		if s.Node != "" && strings.HasPrefix(s.Node, "worker") {
			in += s.Conns
		}
	}
	if in < top.Evidence.Conns/2 {
		t.Errorf("cp-1 sees %d connections from the workers, the workers %d of the agent's", in, top.Evidence.Conns)
	}

	// A node whose containerd breakglass cannot reach: the pods holding
	// connections are named from their objects in etcd instead.
	inv, err := os.ReadFile(st.Inventory)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(inv, []byte("\ncontainerd:")) {
		t.Log("the lab inventory sets containerd: the fallback is not exercised")
	} else {
		alt := filepath.Join(st.Dir, fmt.Sprintf("diagnose-nocri-%d.yaml", os.Getpid()))
		if err := os.WriteFile(alt, append(inv, "containerd:\n  socket: /nonexistent/containerd.sock\n"...), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(alt) })
		rep := diagnosisWith(t, st, alt)
		if top := rep.Suspect; top == nil || top.Kind != "DaemonSet" || top.Ref() != ref {
			t.Errorf("without containerd: top suspect %+v", top)
		}
		if !strings.Contains(strings.Join(rep.Notes, "\n"), "named from etcd") {
			t.Errorf("without containerd: notes %q", rep.Notes)
		}
	}
}

// TestIncidentDiagnosePreemption: under the 2019 cascade the new
// globalDefault PriorityClass is the top suspect, and the workload whose
// pods preempted the ingesters is named too.
func TestIncidentDiagnosePreemption(t *testing.T) {
	l := incidentLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if err := l.Reset(context.Background(), testLog{t}); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	res, err := l.Preemption(ctx, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	if res.PreemptedEvents == 0 {
		t.Fatalf("the incident made no Preempted events: %+v", res)
	}
	rep := diagnosis(t, l.State)
	top := rep.Suspect
	if top == nil || top.Kind != "PriorityClass" || top.Name != "medium" || !top.Evidence.GlobalDefault || top.Evidence.Preemptions == 0 {
		t.Fatalf("top suspect: %+v (suspects %+v)", top, rep.Suspects)
	}
	var preemptor *diagnose.Suspect
	for i, s := range rep.Suspects {
		if s.Kind == "Deployment" && s.Ref() == lab.NewClusterNS+"/new-cluster" {
			preemptor = &rep.Suspects[i]
		}
	}
	if preemptor == nil || !preemptor.AboveThreshold || preemptor.Evidence.Preemptions == 0 {
		t.Errorf("preempting workload %s/new-cluster: %+v", lab.NewClusterNS, preemptor)
	}
	t.Logf("suspects: %s (%d preemptions), then %+v", top.Name, top.Evidence.Preemptions, preemptor)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestIncidentDNSBlastRadius: CoreDNS restarted while the API server
// answers nothing cannot sync and answers SERVFAIL for every cluster name
// (December 2024: service discovery failed with the control plane), and
// diagnose, which needs no API server, shows it failing on every node.
// Once the API server answers again, CoreDNS syncs and DNS answers.
func TestIncidentDNSBlastRadius(t *testing.T) {
	l := incidentLab(t)
	st := l.State
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	thaw, err := l.FreezeAPIServer()
	if err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			thaw()
		}
	}()
	answers, err := l.RestartCoreDNS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for addr, rcode := range answers {
		if rcode != "SERVFAIL" {
			t.Errorf("CoreDNS at %s restarted with no API server answered %s, want SERVFAIL", addr, rcode)
		}
	}
	rep := diagnosis(t, st)
	thawed = true
	if err := thaw(); err != nil {
		t.Fatal(err)
	}
	d := rep.DNS
	if d == nil || d.Nodes != len(st.Hosts) || d.Answered != 0 || d.Rcodes["SERVFAIL"] != d.Nodes || len(d.Failing) != d.Nodes {
		t.Errorf("cluster DNS with CoreDNS unsynced: %+v (notes %v)", d, rep.Notes)
	} else {
		t.Logf("%s", d.Line())
	}
	if err := l.WaitDNS(ctx, 2*time.Minute); err != nil {
		t.Fatalf("after the API server came back: %v", err)
	}
	healthy(t, st)
}
