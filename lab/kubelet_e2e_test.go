package lab_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// ownProcs lists the pids of processes named name in the host's own
// network namespace, read on the host over SSH as an operator would.
func ownProcs(t *testing.T, st *lab.State, h lab.Host, name string) []string {
	t.Helper()
	out, err := sshHost(st, h, st.KnownHosts, fmt.Sprintf(`me=$(readlink /proc/$$/ns/net); for p in $(pgrep -x %s); do [ "$(readlink /proc/$p/ns/net)" = "$me" ] && echo $p; done; true`, name))
	if err != nil {
		t.Fatalf("%s: look for %s: %v\n%s", h.Name, name, err, out)
	}
	return strings.Fields(out)
}

type nodeView struct {
	ready     map[string]string    // node -> Ready condition status
	pods      map[string]string    // ns/name -> uid@node, pods of the test namespace
	deleting  map[string]bool      // pods with a deletion timestamp
	leaseTime map[string]time.Time // node -> lease renewTime
}

// clusterView reads nodes, the test's pods and the node leases through the
// API server (healthy here: no incident runs).
func clusterView(t *testing.T, st *lab.State, ns string) nodeView {
	t.Helper()
	v := nodeView{ready: map[string]string{}, pods: map[string]string{}, deleting: map[string]bool{}, leaseTime: map[string]time.Time{}}
	var nodes struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "nodes", "-o", "json")), &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" {
				v.ready[n.Metadata.Name] = c.Status
			}
		}
	}
	var pods struct {
		Items []struct {
			Metadata struct {
				Name, UID         string
				DeletionTimestamp *string
			}
			Spec struct{ NodeName string }
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "pods", "-n", ns, "-o", "json")), &pods); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		v.pods[p.Metadata.Name] = p.Metadata.UID + "@" + p.Spec.NodeName
		if p.Metadata.DeletionTimestamp != nil {
			v.deleting[p.Metadata.Name] = true
		}
	}
	var leases struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct{ RenewTime time.Time }
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "leases", "-n", "kube-node-lease", "-o", "json")), &leases); err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Items {
		v.leaseTime[l.Metadata.Name] = l.Spec.RenewTime
	}
	return v
}

var changeIDRe = regexp.MustCompile(`\b\d{8}T\d{6}-[0-9a-f]+\b`)

// TestLabKubeletStopStart is issue 11 part 3 on the real cluster, through
// the real binary: kubelet stop --fraction 0.5 moves the real
// controller-manager aside on cp-1 first, then stops half the workers'
// real kubelets; while the stopped node's lease is older than the
// controller-manager's node-monitor grace period (40 s in the lab), no
// pod of it is evicted and nobody marks it NotReady (read from the API
// server); controller-manager restore is refused while a kubelet is down;
// undo starts the kubelet (waiting for its lease in etcd) and then puts
// the controller-manager back, and every node is Ready. A second round
// goes through kubelet start and controller-manager restore instead.
func TestLabKubeletStopStart(t *testing.T) {
	st := labtest.Lab(t)
	// It stops kubelets and the controller-manager that the other lab
	// tests, running at the same time in other packages, rely on: make
	// test runs it in the incidents phase, alone.
	if os.Getenv("BREAKGLASS_LAB_INCIDENTS") != "1" {
		t.Skip("runs in the incidents phase of make test, alone (BREAKGLASS_LAB_INCIDENTS=1): it stops kubelets other lab tests need")
	}
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make test sets it)")
	}
	cps := st.HostsWithRole("control-plane")
	workers := st.HostsWithRole("worker")
	if len(cps) == 0 || len(workers) < 2 {
		t.Skipf("needs a control-plane host and two workers (have %d, %d)", len(cps), len(workers))
	}
	cp := cps[0]
	b := &bgRun{t: t, bin: bin, inv: st.Inventory, jnl: filepath.Join(t.TempDir(), "breakglass", "journal.jsonl")}
	if err := os.MkdirAll(filepath.Dir(b.jnl), 0o755); err != nil {
		t.Fatal(err)
	}
	const ns = "bg-kubelet-test"
	t.Cleanup(func() {
		// Whatever failed, leave every kubelet and the controller-manager
		// running for the tests after this one.
		b.run("kubelet", "start", "--yes", "--journal", b.jnl)
		b.run("controller-manager", "restore", "--yes", "--journal", b.jnl)
		kubectl(t, st, "", "delete", "namespace", ns, "--wait=false", "--ignore-not-found")
	})
	kubectl(t, st, "", "create", "namespace", ns)
	// Pods need the namespace's default service account, which the
	// controller-manager creates.
	waitCond(t, "the default service account of "+ns, time.Minute, func() (bool, string) {
		_, err := tryKubectl(st, "get", "serviceaccount", "-n", ns, "default")
		return err == nil, fmt.Sprint(err)
	})
	for _, w := range workers {
		kubectl(t, st, fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p-%s","namespace":"%s"},
"spec":{"nodeName":"%s","containers":[{"name":"c","image":"%s","imagePullPolicy":"Never"}]}}`, w.Name, ns, w.Name, lab.PauseImage), "apply", "-f", "-")
	}
	waitCond(t, "every node Ready and the test pods bound", 2*time.Minute, func() (bool, string) {
		v := clusterView(t, st, ns)
		for _, w := range workers {
			if v.ready[w.Name] != "True" {
				return false, w.Name + " not Ready"
			}
		}
		return len(v.pods) == len(workers), fmt.Sprintf("%d pods", len(v.pods))
	})
	if n := ownProcs(t, st, cp, "kube-controller"); len(n) == 0 {
		t.Fatalf("before: no kube-controller-manager runs on %s", cp.Name)
	}
	// A hosted control plane's controller-manager, as a Deployment in the
	// "hosting cluster" (the lab's own: the real controller-manager on
	// cp-1 acts on it): every round scales it to 0 first and puts it back
	// last. A second one, owned by an operator object (a ConfigMap stands
	// in), is refused.
	kubectl(t, st, deployJSONIn(ns, "kube-controller-manager", ""), "apply", "-f", "-")
	kubectl(t, st, `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"hcp","namespace":"`+ns+`"}}`, "apply", "-f", "-")
	hcpUID := strings.TrimSpace(kubectl(t, st, "", "get", "configmap", "-n", ns, "hcp", "-o", "jsonpath={.metadata.uid}"))
	kubectl(t, st, deployJSONIn(ns, "kcm-owned", hcpUID), "apply", "-f", "-")
	hosted := ns + "/kube-controller-manager"
	hostedAt := func(what string, want int) {
		t.Helper()
		waitCond(t, fmt.Sprintf("%s: the hosted controller-manager at %d replicas with %d pods", what, want, want), 2*time.Minute, func() (bool, string) {
			out, err := tryKubectl(st, "get", "deployment", "-n", ns, "kube-controller-manager", "-o", "jsonpath={.spec.replicas} {.status.replicas}")
			if err != nil {
				return false, err.Error()
			}
			pods, err := tryKubectl(st, "get", "pods", "-n", ns, "-l", "app=kube-controller-manager", "-o", "name")
			if err != nil {
				return false, err.Error()
			}
			n := len(strings.Fields(pods))
			return strings.HasPrefix(out, fmt.Sprintf("%d ", want)) && n == want, fmt.Sprintf("replicas and status %q, pods %d", out, n)
		})
	}
	hostedAt("before", 1)

	// Refusals and the dry run change nothing.
	if r := b.run("kubelet", "stop", "--nodes", "role=control-plane", "--yes", "--journal", b.jnl); r.code != 4 || !strings.Contains(r.stderr, "control-plane") {
		t.Fatalf("kubelet stop of control-plane nodes: exit %d, want 4 and the reason", r.code)
	}
	if r := b.run("kubelet", "stop", "--nodes", "role=worker", "--fraction", "0", "--journal", b.jnl); r.code != 2 || !strings.Contains(r.stderr, "--fraction") {
		t.Fatalf("kubelet stop --fraction 0: exit %d, want 2 naming the flag", r.code)
	}
	if r := b.run("kubelet", "stop", "--nodes", "role=worker", "--controller-manager-object", ns+"/kcm-owned", "--yes", "--journal", b.jnl); r.code != 4 || !strings.Contains(r.stderr, "owned by ConfigMap v1 "+ns+"/hcp") {
		t.Fatalf("kubelet stop with an owned hosted controller-manager: exit %d, want 4 naming its owner", r.code)
	}
	if r := b.run("kubelet", "stop", "--nodes", "role=worker", "--controller-manager-object", "kcm-owned", "--journal", b.jnl); r.code != 2 || !strings.Contains(r.stderr, "--controller-manager-object") {
		t.Fatalf("kubelet stop --controller-manager-object NAME: exit %d, want 2 naming the flag", r.code)
	}
	dry := b.run("kubelet", "stop", "--nodes", "role=worker", "--fraction", "0.5", "--controller-manager-object", hosted, "--dry-run", "--journal", b.jnl)
	if dry.code != 0 || !strings.Contains(dry.stdout+dry.stderr, "kube-controller-manager") || !strings.Contains(dry.stdout+dry.stderr, "kube-controller-manager: replicas 1 -> 0") {
		t.Fatalf("dry run: exit %d, want 0 and the controller-manager and the hosted one's replicas in the plan", dry.code)
	}
	if _, err := os.Stat(b.jnl); err == nil {
		t.Fatalf("the dry run wrote the journal")
	}
	if len(ownProcs(t, st, cp, "kube-controller")) == 0 || len(ownProcs(t, st, workers[0], "kubelet")) == 0 {
		t.Fatalf("the dry run stopped something")
	}
	hostedAt("after the refusals and the dry run", 1)

	// Stop half the workers (rounded down, at least one: the first by name).
	r := b.run("kubelet", "stop", "--nodes", "role=worker", "--fraction", "0.5", "--controller-manager-object", hosted, "--yes", "--journal", b.jnl)
	if r.code != 0 {
		t.Fatalf("kubelet stop: exit %d", r.code)
	}
	stopID := changeIDRe.FindString(r.stdout + r.stderr)
	if stopID == "" {
		t.Fatalf("kubelet stop printed no change ID")
	}
	n := max(len(workers)/2, 1)
	stopped, running := workers[:n], workers[n:]
	hostedAt("after the stop", 0)
	if p := ownProcs(t, st, cp, "kube-controller"); len(p) != 0 {
		t.Fatalf("after stop: kube-controller-manager still runs on %s (%v)", cp.Name, p)
	}
	for _, w := range stopped {
		if p := ownProcs(t, st, w, "kubelet"); len(p) != 0 {
			t.Errorf("after stop: kubelet still runs on %s (%v)", w.Name, p)
		}
	}
	for _, w := range running {
		if p := ownProcs(t, st, w, "kubelet"); len(p) == 0 {
			t.Errorf("after stop: kubelet of %s (not selected) does not run", w.Name)
		}
	}
	before := clusterView(t, st, ns)
	// Past the grace period: a controller-manager would have marked the
	// stopped nodes NotReady by now.
	waitCond(t, "the stopped nodes' leases older than the node-monitor grace period", 3*time.Minute, func() (bool, string) {
		v := clusterView(t, st, ns)
		for _, w := range stopped {
			if age := time.Since(v.leaseTime[w.Name]); age < 50*time.Second {
				return false, fmt.Sprintf("%s lease %s old", w.Name, age.Round(time.Second))
			}
		}
		return true, ""
	})
	during := clusterView(t, st, ns)
	for _, w := range stopped {
		if during.ready[w.Name] != "True" {
			t.Errorf("%s was marked Ready=%s while the controller-manager was aside", w.Name, during.ready[w.Name])
		}
	}
	for name, was := range before.pods {
		if during.pods[name] != was || during.deleting[name] {
			t.Errorf("pod %s: %s before, %s now (deleting %v): evicted?", name, was, during.pods[name], during.deleting[name])
		}
	}

	// The controller-manager is not put back while a kubelet is down.
	if r := b.run("controller-manager", "restore", "--yes", "--journal", b.jnl); r.code != 4 || !strings.Contains(r.stderr, stopped[0].Name) {
		t.Fatalf("controller-manager restore with a kubelet down: exit %d, want 4 naming %s", r.code, stopped[0].Name)
	}
	if len(ownProcs(t, st, cp, "kube-controller")) != 0 {
		t.Fatalf("the refused restore started the controller-manager")
	}

	// Undo: kubelets first (their leases renewed), then the controller-manager.
	if r := b.run("undo", stopID, "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("undo %s: exit %d", stopID, r.code)
	}
	for _, w := range workers {
		if len(ownProcs(t, st, w, "kubelet")) == 0 {
			t.Errorf("after undo: no kubelet on %s", w.Name)
		}
	}
	if len(ownProcs(t, st, cp, "kube-controller")) == 0 {
		t.Fatalf("after undo: no kube-controller-manager on %s", cp.Name)
	}
	hostedAt("after the undo", 1)
	after := clusterView(t, st, ns)
	for _, w := range stopped {
		if !after.leaseTime[w.Name].After(during.leaseTime[w.Name]) {
			t.Errorf("after undo: %s's lease was not renewed (%s)", w.Name, after.leaseTime[w.Name])
		}
	}
	waitCond(t, "every node Ready after the undo", 2*time.Minute, func() (bool, string) {
		v := clusterView(t, st, ns)
		for _, w := range workers {
			if v.ready[w.Name] != "True" {
				return false, w.Name + " Ready=" + v.ready[w.Name]
			}
		}
		return true, ""
	})
	for name, was := range before.pods {
		if after.pods[name] != was || after.deleting[name] {
			t.Errorf("after undo: pod %s: %s before, %s now (deleting %v)", name, was, after.pods[name], after.deleting[name])
		}
	}

	// Second round: kubelet start and controller-manager restore.
	last := workers[len(workers)-1]
	if r := b.run("kubelet", "stop", "--nodes", last.Name, "--controller-manager-object", hosted, "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("kubelet stop %s: exit %d", last.Name, r.code)
	}
	if len(ownProcs(t, st, last, "kubelet")) != 0 || len(ownProcs(t, st, cp, "kube-controller")) != 0 {
		t.Fatalf("kubelet stop %s: the kubelet or the controller-manager still runs", last.Name)
	}
	if r := b.run("kubelet", "start", "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("kubelet start: exit %d", r.code)
	}
	if len(ownProcs(t, st, last, "kubelet")) == 0 {
		t.Fatalf("kubelet start: no kubelet on %s", last.Name)
	}
	if len(ownProcs(t, st, cp, "kube-controller")) != 0 {
		t.Fatalf("kubelet start put the controller-manager back: that is restore's")
	}
	hostedAt("after the second stop and kubelet start", 0)
	if r := b.run("controller-manager", "restore", "--controller-manager-object", hosted, "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("controller-manager restore: exit %d", r.code)
	}
	hostedAt("after restore", 1)
	if len(ownProcs(t, st, cp, "kube-controller")) == 0 {
		t.Fatalf("controller-manager restore: no kube-controller-manager on %s", cp.Name)
	}
	// Nothing but the original names in the spec directory, and nothing
	// left aside.
	out, err := sshHost(st, cp, st.KnownHosts, "ls -A /etc/kubernetes/manifests /etc/kubernetes/lab; ls /etc/kubernetes/breakglass-backup/*/ 2>/dev/null; true")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, ".breakglass-") {
		t.Errorf("a temporary file is left in cp-1's manifests or spec directory:\n%s", out)
	}

	// Third round: the same lever as a runbook step, and the run undone.
	rb := filepath.Join(t.TempDir(), "take-load-off.yaml")
	if err := os.WriteFile(rb, []byte(`name: take-load-off
description: stop half the workers' kubelets, the controller-manager moved aside first
steps:
  - id: stop
    type: kubelet-stop
    params:
      nodes: [role=worker]
      fraction: "0.5"
      controllerManagerObject: `+hosted+`
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := b.run("runbook", "run", rb, "--dry-run", "--journal", b.jnl); r.code != 0 || !strings.Contains(r.stdout+r.stderr, "kube-controller-manager") {
		t.Fatalf("runbook run --dry-run: exit %d, want 0 and the controller-manager in the plan", r.code)
	}
	if len(ownProcs(t, st, cp, "kube-controller")) == 0 || len(ownProcs(t, st, stopped[0], "kubelet")) == 0 {
		t.Fatalf("the runbook's dry run stopped something")
	}
	rr := b.run("runbook", "run", rb, "--yes", "-o", "json", "--journal", b.jnl)
	if rr.code != 0 {
		t.Fatalf("runbook run: exit %d", rr.code)
	}
	runID := ""
	for _, l := range strings.Split(rr.stdout, "\n") {
		var ev struct{ Type, RunID string }
		if json.Unmarshal([]byte(l), &ev) == nil && ev.Type == "runStarted" {
			runID = ev.RunID
		}
	}
	if runID == "" {
		t.Fatalf("runbook run printed no runStarted event with its run ID")
	}
	if len(ownProcs(t, st, cp, "kube-controller")) != 0 {
		t.Fatalf("runbook kubelet-stop: the controller-manager still runs on %s", cp.Name)
	}
	hostedAt("after the runbook's kubelet-stop", 0)
	for _, w := range stopped {
		if len(ownProcs(t, st, w, "kubelet")) != 0 {
			t.Errorf("runbook kubelet-stop: the kubelet still runs on %s", w.Name)
		}
	}
	if r := b.run("runbook", "undo", runID, "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("runbook undo %s: exit %d", runID, r.code)
	}
	for _, w := range workers {
		if len(ownProcs(t, st, w, "kubelet")) == 0 {
			t.Errorf("after runbook undo: no kubelet on %s", w.Name)
		}
	}
	if len(ownProcs(t, st, cp, "kube-controller")) == 0 {
		t.Fatalf("after runbook undo: no kube-controller-manager on %s", cp.Name)
	}
	hostedAt("after the runbook's undo", 1)
}
