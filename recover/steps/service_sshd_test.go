package steps

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/nodeops/service"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// These tests stop and start node components through real OpenSSH sshd
// servers on loopback. The nodes all share this machine, so each node is
// given a directory of its own standing in for its /etc/kubernetes, and
// processes of its own: the kind is configured with one canonical root
// (which exists nowhere) and canonical process names (which no process
// has), and svcNodeRunner rewrites them in every command to the target
// node's own, and the node's own root back to the canonical one in what
// the command prints. Every node thus looks to the kind like a real node
// with the same paths, as kubeadm nodes are. The supervisor (kubelet for
// a static pod, the lab's supervise for kubelet.json) is played by
// svcProc: it runs a copy of /bin/sleep under the component's name while
// the component's file is in place, and kills it while it is not.

const (
	svcCMRel = "manifests/kube-controller-manager.yaml"
	svcKLRel = "lab/kubelet.json"
)

// svcNodeRunner points every command at the target node's own directory
// and processes.
type svcNodeRunner struct {
	inner nodeops.Runner
	to    map[string]*strings.Replacer // node -> canonical root and names to the node's own
	back  map[string]*strings.Replacer // node -> the node's root to the canonical one
}

func (r *svcNodeRunner) Run(ctx context.Context, t nodeops.Target, c nodeops.Command) (nodeops.Output, error) {
	to, back := r.to[t.Name], r.back[t.Name]
	if to == nil {
		return r.inner.Run(ctx, t, c)
	}
	c.Line = to.Replace(c.Line)
	out, err := r.inner.Run(ctx, t, c)
	out.Stdout = []byte(back.Replace(string(out.Stdout)))
	out.Stderr = []byte(back.Replace(string(out.Stderr)))
	return out, err
}

// svcLeases is the nodes' leases in kube-node-lease: a kubelet started
// by its supervisor renews its node's lease shortly after (unless frozen).
type svcLeases struct {
	mu     sync.Mutex
	renew  map[string]time.Time
	reads  map[string]int
	frozen bool
	// fail makes the next reads fail (etcd not answering).
	fail int
}

func (l *svcLeases) RenewTime(_ context.Context, node string) (time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads[node]++
	if l.fail > 0 {
		l.fail--
		return time.Time{}, errors.New("etcd: context deadline exceeded")
	}
	return l.renew[node], nil
}

// svcProc is one node's supervisor of one component: the component runs
// while its file is there.
type svcProc struct {
	f          *svcFixture
	key        string // "node2/kubelet"
	node, comp string // comp: "kubelet" or "cm"
	bin, file  string
	hold       atomic.Bool  // a stuck supervisor: acts on nothing
	looks      atomic.Int64 // how often it looked at the file (not held)
	mu         sync.Mutex
	cmd        *exec.Cmd
	done       chan struct{}
}

func (p *svcProc) loop(ctx context.Context) {
	defer close(p.done)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			p.kill()
			return
		case <-tick.C:
		}
		if p.hold.Load() {
			continue
		}
		_, err := os.Stat(p.file)
		present := err == nil
		switch running := p.running(); {
		case present && !running:
			p.start()
		case !present && running:
			p.kill()
		}
		p.looks.Add(1)
	}
}

func (p *svcProc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

func (p *svcProc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *svcProc) start() {
	cmd := exec.Command(p.bin, "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.f.logf("start %s failed: %v", p.key, err)
		return
	}
	p.mu.Lock()
	p.cmd = cmd
	p.mu.Unlock()
	p.f.logf("start %s", p.key)
	if l := p.f.leases; l != nil && p.comp == "kubelet" {
		time.AfterFunc(300*time.Millisecond, func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.frozen || !p.running() {
				return
			}
			l.renew[p.node] = time.Now()
			p.f.logf("lease %s", p.node)
		})
	}
}

func (p *svcProc) kill() {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	cmd.Wait()
	p.f.logf("stop %s", p.key)
}

type svcOpts struct {
	nodes         int
	cms, kubelets []string // the nodes that run the controller-manager, a kubelet
	leases        bool
}

type svcFixture struct {
	t       *testing.T
	kind    *Service
	runner  *svcNodeRunner
	targets []nodeops.Target
	node    map[string]nodeops.Target
	root    map[string]string // node -> its own stand-in for /etc/kubernetes
	canon   string            // the root the kind is configured with
	binDir  string
	suffix  string
	klName  string // canonical process names
	cmName  string
	klOrig  []byte
	cmOrig  []byte
	journal string
	procs   map[string]*svcProc // "node1/cm", "node2/kubelet"
	leases  *svcLeases

	mu     sync.Mutex
	log    []string
	events []change.Event
}

func newSvcFixture(t *testing.T, o svcOpts) *svcFixture {
	t.Helper()
	fx := sshdtest.Start(t, o.nodes, sshdtest.Options{})
	client, err := sshclient.New(sshclient.Options{User: "root", IdentityFiles: []string{fx.ClientKey}, KnownHosts: []string{fx.KnownHosts},
		GlobalKnownHosts: []string{filepath.Join(fx.Dir, "ssh_known_hosts")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	var rb [3]byte
	rand.Read(rb[:])
	base := t.TempDir()
	f := &svcFixture{t: t, node: map[string]nodeops.Target{}, root: map[string]string{}, canon: filepath.Join(base, "etc-kubernetes"),
		binDir: filepath.Join(base, "bin"), suffix: hex.EncodeToString(rb[:]), journal: filepath.Join(base, "journal.jsonl"),
		procs:  map[string]*svcProc{},
		klOrig: []byte(`{"command": ["kubelet", "--config=/var/lib/kubelet/config.yaml", "--v=2"]}` + "\n"),
		cmOrig: []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-controller-manager\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n    - kube-controller-manager\n    - --leader-elect=true\n    name: kube-controller-manager\n"),
	}
	// Longer than the 15 characters of /proc/PID/comm, as
	// kube-controller-manager is: the nodes' processes of one component
	// share their comm and differ only in argv[0].
	f.klName = "bgtest-kubelet-" + f.suffix
	f.cmName = "bgtest-kube-controller-manager-" + f.suffix
	if err := os.MkdirAll(f.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if o.leases {
		f.leases = &svcLeases{renew: map[string]time.Time{}, reads: map[string]int{}}
	}
	f.runner = &svcNodeRunner{inner: client, to: map[string]*strings.Replacer{}, back: map[string]*strings.Replacer{}}
	for _, s := range fx.Servers {
		name := s.Name
		root := filepath.Join(base, name, "etc-kubernetes")
		for _, d := range []string{"manifests", "lab"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// Another static pod stays in the manifests directory.
		if err := os.WriteFile(filepath.Join(root, "manifests", "etcd.yaml"), []byte("# etcd\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(o.cms, name) {
			if err := os.WriteFile(filepath.Join(root, svcCMRel), f.cmOrig, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if slices.Contains(o.kubelets, name) {
			if err := os.WriteFile(filepath.Join(root, svcKLRel), f.klOrig, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		f.root[name] = root
		f.runner.to[name] = strings.NewReplacer(f.canon, root, f.klName, f.procName(name, "kubelet"), f.cmName, f.procName(name, "cm"))
		f.runner.back[name] = strings.NewReplacer(root, f.canon)
		tg := nodeops.Target{Name: name, Address: s.Host, Port: s.Port}
		f.targets = append(f.targets, tg)
		f.node[name] = tg
	}
	f.kind = &Service{Runner: f.runner, Targets: f.targets,
		Kubelet: service.Component{Name: f.klName, Unit: f.klName, Files: []string{filepath.Join(f.canon, svcKLRel)},
			BackupDir: filepath.Join(f.canon, "breakglass-backup")},
		ControllerManager: service.Component{Name: f.cmName, Unit: f.cmName, Files: []string{filepath.Join(f.canon, svcCMRel)},
			BackupDir: filepath.Join(f.canon, "breakglass-backup")},
		Wait: 5 * time.Second, Poll: 50 * time.Millisecond, CallTimeout: 20 * time.Second, Concurrency: 4}
	if f.leases != nil {
		f.kind.Leases = f.leases
	}
	ctx, cancel := context.WithCancel(context.Background())
	for _, n := range o.cms {
		f.supervise(ctx, n, "cm")
	}
	for _, n := range o.kubelets {
		f.supervise(ctx, n, "kubelet")
	}
	t.Cleanup(func() {
		cancel()
		for _, p := range f.procs {
			<-p.done
		}
	})
	for key := range f.procs {
		f.waitRunning(key, true)
	}
	if f.leases != nil {
		for _, n := range o.kubelets {
			f.waitLog("lease " + n)
		}
	}
	return f
}

// procName is the name the node's process of comp has.
func (f *svcFixture) procName(node, comp string) string {
	if comp == "kubelet" {
		return f.klName + "-" + node
	}
	return f.cmName + "-" + node
}

// bin is a copy of /bin/sleep named as the node's comp process.
func (f *svcFixture) bin(node, comp string) string {
	f.t.Helper()
	p := filepath.Join(f.binDir, f.procName(node, comp))
	if _, err := os.Stat(p); err == nil {
		return p
	}
	src, err := os.Open("/bin/sleep")
	if err != nil {
		f.t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		f.t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *svcFixture) supervise(ctx context.Context, node, comp string) {
	rel := svcKLRel
	if comp == "cm" {
		rel = svcCMRel
	}
	p := &svcProc{f: f, key: node + "/" + comp, node: node, comp: comp, bin: f.bin(node, comp), file: f.path(node, rel), done: make(chan struct{})}
	f.procs[p.key] = p
	go p.loop(ctx)
}

// spawn starts the node's comp process with no supervisor (one that runs
// from nowhere breakglass knows); it is killed when the test ends.
func (f *svcFixture) spawn(node, comp string) *exec.Cmd {
	f.t.Helper()
	cmd := exec.Command(f.bin(node, comp), "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func (f *svcFixture) path(node, rel string) string { return filepath.Join(f.root[node], rel) }

// backup is where change id put the node's file rel, on the node.
func (f *svcFixture) backup(node, id, rel string) string {
	return manifest.BackupPath(filepath.Join(f.root[node], "breakglass-backup"), id, filepath.Base(rel))
}

// canonical is the path p as the kind sees it.
func (f *svcFixture) canonical(rel string) string { return filepath.Join(f.canon, rel) }

func (f *svcFixture) canonicalBackup(id, rel string) string {
	return manifest.BackupPath(filepath.Join(f.canon, "breakglass-backup"), id, filepath.Base(rel))
}

func (f *svcFixture) logf(format string, a ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, strings.TrimSpace(fmt.Sprintf(format, a...)))
}

func (f *svcFixture) logged() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.log)
}

func (f *svcFixture) resetLog() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log, f.events = nil, nil
}

// at is where line is in the log (-1: not there).
func (f *svcFixture) at(line string) int { return slices.Index(f.logged(), line) }

// before fails unless each line is logged, each before the next.
func (f *svcFixture) before(lines ...string) {
	f.t.Helper()
	last := -1
	for _, l := range lines {
		i := f.at(l)
		if i < 0 || i < last {
			f.t.Errorf("want %q in this order, log: %q", lines, f.logged())
			return
		}
		last = i
	}
}

func (f *svcFixture) waitLog(line string) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for f.at(line) < 0 {
		if time.Now().After(deadline) {
			f.t.Fatalf("%q not logged; log: %q", line, f.logged())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *svcFixture) waitRunning(key string, want bool) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for f.procs[key].running() != want {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: running %v, want %v; log: %q", key, !want, want, f.logged())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *svcFixture) short(comp string) string {
	if comp == f.klName {
		return "kubelet"
	}
	if comp == f.cmName {
		return "cm"
	}
	return comp
}

// emit records the engine's events, and the items' in the log.
func (f *svcFixture) emit(ev change.Event) {
	f.mu.Lock()
	f.events = append(f.events, ev)
	f.mu.Unlock()
	line := func(verb string, it *change.Item) {
		c, _ := it.Payload.(*ServiceChange)
		if c == nil {
			f.logf("%s %s", verb, it.Target.Node)
			return
		}
		f.logf("%s %s %s %s", verb, it.Target.Node, c.Action, f.short(c.Component))
	}
	switch ev := ev.(type) {
	case change.ItemStarted:
		line("started", ev.Item)
	case change.ItemApplied:
		line("applied", ev.Item)
	case change.ItemFailed:
		line("failed", ev.Item)
		f.logf("error %s: %v", ev.Item.Target.Node, ev.Err)
	}
}

func (f *svcFixture) engine() *change.Engine {
	e := &change.Engine{Emit: f.emit,
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(f.journal, nil) },
		NewID:       func() string { return journal.NewID(time.Now()) }}
	e.Register(f.kind)
	return e
}

func (f *svcFixture) records() []journal.Record {
	f.t.Helper()
	recs, err := journal.Read(f.journal)
	if err != nil {
		f.t.Fatal(err)
	}
	return recs
}

func (f *svcFixture) probe(node string, c service.Component) service.State {
	f.t.Helper()
	s, err := service.Probe(context.Background(), f.runner, f.node[node], c)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// file fails unless the node's file rel holds want with mode perm.
func (f *svcFixture) file(p string, want []byte, perm os.FileMode) {
	f.t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		f.t.Errorf("%s: %v", p, err)
		return
	}
	if string(b) != string(want) {
		f.t.Errorf("%s holds %q, want %q", p, b, want)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != perm {
		f.t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode(), err, perm)
	}
}

func (f *svcFixture) absent(p string) {
	f.t.Helper()
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		f.t.Errorf("%s: want it absent, stat says %v", p, err)
	}
}

func (f *svcFixture) dir(p string) []string {
	f.t.Helper()
	ents, err := os.ReadDir(p)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// journalLines is the records of change id, one "type node status
// action component" each.
func (f *svcFixture) journalLines(id string) []string {
	var out []string
	for _, r := range journal.Find(f.records(), id) {
		out = append(out, strings.Join([]string{r.Type, r.Target.Node, r.Status, r.Details["action"], f.short(r.Details["component"])}, " "))
	}
	return out
}

func refused(err error) bool {
	var r *change.RefusedError
	return errors.As(err, &r)
}

func payload(t *testing.T, it *change.Item) *ServiceChange {
	t.Helper()
	c, ok := it.Payload.(*ServiceChange)
	if !ok {
		t.Fatalf("item %q: payload %T", it.Summary, it.Payload)
	}
	return c
}

func summaries(items []*change.Item) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Summary)
	}
	return out
}

// TestServicePlanKubeletStopRefusedWithoutControllerManager: a
// control-plane node without the controller-manager's file (and no
// process), one where it runs from a file breakglass does not know, and
// one that cannot be reached: each refuses the plan, nothing is changed;
// with force each is a note and the kubelets are planned all the same.
func TestServicePlanKubeletStopRefusedWithoutControllerManager(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 2, kubelets: []string{"node2"}})
	ctx := context.Background()
	cps, workers := []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}

	_, err := PlanKubeletStop(f.kind, cps, workers, 1, false)(ctx, "id-1")
	if !refused(err) || !strings.Contains(err.Error(), "no "+f.cmName+" found on the control-plane nodes (node1)") {
		t.Fatalf("no controller-manager: err %v, want refused saying it was not found", err)
	}
	// Through the engine: refused before anything is journaled or moved.
	if _, err := f.engine().Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false)); !refused(err) {
		t.Fatalf("engine: err %v, want refused", err)
	}
	if _, err := os.Stat(f.journal); !os.IsNotExist(err) {
		t.Errorf("a refused plan opened the journal: %v", err)
	}
	f.file(f.path("node2", svcKLRel), f.klOrig, 0o644)
	if !f.procs["node2/kubelet"].running() {
		t.Error("the kubelet was stopped by a refused plan")
	}
	f.absent(filepath.Join(f.root["node2"], "breakglass-backup"))

	p, err := PlanKubeletStop(f.kind, cps, workers, 1, true)(ctx, "id-2")
	if err != nil {
		t.Fatalf("force: %v", err)
	}
	if len(p.Items) != 1 || p.Items[0].Target.Node != "node2" {
		t.Fatalf("force: items %q, want the kubelet of node2 only", summaries(p.Items))
	}
	if c := payload(t, p.Items[0]); c.Component != f.klName || c.Action != "stop" || c.Phase != 1 {
		t.Errorf("force: item %+v", c)
	}
	if !slices.ContainsFunc(p.Notes, func(n string) bool {
		return strings.HasPrefix(n, "--force: no "+f.cmName+" found on the control-plane nodes")
	}) {
		t.Errorf("force: notes %q, want the missing controller-manager", p.Notes)
	}

	// It runs, from nothing the kind knows (no unit, no file): it cannot
	// be stopped, and says so.
	f.spawn("node1", "cm")
	_, err = PlanKubeletStop(f.kind, cps, workers, 1, false)(ctx, "id-3")
	if !refused(err) || !strings.Contains(err.Error(), f.cmName+" runs (") || !strings.Contains(err.Error(), "stop it by hand") {
		t.Fatalf("unknown controller-manager: err %v, want refused, stop it by hand", err)
	}
	p, err = PlanKubeletStop(f.kind, cps, workers, 1, true)(ctx, "id-4")
	if err != nil || len(p.Items) != 1 || !slices.ContainsFunc(p.Notes, func(n string) bool {
		return strings.HasPrefix(n, "--force: node1: "+f.cmName+" runs (")
	}) {
		t.Fatalf("unknown controller-manager, force: %v, items %q, notes %q", err, summaries(p.Items), p.Notes)
	}

	// A control-plane node that does not answer.
	dead := nodeops.Target{Name: "node9", Address: "127.0.0.1", Port: closedPort(t)}
	_, err = PlanKubeletStop(f.kind, []nodeops.Target{dead}, workers, 1, false)(ctx, "id-5")
	if !refused(err) || !strings.Contains(err.Error(), "node9: ") {
		t.Fatalf("unreachable control-plane node: err %v, want refused naming it", err)
	}
}

func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// TestServicePlanKubeletStop: the controller-manager is moved aside in
// phase 0, the kubelets stopped in phase 1, each item with what it needs
// to be put back; a worker without a kubelet is unchanged; planning
// changes nothing.
func TestServicePlanKubeletStop(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 3, cms: []string{"node1"}, kubelets: []string{"node2"}})
	ctx := context.Background()
	id := journal.NewID(time.Now())
	p, err := PlanKubeletStop(f.kind, []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"], f.node["node3"]}, 1, false)(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != id || p.Op != OpKubeletStop {
		t.Errorf("plan %s %s", p.ID, p.Op)
	}
	if len(p.Items) != 2 {
		t.Fatalf("items %q, want the controller-manager then the kubelet", summaries(p.Items))
	}
	cm, kl := payload(t, p.Items[0]), payload(t, p.Items[1])
	want := []struct {
		it        *change.Item
		c         *ServiceChange
		node      string
		comp, rel string
		orig      []byte
		mode      string
		phase     int
		keep      []string
	}{
		{p.Items[0], cm, "node1", f.cmName, svcCMRel, f.cmOrig, "600", 0, []string{"etcd.yaml"}},
		{p.Items[1], kl, "node2", f.klName, svcKLRel, f.klOrig, "644", 1, nil},
	}
	for _, w := range want {
		c := w.c
		if w.it.Kind != KindService || w.it.Target.Node != w.node || w.it.Target.Path != f.canonical(w.rel) || w.it.Undoes != "" {
			t.Errorf("%s: item %+v", w.node, w.it)
		}
		if c.Node != w.node || c.Component != w.comp || c.Action != "stop" || c.Mechanism != service.File || c.Phase != w.phase {
			t.Errorf("%s: %s %s %s phase %d", w.node, c.Component, c.Action, c.Mechanism, c.Phase)
		}
		if c.Path != f.canonical(w.rel) || c.Backup != f.canonicalBackup(id, w.rel) {
			t.Errorf("%s: path %s backup %s", w.node, c.Path, c.Backup)
		}
		if c.Hash != manifest.Hash(w.orig) || string(c.Bytes) != string(w.orig) || c.Mode != w.mode || c.UID != 0 || c.GID != 0 {
			t.Errorf("%s: file %.12s %q mode %s %d:%d", w.node, c.Hash, c.Bytes, c.Mode, c.UID, c.GID)
		}
		if w.it.PlannedAt != "sha256:"+manifest.Hash(w.orig) {
			t.Errorf("%s: planned at %s", w.node, w.it.PlannedAt)
		}
		if !slices.Equal(c.Keep, w.keep) {
			t.Errorf("%s: keep %q, want %q", w.node, c.Keep, w.keep)
		}
		if c.Target.Name != w.node || c.Target.Port != f.node[w.node].Port {
			t.Errorf("%s: target %+v", w.node, c.Target)
		}
	}
	if len(p.Unchanged) != 1 || p.Unchanged[0].Summary != "node3: kubelet not running" {
		t.Errorf("unchanged %q, want node3 without a kubelet", summaries(p.Unchanged))
	}
	if len(p.Skipped) != 0 {
		t.Errorf("skipped %+v", p.Skipped)
	}
	if !slices.ContainsFunc(p.Notes, func(n string) bool { return strings.Contains(n, "breakglass undo "+id) }) {
		t.Errorf("notes %q, want how to undo", p.Notes)
	}
	// Planning changed nothing.
	f.file(f.path("node1", svcCMRel), f.cmOrig, 0o600)
	f.file(f.path("node2", svcKLRel), f.klOrig, 0o644)
	for key, pr := range f.procs {
		if !pr.running() {
			t.Errorf("%s stopped by the plan", key)
		}
	}
	// A fraction stops the first of the selected nodes by name; the
	// others are not looked at.
	cps := []nodeops.Target{f.node["node1"]}
	p, err = PlanKubeletStop(f.kind, cps, []nodeops.Target{f.node["node3"], f.node["node2"]}, 0.5, false)(ctx, id)
	if err != nil {
		t.Fatalf("fraction: %v", err)
	}
	if len(p.Items) != 2 || p.Items[1].Target.Node != "node2" || len(p.Unchanged) != 0 ||
		!slices.Contains(p.Notes, "fraction 0.5: 1 of the 2 selected nodes (the first by name): node2") {
		t.Errorf("fraction 0.5: items %q, unchanged %q, notes %q", summaries(p.Items), summaries(p.Unchanged), p.Notes)
	}
	for _, fr := range []float64{0, -1, 1.5} {
		if _, err := PlanKubeletStop(f.kind, cps, []nodeops.Target{f.node["node2"]}, fr, false)(ctx, id); err == nil || !strings.Contains(err.Error(), "want more than 0 and at most 1") {
			t.Errorf("fraction %g: err %v", fr, err)
		}
	}
	if _, err := PlanKubeletStop(f.kind, cps, nil, 1, true)(ctx, id); err == nil || !strings.Contains(err.Error(), "no node selected") {
		t.Errorf("nothing selected: err %v", err)
	}
	// A control-plane node among the selected is refused unless force.
	cpNode := f.node["node1"]
	cpNode.Roles = []string{"control-plane"}
	_, err = PlanKubeletStop(f.kind, cps, []nodeops.Target{cpNode, f.node["node2"]}, 1, false)(ctx, id)
	if !refused(err) || !strings.Contains(err.Error(), "selects control-plane nodes (node1)") {
		t.Errorf("control-plane node selected: err %v, want refused", err)
	}
	p, err = PlanKubeletStop(f.kind, cps, []nodeops.Target{cpNode, f.node["node2"]}, 1, true)(ctx, id)
	if err != nil || !slices.ContainsFunc(p.Notes, func(n string) bool { return strings.HasPrefix(n, "--force: control-plane nodes selected (node1)") }) {
		t.Errorf("control-plane node selected, force: %v, notes %q", err, p.Notes)
	}

	// What the planners see is each node's own: node2's kubelet is not
	// node3's, though both would have the same comm.
	if s := f.probe("node3", f.kind.Kubelet); s.Running() || s.Mechanism != "" {
		t.Errorf("node3 sees a kubelet: %+v", s)
	}
	if s := f.probe("node2", f.kind.Kubelet); len(s.Procs) != 1 || !strings.HasPrefix(s.Procs[0], strconv.Itoa(f.procs["node2/kubelet"].pid())+"@") {
		t.Errorf("node2's kubelet processes %q, want pid %d", s.Procs, f.procs["node2/kubelet"].pid())
	}
}

// TestServiceKubeletStopApplyAndUndo: the stop moves the controller-manager
// aside and waits until it stopped, only then stops the kubelet; the
// journal has each node's intent and outcome. While the kubelet is down
// the controller-manager is not put back, kubelet start plans from the
// journal, and a node without a kubelet is not an error. Undo starts the
// kubelet first, then the controller-manager, with their original bytes.
func TestServiceKubeletStopApplyAndUndo(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 3, cms: []string{"node1"}, kubelets: []string{"node2"}})
	ctx := context.Background()
	cps, workers := []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"], f.node["node3"]}
	e := f.engine()
	confirmed := 0
	e.Confirm = func(_ context.Context, p *change.Plan) error {
		confirmed++
		if len(p.Items) != 2 {
			t.Errorf("confirmed plan: %q", summaries(p.Items))
		}
		return nil
	}
	p, err := e.Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false))
	if err != nil {
		t.Fatalf("stop: %v; log %q", err, f.logged())
	}
	if confirmed != 1 {
		t.Errorf("confirmed %d times", confirmed)
	}
	id := p.ID

	// The files are aside, under the change's backup directory, with
	// their bytes and mode; the directories hold what they held besides.
	f.absent(f.path("node1", svcCMRel))
	f.file(f.backup("node1", id, svcCMRel), f.cmOrig, 0o600)
	f.absent(f.path("node2", svcKLRel))
	f.file(f.backup("node2", id, svcKLRel), f.klOrig, 0o644)
	if got := f.dir(filepath.Join(f.root["node1"], "manifests")); !slices.Equal(got, []string{"etcd.yaml"}) {
		t.Errorf("node1's manifests directory holds %q", got)
	}
	f.absent(filepath.Join(f.root["node3"], "breakglass-backup"))
	for key, pr := range f.procs {
		if pr.running() {
			t.Errorf("%s still runs", key)
		}
	}
	if s := f.probe("node1", f.kind.ControllerManager); s.Running() || s.Mechanism != "" || s.Aside[f.canonicalBackup(id, svcCMRel)] != manifest.Hash(f.cmOrig) {
		t.Errorf("node1's controller-manager after the stop: %+v", s)
	}
	if s := f.probe("node2", f.kind.Kubelet); s.Running() {
		t.Errorf("node2's kubelet runs after the stop: %q", s.Procs)
	}
	// Phase 0 was done (the controller-manager no longer running) before
	// phase 1 started.
	f.before("started node1 stop cm", "stop node1/cm", "applied node1 stop cm", "started node2 stop kubelet", "stop node2/kubelet", "applied node2 stop kubelet")
	for _, it := range p.Items {
		if !strings.HasPrefix(it.Result, "stopped after ") {
			t.Errorf("%s: result %q", it.Target.Node, it.Result)
		}
	}
	wantJ := []string{"intent node1 pending stop cm", "outcome node1 applied stop cm", "intent node2 pending stop kubelet", "outcome node2 applied stop kubelet"}
	if got := f.journalLines(id); !slices.Equal(got, wantJ) {
		t.Errorf("journal %q, want %q", got, wantJ)
	}
	recs := f.records()
	for _, r := range journal.Find(recs, id) {
		if r.Kind != journal.KindNode || r.Op != OpKubeletStop || r.Details["kind"] != KindService || r.Details["mechanism"] != service.File ||
			!strings.HasPrefix(r.Details["backup"], filepath.Join(f.canon, "breakglass-backup", id)+"/") {
			t.Errorf("record %+v", r)
		}
		if r.Type == journal.TypeIntent {
			var c ServiceChange
			if r.Before == nil || json.Unmarshal(r.Before.Bytes, &c) != nil || c.Hash == "" || len(c.Bytes) == 0 {
				t.Errorf("%s: intent without the file: %+v", r.Target.Node, r.Before)
			}
		}
	}

	// While the kubelet is down, the controller-manager stays aside.
	_, err = PlanControllerManagerRestore(f.kind, cps, workers, recs, false)(ctx, "restore-1")
	if !refused(err) || !strings.Contains(err.Error(), "the kubelet does not run on node2:") || strings.Contains(err.Error(), "node3") {
		t.Fatalf("restore with node2's kubelet down: err %v, want refused for node2 (only)", err)
	}
	rp, err := PlanControllerManagerRestore(f.kind, cps, workers, recs, true)(ctx, "restore-2")
	if err != nil {
		t.Fatalf("restore --force: %v", err)
	}
	if len(rp.Items) != 1 || len(rp.Notes) != 1 || !strings.HasPrefix(rp.Notes[0], "--force: the kubelet does not run on node2:") {
		t.Fatalf("restore --force: items %q notes %q", summaries(rp.Items), rp.Notes)
	}
	if c := payload(t, rp.Items[0]); c.Node != "node1" || c.Component != f.cmName || c.Action != "start" || c.Phase != 0 ||
		c.Backup != f.canonicalBackup(id, svcCMRel) || c.Path != f.canonical(svcCMRel) || c.Hash != manifest.Hash(f.cmOrig) || c.Mode != "600" ||
		!slices.Equal(c.Keep, []string{"etcd.yaml"}) || rp.Items[0].PlannedAt != "absent" {
		t.Errorf("restore --force: item %+v", c)
	}

	// kubelet start puts node2's back, from the journal's stop; node3
	// has no kubelet at all, which is no reason to skip it.
	sp, err := PlanKubeletStart(f.kind, workers, recs)(ctx, "start-1")
	if err != nil {
		t.Fatalf("kubelet start: %v", err)
	}
	if len(sp.Items) != 1 || sp.Items[0].Target.Node != "node2" {
		t.Fatalf("kubelet start: items %q", summaries(sp.Items))
	}
	if c := payload(t, sp.Items[0]); c.Action != "start" || c.Component != f.klName || c.Mechanism != service.File ||
		c.Backup != f.canonicalBackup(id, svcKLRel) || c.Path != f.canonical(svcKLRel) || c.Hash != manifest.Hash(f.klOrig) || c.Mode != "644" {
		t.Errorf("kubelet start: item %+v", c)
	}
	if len(sp.Unchanged) != 1 || sp.Unchanged[0].Target.Node != "node3" || sp.Unchanged[0].Summary != "node3: no kubelet on this node" {
		t.Errorf("kubelet start: unchanged %q", summaries(sp.Unchanged))
	}
	if len(sp.Skipped) != 0 {
		t.Errorf("kubelet start: skipped %+v", sp.Skipped)
	}
	// Without the journal, the newest backup on the node is found.
	sp, err = PlanKubeletStart(f.kind, workers, nil)(ctx, "start-2")
	if err != nil || len(sp.Items) != 1 || payload(t, sp.Items[0]).Backup != f.canonicalBackup(id, svcKLRel) ||
		string(payload(t, sp.Items[0]).Bytes) != string(f.klOrig) {
		t.Fatalf("kubelet start without the journal: %v, items %q", err, summaries(sp.Items))
	}
	// Planning put nothing back.
	f.absent(f.path("node1", svcCMRel))
	f.absent(f.path("node2", svcKLRel))

	// Undo: the kubelet first, then the controller-manager.
	f.resetLog()
	up, err := f.engine().Undo(ctx, recs, id, false)
	if err != nil {
		t.Fatalf("undo: %v; log %q", err, f.logged())
	}
	if len(up.Items) != 2 || up.Op != "undo" {
		t.Fatalf("undo: %s items %q", up.Op, summaries(up.Items))
	}
	for _, it := range up.Items {
		if it.Undoes != id || payload(t, it).Action != "start" {
			t.Errorf("undo item %q undoes %q", it.Summary, it.Undoes)
		}
	}
	f.before("started node2 start kubelet", "start node2/kubelet", "applied node2 start kubelet", "started node1 start cm", "start node1/cm", "applied node1 start cm")
	f.file(f.path("node1", svcCMRel), f.cmOrig, 0o600)
	f.file(f.path("node2", svcKLRel), f.klOrig, 0o644)
	if got := f.dir(filepath.Join(f.root["node1"], "manifests")); !slices.Equal(got, []string{"etcd.yaml", "kube-controller-manager.yaml"}) {
		t.Errorf("node1's manifests directory holds %q after undo", got)
	}
	if got := f.dir(filepath.Join(f.root["node2"], "lab")); !slices.Equal(got, []string{"kubelet.json"}) {
		t.Errorf("node2's lab directory holds %q after undo", got)
	}
	for key, pr := range f.procs {
		if !pr.running() {
			t.Errorf("%s does not run after undo", key)
		}
	}
	if s := f.probe("node1", f.kind.ControllerManager); !s.Running() || s.Mechanism != service.File {
		t.Errorf("node1's controller-manager after undo: %+v", s)
	}
	wantJ = []string{"intent node2 pending start kubelet", "outcome node2 applied start kubelet", "intent node1 pending start cm", "outcome node1 applied start cm"}
	if got := f.journalLines(up.ID); !slices.Equal(got, wantJ) {
		t.Errorf("undo's journal %q, want %q", got, wantJ)
	}
	for _, r := range journal.Find(f.records(), up.ID) {
		if r.Undoes != id || r.Op != "undo" {
			t.Errorf("undo record %s %s undoes %q", r.Type, r.Op, r.Undoes)
		}
	}
	// Nothing left to undo.
	again, err := f.engine().Undo(ctx, f.records(), id, false)
	if err != nil || len(again.Items) != 0 {
		t.Errorf("second undo: %v, items %q", err, summaries(again.Items))
	}
}

// TestServiceKubeletStartThenRestore: after a stop, kubelet start puts
// the kubelet back and waits for its lease; that start is not undone; the
// controller-manager restore is then allowed and puts it back; the stop
// has nothing left to undo.
func TestServiceKubeletStartThenRestore(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 3, cms: []string{"node1"}, kubelets: []string{"node2"}, leases: true})
	ctx := context.Background()
	cps, workers := []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"], f.node["node3"]}
	stop, err := f.engine().Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false))
	if err != nil {
		t.Fatalf("stop: %v", err)
	}
	f.resetLog()
	start, err := f.engine().Run(ctx, PlanKubeletStart(f.kind, workers, f.records()))
	if err != nil {
		t.Fatalf("start: %v; log %q", err, f.logged())
	}
	if len(start.Items) != 1 || start.Op != OpKubeletStart || !strings.HasPrefix(start.Items[0].Result, "running after ") {
		t.Fatalf("start: %s items %q", start.Op, summaries(start.Items))
	}
	// Running is not enough: the start waits for the lease renewed.
	f.before("started node2 start kubelet", "start node2/kubelet", "lease node2", "applied node2 start kubelet")
	f.file(f.path("node2", svcKLRel), f.klOrig, 0o644)
	if !f.procs["node2/kubelet"].running() || f.procs["node1/cm"].running() {
		t.Errorf("after start: kubelet runs %v, controller-manager %v", f.procs["node2/kubelet"].running(), f.procs["node1/cm"].running())
	}
	if got := f.journalLines(start.ID); !slices.Equal(got, []string{"intent node2 pending start kubelet", "outcome node2 applied start kubelet"}) {
		t.Errorf("start's journal %q", got)
	}

	// A start is not undone by stopping again.
	n := len(f.records())
	_, err = f.engine().Undo(ctx, f.records(), start.ID, false)
	if !refused(err) || !strings.Contains(err.Error(), "kubelet-start") {
		t.Fatalf("undo of the start: err %v, want refused", err)
	}
	if _, err := f.kind.Undo(ctx, f.records(), start.ID, true); !refused(err) {
		t.Fatalf("undo of the start, force: err %v, want refused", err)
	}
	if len(f.records()) != n || !f.procs["node2/kubelet"].running() {
		t.Errorf("the refused undo changed something: %d records (had %d), kubelet runs %v", len(f.records()), n, f.procs["node2/kubelet"].running())
	}
	f.file(f.path("node2", svcKLRel), f.klOrig, 0o644)

	// node2's kubelet runs; node3 still has none (its processes' comm is
	// the same as node2's kubelet's: only argv[0] tells them apart).
	sp, err := PlanKubeletStart(f.kind, workers, f.records())(ctx, "start-again")
	if err != nil || len(sp.Items) != 0 || !slices.Equal(summaries(sp.Unchanged), []string{"node2: kubelet runs", "node3: no kubelet on this node"}) {
		t.Errorf("start again: %v, items %q, unchanged %q", err, summaries(sp.Items), summaries(sp.Unchanged))
	}

	// Every kubelet runs: the controller-manager may come back.
	f.resetLog()
	restore, err := f.engine().Run(ctx, PlanControllerManagerRestore(f.kind, cps, workers, f.records(), false))
	if err != nil {
		t.Fatalf("restore: %v; log %q", err, f.logged())
	}
	if len(restore.Items) != 1 || restore.Items[0].Target.Node != "node1" || restore.Op != OpControllerManagerRestore {
		t.Fatalf("restore: items %q", summaries(restore.Items))
	}
	f.before("started node1 start cm", "start node1/cm", "applied node1 start cm")
	f.file(f.path("node1", svcCMRel), f.cmOrig, 0o600)
	if !f.procs["node1/cm"].running() {
		t.Error("the controller-manager does not run after the restore")
	}
	rp, err := PlanControllerManagerRestore(f.kind, cps, workers, f.records(), false)(ctx, "restore-again")
	if err != nil || len(rp.Items) != 0 || !slices.Equal(summaries(rp.Unchanged), []string{"node1: " + f.cmName + " runs"}) {
		t.Errorf("restore again: %v, items %q, unchanged %q", err, summaries(rp.Items), summaries(rp.Unchanged))
	}
	if _, err := f.engine().Undo(ctx, f.records(), restore.ID, false); !refused(err) {
		t.Errorf("undo of the restore: err %v, want refused", err)
	}
	// The stop has nothing left to undo: both run.
	up, err := f.engine().Undo(ctx, f.records(), stop.ID, false)
	if err != nil || len(up.Items) != 0 {
		t.Errorf("undo of the stop: %v, items %q", err, summaries(up.Items))
	}
}

// TestServiceKubeletStartWaitsForLease: a kubelet that runs but never
// renews its lease is not back: the start fails after Wait, and the
// journal says its outcome is unknown. When the lease read before the
// start fails, its old renewTime does not pass for a renewal: the read is
// retried, and the lease must be renewed past what it then says; a lease
// that cannot be read at all fails the start, naming it.
func TestServiceKubeletStartWaitsForLease(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 2, cms: []string{"node1"}, kubelets: []string{"node2"}, leases: true})
	ctx := context.Background()
	cps, workers := []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}
	if _, err := f.engine().Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false)); err != nil {
		t.Fatalf("stop: %v", err)
	}
	f.leases.mu.Lock()
	f.leases.frozen = true
	f.leases.mu.Unlock()
	f.kind.Wait = time.Second
	f.resetLog()
	start, err := f.engine().Run(ctx, PlanKubeletStart(f.kind, workers, f.records()))
	var partial *change.PartialError
	if !errors.As(err, &partial) || partial.Failed != 1 || partial.Total != 1 {
		t.Fatalf("start: err %v, want 1 of 1 failed", err)
	}
	if !f.procs["node2/kubelet"].running() {
		t.Error("the kubelet was not started")
	}
	if i := slices.IndexFunc(f.logged(), func(l string) bool {
		return strings.HasPrefix(l, "error node2: node2: "+f.klName+" did not start within 1s: kubelet runs; its lease not renewed yet")
	}); i < 0 {
		t.Errorf("log %q, want the lease not renewed", f.logged())
	}
	if got := f.journalLines(start.ID); !slices.Equal(got, []string{"intent node2 pending start kubelet", "outcome node2 unknown start kubelet"}) {
		t.Errorf("journal %q", got)
	}
	f.leases.mu.Lock()
	reads := f.leases.reads["node2"]
	f.leases.mu.Unlock()
	if reads < 2 {
		t.Errorf("the lease was read %d times: want before the start, then while waiting", reads)
	}

	// Stop it again: the controller-manager is still aside (unchanged),
	// only the kubelet is planned.
	stop2, err := f.engine().Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false))
	if err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if len(stop2.Items) != 1 || stop2.Items[0].Target.Node != "node2" || len(stop2.Unchanged) != 1 ||
		!strings.HasPrefix(stop2.Unchanged[0].Summary, "node1: "+f.cmName+" already moved aside (") {
		t.Fatalf("second stop: items %q unchanged %q", summaries(stop2.Items), summaries(stop2.Unchanged))
	}
	stopAgain := func() {
		t.Helper()
		if _, err := f.engine().Run(ctx, PlanKubeletStop(f.kind, cps, workers, 1, false)); err != nil {
			t.Fatalf("stop again: %v", err)
		}
		f.waitRunning("node2/kubelet", false)
	}
	leaseReads := func() int {
		f.leases.mu.Lock()
		defer f.leases.mu.Unlock()
		return f.leases.reads["node2"]
	}
	setFail := func(n int) {
		f.leases.mu.Lock()
		f.leases.fail = n
		f.leases.mu.Unlock()
	}

	// The lease read before the start fails (etcd slow), and the lease is
	// never renewed: the node is not back. The lease's old renewTime is
	// not taken for a renewal: the read is retried after the start, and
	// the lease must pass what it then says.
	setFail(1)
	f.resetLog()
	n0 := leaseReads()
	start2, err := f.engine().Run(ctx, PlanKubeletStart(f.kind, workers, f.records()))
	if !errors.As(err, &partial) || partial.Failed != 1 || partial.Total != 1 {
		t.Fatalf("start with the first lease read failing, lease never renewed: err %v, want 1 of 1 failed; log %q", err, f.logged())
	}
	if !slices.ContainsFunc(f.logged(), func(l string) bool {
		return strings.HasPrefix(l, "error node2: node2: "+f.klName+" did not start within 1s: kubelet runs; its lease not renewed yet")
	}) {
		t.Errorf("log %q, want the lease not renewed", f.logged())
	}
	if got := f.journalLines(start2.ID); !slices.Equal(got, []string{"intent node2 pending start kubelet", "outcome node2 unknown start kubelet"}) {
		t.Errorf("journal %q", got)
	}
	if got := leaseReads() - n0; got < 3 {
		t.Errorf("the lease was read %d times: want the failed read, the retried baseline, then the wait", got)
	}

	// The lease cannot be read at all: the start fails, naming the node
	// and its lease.
	stopAgain()
	setFail(1 << 30)
	f.resetLog()
	start3, err := f.engine().Run(ctx, PlanKubeletStart(f.kind, workers, f.records()))
	setFail(0)
	if !errors.As(err, &partial) || partial.Failed != 1 || partial.Total != 1 {
		t.Fatalf("start with the lease never read: err %v, want 1 of 1 failed", err)
	}
	if !slices.ContainsFunc(f.logged(), func(l string) bool {
		return strings.HasPrefix(l, "error node2: node2: "+f.klName+" did not start within 1s: kubelet runs, but its lease kube-node-lease/node2 could not be read") &&
			strings.Contains(l, "etcd: context deadline exceeded")
	}) {
		t.Errorf("log %q, want the lease named as not read", f.logged())
	}
	if got := f.journalLines(start3.ID); !slices.Equal(got, []string{"intent node2 pending start kubelet", "outcome node2 unknown start kubelet"}) {
		t.Errorf("journal %q", got)
	}
	if !f.procs["node2/kubelet"].running() {
		t.Error("the kubelet was not started while its lease could not be read")
	}

	// The first read fails, and the started kubelet then renews its lease
	// (here once the read was retried and the kubelet runs): the node is
	// back, only after that renewal.
	stopAgain()
	setFail(1)
	f.kind.Wait = time.Minute // a bound only: the renewal below ends the wait
	f.resetLog()
	n0 = leaseReads()
	type result struct {
		p   *change.Plan
		err error
	}
	res := make(chan result, 1)
	go func() {
		p, err := f.engine().Run(ctx, PlanKubeletStart(f.kind, workers, f.records()))
		res <- result{p, err}
	}()
	var got result
	deadline := time.Now().Add(10 * time.Second)
wait:
	for {
		select {
		case got = <-res:
			break wait
		default:
		}
		if leaseReads()-n0 >= 3 && f.procs["node2/kubelet"].running() {
			f.leases.mu.Lock()
			f.leases.renew["node2"] = time.Now()
			f.leases.mu.Unlock()
			f.logf("lease node2")
			got = <-res
			break wait
		}
		if time.Now().After(deadline) {
			t.Fatalf("the start did not read the lease again: %d reads; log %q", leaseReads()-n0, f.logged())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got.err != nil {
		t.Fatalf("start with the first lease read failing, then renewed: %v; log %q", got.err, f.logged())
	}
	f.before("started node2 start kubelet", "start node2/kubelet", "lease node2", "applied node2 start kubelet")
	if g := f.journalLines(got.p.ID); !slices.Equal(g, []string{"intent node2 pending start kubelet", "outcome node2 applied start kubelet"}) {
		t.Errorf("journal %q", g)
	}
}

// TestServiceKubeletStopPhaseFailure: the controller-manager does not
// stop (its supervisor is stuck): its item fails after Wait, the kubelets
// are not stopped at all, and the journal has nothing of them. Its undo,
// while the controller-manager still runs with its file aside, puts the
// file back.
func TestServiceKubeletStopPhaseFailure(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 2, cms: []string{"node1"}, kubelets: []string{"node2"}})
	ctx := context.Background()
	f.kind.Wait = time.Second
	f.procs["node1/cm"].hold.Store(true)
	p, err := f.engine().Run(ctx, PlanKubeletStop(f.kind, []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}, 1, false))
	var partial *change.PartialError
	if !errors.As(err, &partial) || partial.Failed != 2 || partial.Total != 2 {
		t.Fatalf("err %v, want 2 of 2 failed", err)
	}
	logs := f.logged()
	if !slices.ContainsFunc(logs, func(l string) bool {
		return strings.HasPrefix(l, "error node1: node1: "+f.cmName+" did not stop within 1s: "+f.cmName+" still runs (")
	}) || !slices.ContainsFunc(logs, func(l string) bool {
		return strings.HasPrefix(l, "error node2: not started: an earlier step failed (node1: ")
	}) {
		t.Errorf("log %q", logs)
	}
	if slices.Contains(logs, "started node2 stop kubelet") {
		t.Error("the kubelet's stop was started after the controller-manager's failed")
	}
	f.file(f.path("node2", svcKLRel), f.klOrig, 0o644)
	f.absent(filepath.Join(f.root["node2"], "breakglass-backup"))
	if !f.procs["node2/kubelet"].running() {
		t.Error("the kubelet was stopped")
	}
	f.absent(f.path("node1", svcCMRel)) // moved: it is the supervisor that did not act
	if got := f.journalLines(p.ID); !slices.Equal(got, []string{"intent node1 pending stop cm", "outcome node1 unknown stop cm"}) {
		t.Errorf("journal %q", got)
	}

	// Undo now, while the controller-manager still runs (its supervisor
	// has not acted yet) though its file is aside: the file is put back,
	// so that the controller-manager keeps running once its supervisor
	// acts (undo goes by where the file is, not by the process).
	if !f.procs["node1/cm"].running() {
		t.Fatal("the controller-manager's supervisor acted while held")
	}
	up, err := f.engine().Undo(ctx, f.records(), p.ID, false)
	if err != nil {
		t.Fatalf("undo while the controller-manager runs with its file aside: %v; log %q", err, f.logged())
	}
	if len(up.Items) != 1 || up.Items[0].Target.Node != "node1" || payload(t, up.Items[0]).Action != "start" || payload(t, up.Items[0]).Component != f.cmName {
		t.Fatalf("undo while the controller-manager runs with its file aside: items %q, want node1's controller-manager put back", summaries(up.Items))
	}
	f.file(f.path("node1", svcCMRel), f.cmOrig, 0o600)
	if got := f.dir(filepath.Join(f.root["node1"], "manifests")); !slices.Equal(got, []string{"etcd.yaml", "kube-controller-manager.yaml"}) {
		t.Errorf("node1's manifests directory holds %q after undo", got)
	}
	if got := f.journalLines(up.ID); !slices.Equal(got, []string{"intent node1 pending start cm", "outcome node1 applied start cm"}) {
		t.Errorf("undo's journal %q", got)
	}
	// Its supervisor acts again, and finds the file in place: the
	// controller-manager runs on.
	sup := f.procs["node1/cm"]
	looked := sup.looks.Load()
	sup.hold.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for sup.looks.Load() < looked+2 {
		if time.Now().After(deadline) {
			t.Fatal("the supervisor did not look at the file again")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := f.probe("node1", f.kind.ControllerManager); !sup.running() || !s.Running() || s.Mechanism != service.File {
		t.Errorf("after its supervisor acted: running %v, probe %+v", sup.running(), s)
	}
	// The kubelet, never stopped, is not touched by the undo.
	if !f.procs["node2/kubelet"].running() || slices.ContainsFunc(summaries(up.Items), func(s string) bool { return strings.HasPrefix(s, "node2") }) {
		t.Error("the undo touched the kubelet its change never stopped")
	}

	// An item of another kind's payload is refused, not acted on.
	bad := &change.Item{Kind: KindService, Target: journal.Target{Node: "node2"}, Payload: "not a service change"}
	j, err := journal.Open(f.journal, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.kind.ApplyBatch(ctx, p, []*change.Item{bad}, j, func(change.Event) {}); err == nil || !strings.Contains(err.Error(), "without a service change") {
		t.Errorf("bad payload: %v", err)
	}
}

// TestServiceKubeletStopStale: the controller-manager's file changes
// after the plan was confirmed: nothing is moved aside, no backup is
// made, the kubelets are not started, and the change is refused (exit
// 4). A kubelet's file that changes once the controller-manager was
// moved aside is a partial change (exit 3).
func TestServiceKubeletStopStale(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 2, cms: []string{"node1"}, kubelets: []string{"node2"}})
	ctx := context.Background()
	edited := append(slices.Clone(f.cmOrig), "# edited by someone\n"...)
	e := f.engine()
	e.Confirm = func(context.Context, *change.Plan) error {
		return os.WriteFile(f.path("node1", svcCMRel), edited, 0o600)
	}
	p, err := e.Run(ctx, PlanKubeletStop(f.kind, []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}, 1, false))
	if err == nil {
		t.Fatal("a stale plan was applied")
	}
	// Nothing was changed anywhere: a refusal (exit 4), not a partial
	// change (exit 3).
	var se *service.StaleError
	var partial *change.PartialError
	var coded interface{ ExitCode() int }
	if !refused(err) || errors.As(err, &partial) || !errors.As(err, &se) || !errors.As(err, &coded) || coded.ExitCode() != 4 {
		t.Errorf("stale stop: %T: %v, want a refusal (exit 4) wrapping the *service.StaleError", err, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "nothing was changed; the 1 item of the later phases was not started") || !strings.Contains(msg, "\nhint: ") {
		t.Errorf("stale stop: %q, want nothing changed, 1 item not started, and a hint", msg)
	}
	if se != nil && (se.Node != "node1" || se.Path != f.canonical(svcCMRel) || se.Expected != manifest.Hash(f.cmOrig) || se.Found != manifest.Hash(edited)) {
		t.Errorf("stale: %+v", se)
	}
	logs := f.logged()
	if !slices.ContainsFunc(logs, func(l string) bool {
		return strings.HasPrefix(l, "error node1: node1: "+f.canonical(svcCMRel)+" changed since it was planned")
	}) || !slices.ContainsFunc(logs, func(l string) bool {
		return strings.HasPrefix(l, "error node2: not started: an earlier step failed (node1: "+f.canonical(svcCMRel)+" changed since it was planned")
	}) {
		t.Errorf("log %q, want node1 stale and node2 not started", logs)
	}
	if slices.Contains(logs, "started node2 stop kubelet") {
		t.Error("the kubelet's stop was started after the controller-manager's file was found changed")
	}
	f.file(f.path("node1", svcCMRel), edited, 0o600)
	f.file(f.path("node2", svcKLRel), f.klOrig, 0o644)
	f.absent(filepath.Join(f.root["node1"], "breakglass-backup"))
	f.absent(filepath.Join(f.root["node2"], "breakglass-backup"))
	for key, pr := range f.procs {
		if !pr.running() {
			t.Errorf("%s was stopped", key)
		}
	}
	if got := f.journalLines(p.ID); !slices.Equal(got, []string{"intent node1 pending stop cm", "outcome node1 failed stop cm"}) {
		t.Errorf("journal %q", got)
	}
	// Its undo has nothing to put back: the file was never moved.
	if up, err := f.kind.Undo(ctx, f.records(), p.ID, false); err != nil || len(up) != 0 {
		t.Errorf("undo of the refused stop: %v, items %q", err, summaries(up))
	}

	// The kubelet's file changes instead, once the controller-manager was
	// moved aside: that was a change, and it is a partial one (exit 3).
	f.resetLog()
	e.Confirm = func(context.Context, *change.Plan) error {
		return os.WriteFile(f.path("node2", svcKLRel), []byte(`{"command": ["kubelet", "--v=9"]}`+"\n"), 0o644)
	}
	p, err = e.Run(ctx, PlanKubeletStop(f.kind, []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}, 1, false))
	if !errors.As(err, &partial) || refused(err) || partial.Failed != 1 || partial.Total != 2 {
		t.Fatalf("stale kubelet after the controller-manager was moved: err %v, want 1 of 2 failed", err)
	}
	f.absent(f.path("node1", svcCMRel))
	if got := f.journalLines(p.ID); !slices.Equal(got, []string{"intent node1 pending stop cm", "outcome node1 applied stop cm", "intent node2 pending stop kubelet", "outcome node2 failed stop kubelet"}) {
		t.Errorf("journal %q", got)
	}
}

// TestServiceUndoRefusesChangedFile: after a stop, the kubelet's file is
// in place again with other bytes and the kubelet does not run: undo
// refuses it; with force it is left as it is and the rest is undone.
func TestServiceUndoRefusesChangedFile(t *testing.T) {
	f := newSvcFixture(t, svcOpts{nodes: 2, cms: []string{"node1"}, kubelets: []string{"node2"}})
	ctx := context.Background()
	p, err := f.engine().Run(ctx, PlanKubeletStop(f.kind, []nodeops.Target{f.node["node1"]}, []nodeops.Target{f.node["node2"]}, 1, false))
	if err != nil {
		t.Fatalf("stop: %v", err)
	}
	f.procs["node2/kubelet"].hold.Store(true)
	other := []byte(`{"command": ["kubelet", "--v=9"]}` + "\n")
	if err := os.WriteFile(f.path("node2", svcKLRel), other, 0o644); err != nil {
		t.Fatal(err)
	}
	n := len(f.records())
	_, err = f.engine().Undo(ctx, f.records(), p.ID, false)
	if !refused(err) || !strings.Contains(err.Error(), "node2: "+f.canonical(svcKLRel)+" is in place again with other bytes") {
		t.Fatalf("undo: err %v, want refused for node2's file", err)
	}
	if len(f.records()) != n || f.procs["node1/cm"].running() {
		t.Error("the refused undo changed something")
	}
	f.resetLog()
	up, err := f.engine().Undo(ctx, f.records(), p.ID, true)
	if err != nil {
		t.Fatalf("undo --force: %v", err)
	}
	if len(up.Items) != 1 || up.Items[0].Target.Node != "node1" {
		t.Fatalf("undo --force: items %q, want node1's controller-manager only", summaries(up.Items))
	}
	f.file(f.path("node2", svcKLRel), other, 0o644)
	f.file(f.path("node1", svcCMRel), f.cmOrig, 0o600)
	if !f.procs["node1/cm"].running() {
		t.Error("the controller-manager does not run after undo --force")
	}
}
