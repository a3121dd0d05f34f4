package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// labInventory is the lab's inventory, rewritten with absolute paths (and
// edit applied) into a directory of the test's own.
func labInventory(t *testing.T, st *lab.State, edit func(string) string) string {
	t.Helper()
	b, err := os.ReadFile(st.Inventory)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, rel := range []string{"ssh/", "pki/"} {
		s = strings.ReplaceAll(s, " "+rel, " "+st.Dir+"/"+rel)
		s = strings.ReplaceAll(s, "["+rel, "["+st.Dir+"/"+rel)
	}
	if edit != nil {
		s = edit(s)
	}
	p := filepath.Join(t.TempDir(), "breakglass.yaml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// podLine is a "pod" line of pods list -o json.
type podLine struct {
	Type       string `json:"type"`
	Node       string `json:"node"`
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	UID        string `json:"uid"`
	SandboxID  string `json:"sandboxId"`
	State      string `json:"state"`
	Containers []struct {
		Name     string `json:"name"`
		State    string `json:"state"`
		ImageRef string `json:"imageRef"`
	} `json:"containers"`
}

func podLines(t *testing.T, out string) []podLine {
	t.Helper()
	var pods []podLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var p podLine
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("pods list -o json: %v: %q", err, l)
		}
		if p.Type == "pod" {
			pods = append(pods, p)
		}
	}
	return pods
}

func running(p podLine) bool {
	if p.State != "ready" || len(p.Containers) == 0 {
		return false
	}
	for _, c := range p.Containers {
		if c.State != "running" {
			return false
		}
	}
	return true
}

// TestLabPodsStopRefusesProtectedPods runs pods on the lab's real kubelets
// that breakglass must not stop without --force: a kube-system DaemonSet
// labelled as kube-proxy, and pods with the system-node-critical priority
// class (known only from etcd). Through the real binary: refused with exit
// 4 and the pods' sandboxes untouched; then --force naming them stops them.
func TestLabPodsStopRefusesProtectedPods(t *testing.T) {
	e := newLabEnv(t)
	inv := labInventory(t, e.st, nil)
	workers := len(e.st.HostsWithRole("worker"))
	ds := "bgtest-proxy-" + e.ns[len(e.ns)-6:]
	e.kubectl(t, fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata: {name: %[1]s, namespace: kube-system}
spec:
  selector: {matchLabels: {k8s-app: kube-proxy, bgtest: %[1]s}}
  template:
    metadata: {labels: {k8s-app: kube-proxy, bgtest: %[1]s}}
    spec:
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 1
      containers: [{name: proxy, image: %[2]s, imagePullPolicy: Never}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: critical, namespace: %[3]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: critical}}
  template:
    metadata: {labels: {app: critical}}
    spec:
      priorityClassName: system-node-critical
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: %[2]s, imagePullPolicy: Never}]
`, ds, lab.PauseImage, e.ns), "apply", "-f", "-")
	t.Cleanup(func() { e.kubectl(t, "", "delete", "daemonset", "-n", "kube-system", ds, "--wait=false") })

	base := []string{"--inventory", inv, "--nodes", "role=worker", "--journal", filepath.Join(t.TempDir(), "journal.jsonl")}
	list := func(args ...string) []podLine {
		r := runBinary(t, nil, append([]string{"pods", "list", "-o", "json", "--inventory", inv, "--nodes", "role=worker"}, args...)...)
		if r.code != 0 {
			t.Fatalf("pods list %v: exit %d\n%s", args, r.code, r.stderr)
		}
		return podLines(t, r.stdout)
	}
	var proxies []podLine
	waitFor(t, "the kube-proxy look-alikes running on every worker (from containerd)", 2*time.Minute, func() (bool, error) {
		proxies = list("-n", "kube-system", "-l", "bgtest="+ds)
		n := 0
		for _, p := range proxies {
			if running(p) {
				n++
			}
		}
		return n == workers, nil
	})
	waitFor(t, "the system-node-critical pod running", 2*time.Minute, func() (bool, error) {
		ps := list("-n", e.ns)
		return len(ps) == 1 && running(ps[0]), nil
	})

	for _, c := range []struct {
		args []string
		why  string
	}{
		{[]string{"-n", "kube-system", "-l", "bgtest=" + ds}, "kube-proxy"},
		{[]string{"-n", e.ns}, "system-node-critical"},
	} {
		before := list(c.args...)
		r := runBinary(t, nil, append(append([]string{"pods", "stop", "--yes"}, base...), c.args...)...)
		if r.code != 4 || !strings.Contains(r.stderr, "protected") || !strings.Contains(r.stderr, c.why) {
			t.Fatalf("pods stop %v: exit %d, want 4 naming %q\nstdout: %s\nstderr: %s", c.args, r.code, c.why, r.stdout, r.stderr)
		}
		after := list(c.args...)
		if fmt.Sprint(sandboxes(before)) != fmt.Sprint(sandboxes(after)) {
			t.Fatalf("a refused stop changed the pods: %v -> %v", sandboxes(before), sandboxes(after))
		}
	}

	// Named by --force, they are stopped: the sandboxes the plan saw end.
	r := runBinary(t, nil, append([]string{"pods", "stop", "--yes", "--grace", "1s", "-n", "kube-system", "-l", "bgtest=" + ds, "--force", "kube-system/" + ds + "-*", "-o", "json"}, base...)...)
	if r.code != 0 {
		t.Fatalf("pods stop --force: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	stopped := map[string]bool{}
	for _, p := range proxies {
		if p.SandboxID == "" {
			t.Fatalf("pods list -o json gave %s no sandbox ID", p.Name)
		}
		stopped[p.SandboxID] = true
	}
	for _, p := range list("-n", "kube-system", "-l", "bgtest="+ds) {
		if stopped[p.SandboxID] && p.State == "ready" {
			t.Errorf("%s on %s: sandbox %s still ready after the stop", p.Name, p.Node, p.SandboxID)
		}
	}
}

func sandboxes(ps []podLine) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Node+"/"+p.Name+"/"+p.SandboxID+"/"+p.State)
	}
	return out
}

// TestLabPodsViaSudoForNonRootUser logs in to the lab's workers as a
// non-root user with passwordless sudo: containerd's socket is root's, so
// the forwarded socket is refused, and breakglass reaches containerd
// through the relay under sudo -n; nodes check says which path works.
func TestLabPodsViaSudoForNonRootUser(t *testing.T) {
	st := labtest.Lab(t)
	user := fmt.Sprintf("bgops%d", os.Getpid()%100000)
	// "*" rather than useradd's "!": sshd without PAM refuses a locked
	// account even for key authentication. The lab's sshd reads one
	// authorized_keys file for every user: the operator's key.
	if out, err := exec.Command("useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", "-p", "*", user).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", "-f", user).Run() })
	sudoers := filepath.Join("/etc/sudoers.d", user)
	if err := os.WriteFile(sudoers, []byte(user+" ALL=(ALL) NOPASSWD: ALL\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sudoers) })
	inv := labInventory(t, st, func(s string) string { return strings.Replace(s, "  user: root\n", "  user: "+user+"\n", 1) })
	base := []string{"--inventory", inv, "--nodes", "worker-1"}

	r := runBinary(t, nil, append([]string{"nodes", "check", "-o", "json"}, base...)...)
	var c checkWire
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &c); err != nil {
		t.Fatalf("nodes check: %v\n%s\n%s", err, r.stdout, r.stderr)
	}
	if c.Sudo != "ok" || c.Containerd != "ok" || c.ContainerdVia != "sudo" {
		t.Fatalf("nodes check as %s: sudo %s, containerd %s via %s (%s)", user, c.Sudo, c.Containerd, c.ContainerdVia, c.Error)
	}

	r = runBinary(t, nil, append([]string{"pods", "list", "--via", "forward"}, base...)...)
	if r.code != 3 || !strings.Contains(r.stderr, "forward") {
		t.Fatalf("pods list --via forward as %s: exit %d, want 3 (the socket is root's)\n%s", user, r.code, r.stderr)
	}
	for _, via := range []string{"sudo", "auto"} {
		r = runBinary(t, nil, append([]string{"pods", "list", "--via", via, "-o", "wide"}, base...)...)
		if r.code != 0 {
			t.Fatalf("pods list --via %s as %s: exit %d\n%s", via, user, r.code, r.stderr)
		}
	}
}
