package lab_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// etcTree lists every file under h's /etc/kubernetes with its mode and
// hash (directories with their mode).
func etcTree(t *testing.T, h lab.Host) []string {
	t.Helper()
	root := filepath.Join(h.Root, "etc", "kubernetes")
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := rel + " " + fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitArgs waits until the API server on h runs (want true) or none runs.
func waitArgs(t *testing.T, st *lab.State, h lab.Host, want bool) string {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		args := apiserverArgs(t, st, h)
		if (args != "") == want {
			return args
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: API server running is %v after 3m, want %v", h.Name, args != "", want)
		}
		time.Sleep(time.Second)
	}
}

// TestLabAPIServerAddRemove is issue 11's apiserver add and remove on the
// real thing: cp-2, a standby host with a kubelet and containerd, gets a
// second real API server copied from cp-1 (the manifest rewritten for its
// address, the PKI copied, a serving certificate signed for it) that
// serves the same objects; remove takes it away and undo puts it back;
// the last API server is not taken away; undo of the add leaves cp-2's
// /etc/kubernetes as it was.
func TestLabAPIServerAddRemove(t *testing.T) {
	st := labtest.Lab(t)
	if os.Getenv("BREAKGLASS_LAB_INCIDENTS") != "1" {
		t.Skip("runs in the incidents phase of make test, alone (BREAKGLASS_LAB_INCIDENTS=1): it starts a second API server")
	}
	standby := st.HostsWithRole(lab.StandbyRole)
	if len(standby) == 0 {
		t.Skip("the lab has no standby host (lab up --standby=false)")
	}
	cp1, cp2 := st.HostsWithRole("control-plane")[0], standby[0]
	b := newBGRun(t, st)
	before := etcTree(t, cp2)
	t.Cleanup(func() {
		// Whatever failed: no API server left on cp-2 for the tests after.
		os.Remove(lab.APIServerManifest(cp2))
	})
	if args := apiserverArgs(t, st, cp2); args != "" {
		t.Fatalf("an API server runs on %s before the add: %s", cp2.Name, args)
	}

	dry := b.run("apiserver", "add", "--node", cp2.Name, "--dry-run")
	if dry.code != 0 || !strings.Contains(dry.stdout, "--advertise-address="+cp2.Address) || !strings.Contains(dry.stdout, "signed for "+cp2.Name) {
		t.Fatalf("dry run: exit %d", dry.code)
	}
	if got := etcTree(t, cp2); !slices.Equal(got, before) {
		t.Fatalf("the dry run changed %s: %v", cp2.Name, got)
	}

	add := b.run("apiserver", "add", "--node", cp2.Name, "--yes", "-o", "json", "--journal", b.jnl)
	if add.code != 0 {
		t.Fatalf("add: exit %d", add.code)
	}
	addID := changeID(t, add.stdout)
	args := waitArgs(t, st, cp2, true)
	for _, want := range []string{"--advertise-address=" + cp2.Address, "--etcd-servers=" + st.Etcd.Endpoints[0]} {
		if !strings.Contains(args, want) {
			t.Errorf("%s's API server runs with %q, want %s", cp2.Name, args, want)
		}
	}
	// No key is in the journal, as bytes or as base64.
	jb, _ := os.ReadFile(b.jnl)
	for _, f := range []string{"pki/apiserver.key", "pki/sa.key", "pki/apiserver-etcd-client.key", "admin.conf", "super-admin.conf"} {
		k, err := os.ReadFile(filepath.Join(cp2.Root, "etc", "kubernetes", f))
		if err != nil {
			t.Fatalf("%s: %v", cp2.Name, err)
		}
		if strings.Contains(string(jb), string(k)) || strings.Contains(string(jb), base64.StdEncoding.EncodeToString(k)) {
			t.Errorf("the journal holds %s's %s", cp2.Name, f)
		}
	}
	if _, err := os.Stat(filepath.Join(cp2.Root, "etc", "kubernetes", "pki", "ca.key")); !os.IsNotExist(err) {
		t.Errorf("the CA key was copied to %s: %v", cp2.Name, err)
	}

	// The same objects through either API server, cp-2's certificate
	// verified against the cluster CA for its own address.
	ns := "bg-add-" + fmt.Sprint(time.Now().UnixNano()%100000)
	kubectl(t, st, "", "create", "namespace", ns)
	defer tryKubectl(st, "delete", "namespace", ns, "--wait=false")
	kubectl(t, st, "", "-n", ns, "create", "configmap", "seen", "--from-literal=k=v")
	uid1 := kubectl(t, st, "", "-n", ns, "get", "configmap", "seen", "-o", "jsonpath={.metadata.uid}")
	var uid2 string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := tryKubectl(st, "--server", "https://"+cp2.Address+":6443", "-n", ns, "get", "configmap", "seen", "-o", "jsonpath={.metadata.uid}")
		if err == nil {
			uid2 = out
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's API server: %v: %s", cp2.Name, err, out)
		}
		time.Sleep(time.Second)
	}
	if strings.TrimSpace(uid1) != strings.TrimSpace(uid2) || strings.TrimSpace(uid1) == "" {
		t.Errorf("configmap uid %q through %s, %q through %s", uid1, cp1.Name, uid2, cp2.Name)
	}
	status := b.run("apiserver", "status", "--nodes", cp1.Name, "--nodes", cp2.Name, "-o", "json")
	if status.code != 0 || strings.Count(status.stdout, `"readyz":200`) != 2 {
		t.Errorf("apiserver status: exit %d, want both nodes ready", status.code)
	}
	if again := b.run("apiserver", "add", "--node", cp2.Name, "--yes", "--journal", b.jnl); again.code != 4 {
		t.Errorf("a second add: exit %d, want 4 (refused: cp-2 has a manifest)", again.code)
	}

	// remove takes it away; undo puts it back.
	rm := b.run("apiserver", "remove", "--node", cp2.Name, "--yes", "-o", "json", "--journal", b.jnl)
	if rm.code != 0 {
		t.Fatalf("remove: exit %d", rm.code)
	}
	waitArgs(t, st, cp2, false)
	if got := manifestsDir(t, cp2); len(got) != 0 {
		t.Errorf("%s's manifests directory holds %v after remove", cp2.Name, got)
	}
	// cp-1's is the last API server now: not taken away.
	if last := b.run("apiserver", "remove", "--node", cp1.Name, "--yes", "--journal", b.jnl); last.code != 4 || !strings.Contains(last.stderr, "would leave none") {
		t.Errorf("remove of the last API server: exit %d, want 4", last.code)
	}
	if args := apiserverArgs(t, st, cp1); args == "" {
		t.Fatal("cp-1's API server is gone")
	}
	if u := b.run("undo", changeID(t, rm.stdout), "--yes", "--journal", b.jnl); u.code != 0 {
		t.Fatalf("undo of the remove: exit %d", u.code)
	}
	waitArgs(t, st, cp2, true)

	// undo of the add: the API server gone, cp-2's files as they were.
	if u := b.run("undo", addID, "--yes", "--journal", b.jnl); u.code != 0 {
		t.Fatalf("undo of the add: exit %d", u.code)
	}
	waitArgs(t, st, cp2, false)
	// As it was, but for the remove's backup of the manifest (backups
	// stay, as every change's do).
	var got []string
	for _, l := range etcTree(t, cp2) {
		if !strings.HasPrefix(l, "breakglass-backup") {
			got = append(got, l)
		}
	}
	if !slices.Equal(got, before) {
		t.Errorf("after undo %s's /etc/kubernetes is\n%v\nwas\n%v", cp2.Name, got, before)
	}
}

// scaleOutOverload is issue 11's last lever under the overload incident,
// a subtest of TestIncidentOverload: with cp-1's API server saturated,
// breakglass apiserver add brings a second one up on cp-2, copied from the
// saturated cp-1. What an ordinary user sees is printed before the
// incident, saturated, and after the add through a round-robin of both API
// servers (the lab has no load balancer, and its agents are pinned to
// cp-1's address); the requests cp-2 answers are within the SLO. It ends
// the incident (lab incident reset) to undo the add.
func scaleOutOverload(t *testing.T, l *lab.Lab, res *lab.OverloadResult, calm, saturated lab.Refusals) {
	st := l.State
	standby := st.HostsWithRole(lab.StandbyRole)
	if len(standby) == 0 {
		t.Skip("the lab has no standby host (lab up --standby=false)")
	}
	cp2 := standby[0]
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	b := newBGRun(t, st)
	// Whatever failed: no API server left on cp-2 for the tests after.
	t.Cleanup(func() { os.Remove(lab.APIServerManifest(cp2)) })
	add := b.run("apiserver", "add", "--node", cp2.Name, "--yes", "-o", "json", "--journal", b.jnl, "--wait", "5m")
	if add.code != 0 {
		t.Fatalf("add under the incident: exit %d", add.code)
	}
	cp2URL := "https://" + cp2.Address + ":6443"
	both, err := l.ProbeServers(ctx, "scaleout", 20, []string{st.APIServer, cp2URL})
	if err != nil {
		t.Fatal(err)
	}
	onCP2, err := l.ProbeServers(ctx, "cp-2", 10, []string{cp2URL})
	if err != nil {
		t.Fatal(err)
	}
	var tbl strings.Builder
	lab.WriteProbes(&tbl, []lab.Probe{res.Before, res.After, both, onCP2})
	t.Logf("an ordinary user (oncall), %dm CPU on cp-1's API server; scaleout: round-robin over cp-1 and cp-2 after apiserver add:\n%s", res.CPUMillis, tbl.String())
	fmt.Printf("overload scale-out (%dm CPU on cp-1):\n%s", res.CPUMillis, tbl.String())
	// Who is refused behind the round-robin: the agents stay pinned to
	// cp-1; the ordinary users are answered by both.
	added, err := l.MeasureRefusals(ctx, "cp-2 added", refusalRequests, []string{st.APIServer, cp2URL})
	if err != nil {
		t.Fatal(err)
	}
	tbl.Reset()
	lab.WriteRefusals(&tbl, []lab.Refusals{calm, saturated, added})
	t.Logf("who the API servers refused, before, saturated and after apiserver add:\n%s", tbl.String())
	fmt.Printf("overload refusals, before and after apiserver add (round-robin over cp-1 and cp-2):\n%s", tbl.String())
	if n := added.Oncall.Throttled + added.Workload.Throttled; n > 1 {
		t.Errorf("after the add the ordinary users got %d 429s", n)
	}
	if onCP2.Missed() > 1 {
		t.Errorf("cp-2's API server: %d of %d requests missed the %s SLO: %+v", onCP2.Missed(), onCP2.Requests, lab.SLO, onCP2)
	}
	if both.Missed() >= res.After.Missed()+3 {
		t.Errorf("behind a round-robin of both, %d of %d missed; saturated, %d of %d", both.Missed(), both.Requests, res.After.Missed(), res.After.Requests)
	}
	// While cp-1 does not answer in time, taking cp-2 away would leave no
	// API server that does: refused (exit 4). Once the incident is over,
	// undone.
	u := b.run("undo", changeID(t, add.stdout), "--yes", "--journal", b.jnl)
	if u.code == 4 {
		if !strings.Contains(u.stderr, "would leave none") {
			t.Errorf("undo refused for another reason: %s", u.stderr)
		}
		if err := l.Reset(ctx, testLog{t}); err != nil {
			t.Fatalf("reset: %v", err)
		}
		u = b.run("undo", changeID(t, add.stdout), "--yes", "--journal", b.jnl)
	}
	if u.code != 0 {
		t.Errorf("undo of the add: exit %d", u.code)
	}
	if args := waitArgs(t, st, cp2, false); args != "" {
		t.Errorf("an API server still runs on cp-2")
	}
}
