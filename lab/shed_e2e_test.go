package lab_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on a thread that entered the network namespace at path:
// sockets it makes are the namespace's. The thread is not given back to
// the runtime (it ends with the goroutine).
func inNetns(t *testing.T, path string, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// connects tries a TCP connection from a worker's network namespace to
// addr and reports whether it was accepted.
func connects(t *testing.T, netns, addr string, timeout time.Duration) bool {
	ok := false
	inNetns(t, "/run/netns/"+netns, func() {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err == nil {
			c.Close()
			ok = true
		}
	})
	return ok
}

// nftIn runs nft in a lab host's network namespace.
func nftIn(t *testing.T, netns, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", netns, "nft"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v in %s: %v\n%s", args, netns, err, out)
	}
	return string(out)
}

func hasTable(t *testing.T, netns string) bool {
	return strings.Contains(nftIn(t, netns, "", "list", "tables"), "table inet breakglass")
}

// TestIncidentShedNetwork is issue 10's network shedding on the real
// apiserver and the control-plane node's real nft, through the real binary:
// with a shed, a worker cannot reach the apiserver while the operator can;
// limit lets through about its rate; lift removes breakglass's table and
// leaves another table and its counter; a shed outlives a SIGKILLed
// breakglass and expires on the node by itself; an allowlist that cuts the
// operator off is refused.
func TestIncidentShedNetwork(t *testing.T) {
	l := incidentLab(t)
	st := l.State
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Fatal("BREAKGLASS_BIN is not set (make test sets it)")
	}
	cp := st.Hosts[0]
	worker := st.HostsWithRole("worker")[0]
	api := net.JoinHostPort(cp.Address, "6443")
	b := &bgRun{t: t, bin: bin, inv: st.Inventory, jnl: t.TempDir() + "/breakglass/journal.jsonl"}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "exec", cp.Netns, "nft", "delete", "table", "inet", "breakglass").Run()
		exec.Command("ip", "netns", "exec", cp.Netns, "nft", "delete", "table", "inet", "bgothers").Run()
		exec.Command("ip", "netns", "exec", cp.Netns, "sh", "-c", "iptables -D INPUT -j BREAKGLASS-SHED; iptables -F BREAKGLASS-SHED; iptables -X BREAKGLASS-SHED; ip6tables -D INPUT -j BREAKGLASS-SHED; ip6tables -F BREAKGLASS-SHED; ip6tables -X BREAKGLASS-SHED").Run()
	})
	if !connects(t, worker.Netns, api, 2*time.Second) {
		t.Fatalf("%s cannot reach the apiserver before any shed", worker.Name)
	}
	// Someone else's table, with a rule and a counter.
	nftIn(t, cp.Netns, "table inet bgothers {\n chain c {\n  type filter hook input priority 10; policy accept;\n  tcp dport 6443 counter\n }\n}\n", "-f", "-")

	// An allowlist without the operator is refused, and nothing is written.
	r := b.run("shed", "apply", "--ttl", "1m", "--no-default-allow", "operator", "--yes", "--journal", b.jnl)
	if r.code != 4 || !strings.Contains(r.stderr, "cut you off") {
		t.Fatalf("shed apply without the operator: exit %d, want 4", r.code)
	}
	if hasTable(t, cp.Netns) {
		t.Fatal("a refused shed left a table")
	}

	// reject: the worker is refused, the operator is not.
	if r := b.run("shed", "apply", "--ttl", "5m", "--mode", "reject", "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("shed apply: exit %d", r.code)
	}
	if connects(t, worker.Netns, api, 2*time.Second) {
		t.Fatalf("%s reached the apiserver through the shed", worker.Name)
	}
	if c, err := net.DialTimeout("tcp", api, 2*time.Second); err != nil {
		t.Fatalf("the operator cannot reach the apiserver through the shed: %v", err)
	} else {
		c.Close()
	}
	if r := b.run("shed", "status", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"state":"active"`) || !strings.Contains(r.stdout, `"mode":"reject"`) || strings.Contains(r.stdout, `"packets":0,`) {
		t.Fatalf("shed status: exit %d, want an active reject shed that counted the worker's packets", r.code)
	}
	// Applying the same shed again changes nothing.
	if r := b.run("shed", "apply", "--ttl", "5m", "--mode", "reject", "--yes", "--journal", b.jnl); r.code != 0 || !strings.Contains(r.stdout, "already shedding") {
		t.Fatalf("shed apply again: exit %d, want it unchanged", r.code)
	}

	// lift: breakglass's table goes, the other table and its counter stay.
	before := nftIn(t, cp.Netns, "", "list", "table", "inet", "bgothers")
	if r := b.run("shed", "lift", "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("shed lift: exit %d", r.code)
	}
	if hasTable(t, cp.Netns) {
		t.Fatal("lift left breakglass's table")
	}
	after := nftIn(t, cp.Netns, "", "list", "table", "inet", "bgothers")
	if !strings.Contains(after, "tcp dport 6443 counter packets") || strings.Count(after, "\n") != strings.Count(before, "\n") {
		t.Fatalf("lift touched another table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	waitCond(t, "the worker reaching the apiserver after the lift", time.Minute, func() (bool, string) {
		return connects(t, worker.Netns, api, 2*time.Second), "refused"
	})

	// limit: about the rate of new connections gets through.
	if r := b.run("shed", "apply", "--ttl", "5m", "--mode", "limit", "--rate", "5", "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("shed apply --mode limit: exit %d", r.code)
	}
	okCount, attempts := 0, 0
	start := time.Now()
	inNetns(t, "/run/netns/"+worker.Netns, func() {
		for time.Since(start) < 4*time.Second {
			attempts++
			c, err := net.DialTimeout("tcp", api, 200*time.Millisecond)
			if err == nil {
				okCount++
				c.Close()
			}
		}
	})
	secs := time.Since(start).Seconds()
	// 5 new connections a second, plus nft's burst of 5.
	want := 5*secs + 5
	t.Logf("limit 5/s: %d of %d connections accepted in %.1fs (about %.0f expected)", okCount, attempts, secs, want)
	if float64(okCount) < want/2 || float64(okCount) > want*2 {
		t.Fatalf("limit 5/s let %d of %d connections through in %.1fs, want about %.0f", okCount, attempts, secs, want)
	}
	if r := b.run("shed", "lift", "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("shed lift: exit %d", r.code)
	}

	// undo of an apply puts back what the change found: no table.
	r = b.run("shed", "apply", "--ttl", "5m", "--mode", "reject", "--yes", "-o", "json", "--journal", b.jnl)
	var shed struct {
		ID string `json:"id"`
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, `"type":"change"`) && shed.ID == "" {
			json.Unmarshal([]byte(line), &shed)
		}
	}
	if r.code != 0 || shed.ID == "" || !hasTable(t, cp.Netns) {
		t.Fatalf("shed apply -o json: exit %d, change ID %q:\n%s", r.code, shed.ID, r.stdout)
	}
	if r := b.run("undo", shed.ID, "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("undo of a shed: exit %d\n%s", r.code, r.stderr)
	}
	if hasTable(t, cp.Netns) {
		t.Fatal("undo of a shed left breakglass's table")
	}

	// The iptables fallback (--firewall iptables stands in for a node
	// without nft): the worker is refused, the operator is not, status
	// reads it back, undo removes breakglass's chain and its jump.
	r = b.run("shed", "apply", "--firewall", "iptables", "--ttl", "5m", "--mode", "reject", "--yes", "-o", "json", "--journal", b.jnl)
	shed.ID = ""
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, `"type":"change"`) && shed.ID == "" {
			json.Unmarshal([]byte(line), &shed)
		}
	}
	if r.code != 0 || shed.ID == "" || hasTable(t, cp.Netns) {
		t.Fatalf("shed apply --firewall iptables: exit %d, change %q, nft table %v:\n%s", r.code, shed.ID, hasTable(t, cp.Netns), r.stdout)
	}
	if connects(t, worker.Netns, api, 2*time.Second) {
		t.Fatalf("%s reached the apiserver through an iptables shed", worker.Name)
	}
	if c, err := net.DialTimeout("tcp", api, 2*time.Second); err != nil {
		t.Fatalf("the operator cannot reach the apiserver through the iptables shed: %v", err)
	} else {
		c.Close()
	}
	if r := b.run("shed", "status", "--firewall", "iptables", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"backend":"iptables"`) || !strings.Contains(r.stdout, `"state":"active"`) {
		t.Fatalf("shed status --firewall iptables: exit %d, want an active iptables shed:\n%s", r.code, r.stdout)
	}
	if r := b.run("undo", shed.ID, "--yes", "--journal", b.jnl); r.code != 0 {
		t.Fatalf("undo of an iptables shed: exit %d\n%s", r.code, r.stderr)
	}
	if out, _ := exec.Command("ip", "netns", "exec", cp.Netns, "iptables-save", "-t", "filter").Output(); strings.Contains(string(out), "BREAKGLASS-SHED") {
		t.Fatalf("undo left breakglass's iptables chain:\n%s", out)
	}
	waitCond(t, "the worker reaching the apiserver after the undo", time.Minute, func() (bool, string) {
		return connects(t, worker.Netns, api, 2*time.Second), "refused"
	})

	// drop, with breakglass killed as soon as the table is on the node: the
	// rules expire on the node by themselves, with no breakglass running.
	cmd := exec.Command(bin, "shed", "apply", "--ttl", "1m", "--mode", "drop", "--yes", "--inventory", st.Inventory, "--journal", b.jnl)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "breakglass's table on "+cp.Name, time.Minute, func() (bool, string) { return hasTable(t, cp.Netns), "no table yet" })
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if connects(t, worker.Netns, api, time.Second) {
		t.Fatalf("%s reached the apiserver through a drop shed", worker.Name)
	}
	applied := time.Now()
	waitCond(t, "the shed expiring on the node", 3*time.Minute, func() (bool, string) {
		return connects(t, worker.Netns, api, time.Second), fmt.Sprintf("still dropped %s after apply", time.Since(applied).Round(time.Second))
	})
	if out, _ := exec.Command("pgrep", "-f", bin+" shed").Output(); len(out) > 0 {
		t.Fatalf("a breakglass process was still running: %s", out)
	}
	if r := b.run("shed", "status", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"state":"lapsed"`) {
		t.Fatalf("shed status after the TTL: exit %d, want lapsed", r.code)
	}
}
