package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/lab/labtest"
	"github.com/breakglass/breakglass/nodeops/simssh"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// writeInventory writes an inventory for the fixture's servers plus extra
// "name host:port" nodes.
func writeInventory(t *testing.T, fx *sshdtest.Fixture, extra ...string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "ssh:\n  user: root\n  identityFiles: [%s]\n  knownHosts: %s\n  config: none\n  connectTimeout: 2s\nnodes:\n", fx.ClientKey, fx.KnownHosts)
	for i, s := range fx.Servers {
		role := "worker"
		if i == 0 {
			role = "control-plane"
		}
		fmt.Fprintf(&b, "  - {name: %s, address: %s, port: %d, roles: [%s]}\n", s.Name, s.Host, s.Port, role)
	}
	for _, e := range extra {
		name, addr, _ := strings.Cut(e, " ")
		host, port, _ := net.SplitHostPort(addr)
		fmt.Fprintf(&b, "  - {name: %s, address: %s, port: %s}\n", name, host, port)
	}
	p := filepath.Join(t.TempDir(), "breakglass.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runArgs runs the CLI in process and returns stdout, stderr and the exit code.
func runArgs(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	d := newDeps()
	d.In, d.Out, d.ErrOut = strings.NewReader(""), &out, &errOut
	d.InIsTTY, d.OutIsTTY, d.ErrIsTTY = false, false, false
	ctx := context.Background()
	root := newRootCmd(d)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	code := reportError(&errOut, err, ctx)
	return out.String(), errOut.String(), code
}

func decodeLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestExecCommand(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	inv := writeInventory(t, fx, "gone "+dead)

	out, errOut, code := runArgs(t, "--inventory", inv, "exec", "--nodes", "node*", "--", "echo", "hi")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "3 nodes: 3 ok, 0 failed, 0 unreachable, 0 refused") || !strings.Contains(out, "slowest:") {
		t.Errorf("table:\n%s", out)
	}

	out, errOut, code = runArgs(t, "--inventory", inv, "-o", "json", "exec", "--retries", "0", "--", "test -n \"$SSH_CONNECTION\"")
	if code != exitNodesFail {
		t.Fatalf("exit %d, want 3\n%s%s", code, out, errOut)
	}
	lines := decodeLines(t, out)
	if len(lines) != 5 || lines[4]["type"] != "summary" {
		t.Fatalf("want 4 nodeResult and a summary:\n%s", out)
	}
	// Streamed as nodes end: any order, each node exactly once.
	byNode := resultsByNode(t, lines[:4])
	for _, want := range []string{"node1", "node2", "node3", "gone"} {
		if byNode[want] == nil {
			t.Errorf("no line for %s:\n%s", want, out)
		}
	}
	if byNode["gone"]["status"] != "unreachable" || lines[4]["unreachable"] != float64(1) || lines[4]["ok"] != float64(3) {
		t.Errorf("gone: %v / %v", byNode["gone"], lines[4])
	}
	if !strings.Contains(errOut, "hint: ") {
		t.Errorf("no hint on stderr:\n%s", errOut)
	}

	_, errOut, code = runArgs(t, "--inventory", inv, "exec", "--nodes", "role=etcd", "--", "true")
	if code != exitUsage || !strings.Contains(errOut, "role=etcd") {
		t.Errorf("unknown role: exit %d, stderr %q", code, errOut)
	}
	out, errOut, code = runArgs(t, "--inventory", inv, "--dry-run", "exec", "--nodes", "role=control-plane", "--", "reboot")
	if code != 0 || !strings.Contains(out, "node1") || strings.Contains(out, "node2") {
		t.Errorf("dry run: %d\n%s%s", code, out, errOut)
	}
}

// exec asks before running on more than --confirm-above nodes, and journals
// what ran where, as whom, and how it ended on each node.
func TestExecConfirmsAndAudits(t *testing.T) {
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	inv := writeInventory(t, fx)
	jpath := filepath.Join(t.TempDir(), "journal.jsonl")
	marker := filepath.Join(t.TempDir(), "ran")

	_, errOut, code := runArgs(t, "--inventory", inv, "exec", "--journal", jpath, "--confirm-above", "2", "--", "touch "+marker)
	if code != exitRefused || !strings.Contains(errOut, "--yes") {
		t.Errorf("3 nodes above --confirm-above 2 without --yes: exit %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran although it was not confirmed")
	}
	if _, err := os.Stat(jpath); err == nil {
		t.Error("an unconfirmed exec wrote the journal")
	}

	_, errOut, code = runArgs(t, "--inventory", inv, "--yes", "exec", "--journal", jpath, "--confirm-above", "2", "--", "test $(hostname) != nope && exit 3")
	if code != exitNodesFail {
		t.Fatalf("exit %d, want 3; %s", code, errOut)
	}
	recs, err := journal.Read(jpath)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 || recs[0].Type != journal.TypeIntent || recs[0].Op != "exec" || recs[0].Details["command"] != "test $(hostname) != nope && exit 3" {
		t.Fatalf("journal: want the intent then 3 outcomes: %+v", recs)
	}
	nodes := map[string]bool{}
	for _, r := range recs[1:] {
		nodes[r.Target.Node] = true
		if r.ID != recs[0].ID || r.Status != journal.StatusFailed || r.Details["exitCode"] != "3" || r.Operator == "" || r.RunID == "" {
			t.Errorf("outcome: %+v", r)
		}
	}
	if len(nodes) != 3 {
		t.Errorf("outcomes for %v, want each of the 3 nodes", nodes)
	}
}

// resultsByNode indexes nodeResult lines by node and fails on a node
// reported twice.
func resultsByNode(t *testing.T, lines []map[string]any) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, l := range lines {
		name, _ := l["node"].(string)
		if l["type"] != "nodeResult" || out[name] != nil {
			t.Errorf("unexpected or repeated line: %v", l)
		}
		out[name] = l
	}
	return out
}

// TestExecJSONStreams checks that -o json prints a node's line when that
// node ends, not when the run ends: the fast nodes' lines are on stdout
// while the slow node still runs.
func TestExecJSONStreams(t *testing.T) {
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	inv := writeInventory(t, fx)
	bin := filepath.Join(t.TempDir(), "breakglass")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	release := filepath.Join(t.TempDir(), "release")
	// node3 waits until the test has seen the other two lines (at most
	// 30s: if the lines only come at the end, it gives up and says so).
	line := fmt.Sprintf(`i=0; case "$SSH_CONNECTION" in *" %d") while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done;; esac; [ $i -lt 600 ] && echo done || echo gave up`,
		fx.Servers[2].Port, release)
	cmd := exec.Command(bin, "--inventory", inv, "-o", "json", "exec", "--", line)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	var lines []map[string]any
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		lines = append(lines, m)
		if len(lines) == 2 {
			// Both fast nodes are out while node3 is still held.
			got := resultsByNode(t, lines)
			if got["node1"] == nil || got["node2"] == nil {
				t.Fatalf("first lines are not the fast nodes: %v", lines)
			}
			if err := os.WriteFile(release, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exec: %v\n%s", err, errOut.String())
	}
	if len(lines) != 4 || lines[3]["type"] != "summary" || lines[3]["ok"] != float64(3) {
		t.Fatalf("want 3 nodeResult lines then the summary: %v", lines)
	}
	if got := resultsByNode(t, lines[:3]); got["node3"]["stdout"] != "done\n" {
		t.Errorf("node3: %v", got["node3"])
	}
}

func TestNodesListAndCheck(t *testing.T) {
	fx := sshdtest.Start(t, 2, sshdtest.Options{})
	inv := writeInventory(t, fx)
	out, errOut, code := runArgs(t, "--inventory", inv, "-o", "json", "nodes", "list", "--exclude", "node2")
	lines := decodeLines(t, out)
	if code != 0 || len(lines) != 1 || lines[0]["name"] != "node1" || lines[0]["source"] != "inventory" || lines[0]["type"] != "node" {
		t.Fatalf("nodes list: %d %s %s", code, out, errOut)
	}

	out, errOut, code = runArgs(t, "--inventory", inv, "-o", "json", "nodes", "check")
	lines = decodeLines(t, out)
	if len(lines) != 2 {
		t.Fatalf("nodes check: %d\n%s%s", code, out, errOut)
	}
	for _, l := range lines {
		if l["reachable"] != "ok" || l["hostKey"] != "ok" || l["auth"] != "ok" || l["sudo"] != "root" {
			t.Errorf("check: %v", l)
		}
		t.Logf("%v", l)
	}
	// containerd may not run where the tests do: then the check fails (3).
	if lines[0]["containerd"] == "missing" && code != exitNodesFail {
		t.Errorf("containerd missing but exit %d", code)
	}
}

// TestExecCtrlC sends SIGINT to the real binary while commands run on real
// sshd nodes and tarpits: it must exit 130 within a second, reporting every
// node.
func TestExecCtrlC(t *testing.T) {
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	hostKey := simssh.NewHostKey()
	var extra []string
	kh, _ := os.ReadFile(fx.KnownHosts)
	for i := 0; i < 2; i++ {
		srv := simssh.New(simssh.Tarpit, hostKey)
		l, err := srv.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		extra = append(extra, fmt.Sprintf("tarpit%d %s", i, l.Addr()))
		kh = append(kh, []byte(knownhosts.Line([]string{knownhosts.Normalize(l.Addr().String())}, hostKey.PublicKey())+"\n")...)
	}
	os.WriteFile(fx.KnownHosts, kh, 0o600)
	inv := writeInventory(t, fx, extra...)
	bin := filepath.Join(t.TempDir(), "breakglass")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	marker := fmt.Sprintf("sleep 30.%d", os.Getpid()) // unique: other tests pgrep for their own sleeps
	cmd := exec.Command(bin, "--inventory", inv, "-o", "json", "--concurrency", "3", "exec", "--", marker)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the command runs on the nodes.
	for i := 0; ; i++ {
		if b, _ := exec.Command("pgrep", "-f", "^"+marker).Output(); len(bytes.Fields(b)) >= 3 {
			break
		}
		if i > 500 {
			cmd.Process.Kill()
			t.Fatalf("commands never started\n%s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	sent := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("still running a second after SIGINT\n%s", errOut.String())
	}
	t.Logf("exited %s after SIGINT", time.Since(sent).Round(time.Millisecond))
	if code := cmd.ProcessState.ExitCode(); code != exitCancelled {
		t.Fatalf("exit %d, want 130\n%s", code, errOut.String())
	}
	lines := decodeLines(t, out.String())
	if len(lines) != 6 {
		t.Fatalf("want 5 nodes and a summary:\n%s", out.String())
	}
	for _, l := range lines[:5] {
		if l["status"] != "cancelled" {
			t.Errorf("%v", l)
		}
	}
	if lines[5]["cancelled"] != float64(5) {
		t.Errorf("summary %v", lines[5])
	}
}

// TestLabExecAndCheck runs exec and nodes check on every lab host.
func TestLabExecAndCheck(t *testing.T) {
	s := labtest.Lab(t)
	out, errOut, code := runArgs(t, "--inventory", s.Inventory, "-o", "json", "exec", "--", "id -u")
	lines := decodeLines(t, out)
	if code != 0 || len(lines) != len(s.Hosts)+1 {
		t.Fatalf("exec: %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runArgs(t, "--inventory", s.Inventory, "-o", "json", "nodes", "check")
	lines = decodeLines(t, out)
	if len(lines) != len(s.Hosts) || (code != 0 && code != exitNodesFail) {
		t.Fatalf("nodes check: %d\n%s%s", code, out, errOut)
	}
	for i, l := range lines {
		if l["reachable"] != "ok" || l["hostKey"] != "ok" || l["auth"] != "ok" || l["nft"] != "ok" {
			t.Errorf("%v", l)
		}
		// Workers and the control plane (its kubelet runs the API
		// server's static pod) run containerd; ssh-only hosts do not.
		if h := s.Hosts[i]; (slices.Contains(h.Roles, "worker") || slices.Contains(h.Roles, "control-plane")) && l["containerd"] != "ok" {
			t.Errorf("%s: containerd %v", h.Name, l["containerd"])
		}
	}
}

// exec is a change like any other: the engine's events (plan, each node
// started and ended, applied) for every node, and an undo of it is refused
// (exit 4) with what to look at instead.
func TestExecThroughEngine(t *testing.T) {
	fx := sshdtest.Start(t, 3, sshdtest.Options{})
	inv := writeInventory(t, fx)
	jpath := filepath.Join(t.TempDir(), "journal.jsonl")
	var mu sync.Mutex
	counts := map[string]int{}
	testEventTap = func(ev change.Event) {
		mu.Lock()
		defer mu.Unlock()
		name := fmt.Sprintf("%T", ev)
		counts[name[strings.LastIndex(name, ".")+1:]]++
	}
	defer func() { testEventTap = nil }()
	_, errOut, code := runArgs(t, "--inventory", inv, "--yes", "exec", "--journal", jpath, "--", "true")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	mu.Lock()
	got := fmt.Sprint(counts)
	mu.Unlock()
	if want := "map[Applied:1 ItemApplied:3 ItemStarted:3 PlanReady:1 Progress:3]"; got != want {
		t.Errorf("events %s, want %s", got, want)
	}
	recs, err := journal.Read(jpath)
	if err != nil || len(recs) == 0 {
		t.Fatalf("journal: %v, %d records", err, len(recs))
	}
	_, errOut, code = runArgs(t, "--inventory", inv, "undo", "--journal", jpath, recs[0].ID)
	if code != exitRefused || !strings.Contains(errOut, "cannot be undone") {
		t.Errorf("undo of an exec: exit %d, stderr %q; want 4 and why", code, errOut)
	}
}
