package steps

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/apiprobe"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// These tests edit manifests through real OpenSSH sshd servers on
// loopback. Each node gets its own directory standing in for
// /etc/kubernetes: the nodes' sshd all run on this machine, so the
// runner below points each node's commands at its own directory (the
// commands themselves run unchanged through sshd). kubelet is played by
// fakeKubelet, which sees the files directly.

// dirRunner runs every command through the real SSH client, with the
// first node's directory replaced by the target's own.
type dirRunner struct {
	inner nodeops.Runner
	from  string
	dirs  map[string]string
}

func (r *dirRunner) Run(ctx context.Context, t nodeops.Target, c nodeops.Command) (nodeops.Output, error) {
	c.Line = strings.ReplaceAll(c.Line, r.from, r.dirs[t.Name])
	return r.inner.Run(ctx, t, c)
}

// fakeKubelet is an APIServerWatch: a node's API server "runs" the
// manifest that is in its directory (a new instance whenever the bytes
// change, with the manifest's command line), and answers /livez and
// /readyz unless broken says it does not with that manifest.
type fakeKubelet struct {
	mu     sync.Mutex
	files  map[string]string // node -> manifest path
	broken func(node string, argv []string) bool
	seen   map[string][]string // node -> instances seen, in order
}

func (k *fakeKubelet) Instance(_ context.Context, t nodeops.Target) (apiprobe.Instance, error) {
	b, err := os.ReadFile(k.files[t.Name])
	if err != nil {
		return apiprobe.Instance{}, nil
	}
	id := manifest.Hash(b)[:12]
	k.mu.Lock()
	if s := k.seen[t.Name]; len(s) == 0 || s[len(s)-1] != id {
		k.seen[t.Name] = append(s, id)
	}
	k.mu.Unlock()
	return apiprobe.Instance{ID: id, Args: manifest.ArgvOf(b), Running: 1}, nil
}

func (k *fakeKubelet) Live(_ context.Context, t nodeops.Target) (apiprobe.Liveness, error) {
	b, err := os.ReadFile(k.files[t.Name])
	if err != nil {
		return apiprobe.Liveness{Detail: "connection refused"}, nil // no manifest: no API server
	}
	if k.broken != nil && k.broken(t.Name, manifest.ArgvOf(b)) {
		return apiprobe.Liveness{Livez: 0, Readyz: 0, Detail: "connection refused"}, nil
	}
	return apiprobe.Liveness{Livez: 200, Readyz: 200}, nil
}

type tuneFixture struct {
	kind     *Manifest
	kubelet  *fakeKubelet
	targets  []nodeops.Target
	path     map[string]string // node -> manifest
	backup   map[string]string // node -> backup dir
	original []byte
	journal  string
	events   []change.Event
}

func newTuneFixture(t *testing.T, nodes int) *tuneFixture {
	t.Helper()
	fx := sshdtest.Start(t, nodes, sshdtest.Options{})
	client, err := sshclient.New(sshclient.Options{User: "root", IdentityFiles: []string{fx.ClientKey}, KnownHosts: []string{fx.KnownHosts},
		GlobalKnownHosts: []string{filepath.Join(fx.Dir, "ssh_known_hosts")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	orig, err := os.ReadFile("../../nodeops/manifest/testdata/kube-apiserver.yaml")
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	f := &tuneFixture{original: orig, path: map[string]string{}, backup: map[string]string{}, journal: filepath.Join(base, "journal.jsonl")}
	r := &dirRunner{inner: client, dirs: map[string]string{}}
	f.kubelet = &fakeKubelet{files: f.path, seen: map[string][]string{}}
	for i, s := range fx.Servers {
		name := s.Name
		root := filepath.Join(base, name, "etc", "kubernetes")
		md := filepath.Join(root, "manifests")
		if err := os.MkdirAll(md, 0o755); err != nil {
			t.Fatal(err)
		}
		// kubeadm's manifests are 0600; the other static pods stay.
		for file, b := range map[string][]byte{"kube-apiserver.yaml": orig, "etcd.yaml": []byte("# etcd\n"), "kube-scheduler.yaml": []byte("# scheduler\n")} {
			if err := os.WriteFile(filepath.Join(md, file), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		f.path[name] = filepath.Join(md, "kube-apiserver.yaml")
		f.backup[name] = filepath.Join(root, "breakglass-backup")
		r.dirs[name] = root
		if i == 0 {
			r.from = root
		}
		f.targets = append(f.targets, nodeops.Target{Name: name, Address: s.Host, Port: s.Port})
	}
	first := f.targets[0].Name
	f.kind = &Manifest{Runner: r, Watch: f.kubelet, Targets: f.targets, Path: f.path[first], BackupDir: f.backup[first],
		Wait: 3 * time.Second, Poll: 50 * time.Millisecond, CallTimeout: 20 * time.Second, Concurrency: 4}
	return f
}

func (f *tuneFixture) engine(dryRun bool) *change.Engine {
	return testEngine(f.journal, &f.events, dryRun, f.kind)
}

// testEngine is a change engine of one kind, journaling to path and
// keeping its events.
func testEngine(path string, events *[]change.Event, dryRun bool, k change.Kind) *change.Engine {
	e := &change.Engine{Emit: func(ev change.Event) { *events = append(*events, ev) }, DryRun: dryRun,
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(path, nil) },
		NewID:       func() string { return journal.NewID(time.Now()) }}
	e.Register(k)
	return e
}

func (f *tuneFixture) read(t *testing.T, node string) []byte {
	t.Helper()
	b, err := os.ReadFile(f.path[node])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dir lists the manifests directory of node.
func (f *tuneFixture) dir(t *testing.T, node string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(f.path[node]))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

var wantDir = []string{"etcd.yaml", "kube-apiserver.yaml", "kube-scheduler.yaml"}

func inflight(n int) manifest.Edits { return manifest.Edits{MaxRequestsInflight: &n} }

// TestTuneOnRealSSHD: a dry run leaves every byte; the tune writes the
// new manifest on every node, one node at a time, leaves nothing but the
// original names in the manifests directory, keeps the old bytes in a
// backup outside it with the mode kept; undo puts the original bytes
// back, through the same rollout.
func TestTuneOnRealSSHD(t *testing.T) {
	f := newTuneFixture(t, 2)
	ctx := context.Background()

	p, err := f.engine(true).Run(ctx, PlanTune(f.kind, f.targets, inflight(777)))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Items) != 2 || !strings.Contains(p.Items[0].Diff, "+    - --max-requests-inflight=777\n") {
		t.Fatalf("dry-run plan: %d items, diff:\n%s", len(p.Items), p.Items[0].Diff)
	}
	for _, n := range f.targets {
		if string(f.read(t, n.Name)) != string(f.original) {
			t.Fatalf("%s: the dry run changed the manifest", n.Name)
		}
		if _, err := os.Stat(f.backup[n.Name]); !os.IsNotExist(err) {
			t.Fatalf("%s: the dry run made a backup directory: %v", n.Name, err)
		}
	}

	p, err = f.engine(false).Run(ctx, PlanTune(f.kind, f.targets, inflight(777)))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range f.targets {
		b := f.read(t, n.Name)
		pod, err := manifest.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := manifest.FlagValue(pod, "max-requests-inflight"); v != "777" {
			t.Errorf("%s: --max-requests-inflight %q", n.Name, v)
		}
		if got := f.dir(t, n.Name); !slices.Equal(got, wantDir) {
			t.Errorf("%s: manifests directory holds %q, want %q", n.Name, got, wantDir)
		}
		if fi, _ := os.Stat(f.path[n.Name]); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: manifest mode %v, want 0600", n.Name, fi.Mode())
		}
		bk := manifest.BackupPath(f.backup[n.Name], p.ID, "kube-apiserver.yaml")
		bb, err := os.ReadFile(bk)
		if err != nil || string(bb) != string(f.original) {
			t.Errorf("%s: backup %s: %v (same bytes: %v)", n.Name, bk, err, string(bb) == string(f.original))
		}
		if fi, err := os.Stat(bk); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: backup mode: %v %v", n.Name, fi, err)
		}
		if strings.HasPrefix(bk, filepath.Dir(f.path[n.Name])+"/") {
			t.Errorf("backup %s inside the manifests directory", bk)
		}
	}
	// One node at a time: node1 was started and done before node2 started.
	var order []string
	for _, ev := range f.events {
		switch ev := ev.(type) {
		case change.ItemStarted:
			order = append(order, "start "+ev.Item.Target.Node)
		case change.ItemApplied:
			order = append(order, "done "+ev.Item.Target.Node)
		}
	}
	if strings.Join(order, ",") != "start node1,done node1,start node2,done node2" {
		t.Errorf("rollout order %q", order)
	}

	recs, err := journal.Read(f.journal)
	if err != nil {
		t.Fatal(err)
	}
	up, err := f.engine(false).Undo(ctx, recs, p.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(up.Items) != 2 {
		t.Fatalf("undo plan: %d items", len(up.Items))
	}
	for _, n := range f.targets {
		if string(f.read(t, n.Name)) != string(f.original) {
			t.Errorf("%s: undo did not restore the original bytes", n.Name)
		}
		if got := f.dir(t, n.Name); !slices.Equal(got, wantDir) {
			t.Errorf("%s: after undo the manifests directory holds %q", n.Name, got)
		}
	}
	// Nothing left to undo: an undo of the same change again plans nothing.
	recs, _ = journal.Read(f.journal)
	if again, err := f.engine(false).Undo(ctx, recs, p.ID, false); err != nil || len(again.Items) != 0 {
		t.Errorf("second undo: %v, %v", again, err)
	}
}

// TestTuneStaleRefused: the manifest changes between the plan and the
// apply (after the operator confirmed): the node is refused, nothing is
// written, no backup is made, and no node after it is touched.
func TestTuneStaleRefused(t *testing.T) {
	f := newTuneFixture(t, 2)
	e := f.engine(false)
	edited := append(append([]byte{}, f.original...), "# someone else\n"...)
	e.Confirm = func(context.Context, *change.Plan) error {
		return os.WriteFile(f.path["node1"], edited, 0o600)
	}
	_, err := e.Run(context.Background(), PlanTune(f.kind, f.targets, inflight(777)))
	var refused *change.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "changed since it was planned") {
		t.Fatalf("err %v, want refused as stale", err)
	}
	if string(f.read(t, "node1")) != string(edited) || string(f.read(t, "node2")) != string(f.original) {
		t.Error("a manifest was written")
	}
	for _, n := range f.targets {
		if got := f.dir(t, n.Name); !slices.Equal(got, wantDir) {
			t.Errorf("%s: manifests directory holds %q", n.Name, got)
		}
		if _, err := os.Stat(f.backup[n.Name]); !os.IsNotExist(err) {
			t.Errorf("%s: a backup was made: %v", n.Name, err)
		}
	}
}

// TestTuneRollsBackAndStops: node1's API server does not come back with
// the new manifest: node1 is rolled back (its original bytes again, and
// it answers), the change fails, and node2 is never started.
func TestTuneRollsBackAndStops(t *testing.T) {
	f := newTuneFixture(t, 2)
	f.kubelet.broken = func(node string, argv []string) bool {
		return slices.Contains(argv, "--max-requests-inflight=777")
	}
	_, err := f.engine(false).Run(context.Background(), PlanTune(f.kind, f.targets, inflight(777)))
	var partial *change.PartialError
	if !errors.As(err, &partial) || partial.Failed != 2 {
		t.Fatalf("err %v, want a partial error with 2 nodes not done", err)
	}
	if string(f.read(t, "node1")) != string(f.original) {
		t.Error("node1 was not rolled back to its original bytes")
	}
	if string(f.read(t, "node2")) != string(f.original) {
		t.Error("node2 was written after node1 failed")
	}
	if s := f.kubelet.seen["node1"]; len(s) != 3 || s[0] != s[2] {
		t.Errorf("node1's instances: %q, want old, new, old", s)
	}
	if len(f.kubelet.seen["node2"]) != 0 {
		t.Errorf("node2 was looked at: %q", f.kubelet.seen["node2"])
	}
	var failed []string
	for _, ev := range f.events {
		if ev, ok := ev.(change.ItemFailed); ok {
			failed = append(failed, ev.Item.Target.Node+": "+ev.Err.Error())
		}
	}
	if len(failed) != 2 || !strings.Contains(failed[0], "rolled back: the API server answers again") || !strings.Contains(failed[1], "not started") {
		t.Errorf("failures: %q", failed)
	}
	recs, err := journal.Read(f.journal)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, r := range recs {
		nodes = append(nodes, r.Type+" "+r.Target.Node+" "+r.Status+" "+r.Details["rolledBack"])
	}
	if strings.Join(nodes, ",") != "intent node1 pending ,outcome node1 failed true" {
		t.Errorf("journal: %q", nodes)
	}
	for _, n := range f.targets {
		if got := f.dir(t, n.Name); !slices.Equal(got, wantDir) {
			t.Errorf("%s: manifests directory holds %q", n.Name, got)
		}
	}
}

// TestUndoHalfFinishedRollout: breakglass stops while it waits for node1
// after writing it; with the journal as a crash leaves it (node1's
// intent, no outcome), undo restores node1 and nothing else.
func TestUndoHalfFinishedRollout(t *testing.T) {
	f := newTuneFixture(t, 2)
	ctx := context.Background()
	e := f.engine(false)
	cctx, cancel := context.WithCancel(ctx)
	// The new manifest's API server never answers: the wait runs until
	// cancelled, as when breakglass is killed.
	f.kubelet.broken = func(_ string, argv []string) bool {
		if !slices.Contains(argv, "--max-requests-inflight=777") {
			return false
		}
		cancel()
		return true
	}
	p, err := e.Run(cctx, PlanTune(f.kind, f.targets, inflight(777)))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if string(f.read(t, "node1")) == string(f.original) {
		t.Fatal("node1 was not written")
	}
	f.kubelet.broken = nil
	// Keep only the intents, as a crash before the outcome leaves it.
	recs, _ := journal.Read(f.journal)
	var kept []journal.Record
	for _, r := range recs {
		if r.Type == journal.TypeIntent {
			kept = append(kept, r)
		}
	}
	if len(kept) != 1 || kept[0].Target.Node != "node1" {
		t.Fatalf("intents %v", kept)
	}
	recs = kept
	up, err := f.engine(false).Undo(ctx, recs, p.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(up.Items) != 1 || up.Items[0].Target.Node != "node1" {
		t.Fatalf("undo items: %v", up.Items)
	}
	if string(f.read(t, "node1")) != string(f.original) {
		t.Error("undo did not restore node1")
	}
}

// TestTuneRefusesAnAPIServerThatDoesNotAnswer: node2's API server does
// not answer /livez and /readyz now (saturated): the tune is refused,
// dry run or not, naming it, and no node is touched; with Force it goes
// ahead, says so, and node2 comes back with the new flag.
func TestTuneRefusesAnAPIServerThatDoesNotAnswer(t *testing.T) {
	f := newTuneFixture(t, 2)
	f.kubelet.broken = func(node string, argv []string) bool {
		return node == "node2" && !slices.Contains(argv, "--max-requests-inflight=777")
	}
	for _, dry := range []bool{true, false} {
		_, err := f.engine(dry).Run(context.Background(), PlanTune(f.kind, f.targets, inflight(777)))
		var refused *change.RefusedError
		if !errors.As(err, &refused) || !strings.Contains(err.Error(), "node2 (does not answer: /livez") || strings.Contains(err.Error(), "node1") ||
			!strings.Contains(err.Error(), "--force") {
			t.Fatalf("dry run %v: err %v, want refused naming node2 alone and --force", dry, err)
		}
	}
	for _, n := range f.targets {
		if string(f.read(t, n.Name)) != string(f.original) {
			t.Errorf("%s: the manifest was written", n.Name)
		}
		if _, err := os.Stat(f.backup[n.Name]); !os.IsNotExist(err) {
			t.Errorf("%s: a backup was made: %v", n.Name, err)
		}
	}
	if _, err := os.Stat(f.journal); !os.IsNotExist(err) {
		t.Errorf("the refused tune journaled: %v", err)
	}

	f.kind.Force = true
	p, err := f.engine(false).Run(context.Background(), PlanTune(f.kind, f.targets, inflight(777)))
	if err != nil {
		t.Fatalf("with Force: %v", err)
	}
	if !slices.ContainsFunc(p.Notes, func(n string) bool { return strings.Contains(n, "node2") && strings.Contains(n, "--force") }) {
		t.Errorf("with Force, no note says node2 is restarted anyway: %q", p.Notes)
	}
	for _, n := range f.targets {
		if !strings.Contains(string(f.read(t, n.Name)), "--max-requests-inflight=777") {
			t.Errorf("%s: not tuned", n.Name)
		}
	}
}

// stallingKubelet is a fakeKubelet whose API servers are as starved of
// CPU as stall says (a StallWatch).
type stallingKubelet struct {
	*fakeKubelet
	stall map[string]apiprobe.CPUStall
}

func (k *stallingKubelet) CPUStall(_ context.Context, t nodeops.Target) (apiprobe.CPUStall, error) {
	return k.stall[t.Name], nil
}

// TestTuneRefusesAnAPIServerStarvedOfCPU: an API server that answers
// /livez and /readyz but whose threads waited for CPU most of the time
// measured is refused like one that does not answer, dry run or not, with
// nothing written or journaled; one under StarvedPercent is not, and one
// whose stall could not be measured is tuned with a note that says so.
func TestTuneRefusesAnAPIServerStarvedOfCPU(t *testing.T) {
	f := newTuneFixture(t, 3)
	sec := time.Second
	f.kind.Watch = &stallingKubelet{fakeKubelet: f.kubelet, stall: map[string]apiprobe.CPUStall{
		"node1": {Known: true, Percent: StarvedPercent - 1, Window: sec},
		"node2": {Known: true, Percent: 91, Window: sec},
		"node3": {Why: "no cpu.pressure for its cgroup"},
	}}
	for _, dry := range []bool{true, false} {
		_, err := f.engine(dry).Run(context.Background(), PlanTune(f.kind, f.targets, inflight(777)))
		var refused *change.RefusedError
		if !errors.As(err, &refused) || !strings.Contains(err.Error(), "node2 (starved of CPU: its threads waited for CPU 91% of 1s") ||
			strings.Contains(err.Error(), "node1") || strings.Contains(err.Error(), "node3") || !strings.Contains(err.Error(), "--force") {
			t.Fatalf("dry run %v: err %v, want refused naming node2 alone, starved, and --force", dry, err)
		}
	}
	for _, n := range f.targets {
		if string(f.read(t, n.Name)) != string(f.original) {
			t.Errorf("%s: the manifest was written", n.Name)
		}
	}
	if _, err := os.Stat(f.journal); !os.IsNotExist(err) {
		t.Errorf("the refused tune journaled: %v", err)
	}

	f.kind.Watch.(*stallingKubelet).stall["node2"] = apiprobe.CPUStall{Known: true, Percent: 3, Window: sec}
	p, err := f.engine(true).Run(context.Background(), PlanTune(f.kind, f.targets, inflight(777)))
	if err != nil {
		t.Fatalf("node2 no longer starved: %v", err)
	}
	if !slices.ContainsFunc(p.Notes, func(n string) bool {
		return strings.Contains(n, "could not be measured on node3 (no cpu.pressure") && !strings.Contains(n, "node1")
	}) {
		t.Errorf("no note says node3's stall is unknown: %q", p.Notes)
	}
}
