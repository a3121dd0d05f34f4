package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/recover/runbook"
)

// fakeLab replaces the lab's entry points for the test: nothing here may
// bring a lab up, reset one or start an incident on this machine (a live
// lab may be running beside the tests). Each test says what it allows.
type fakeLab struct {
	t                 *testing.T
	st                *lab.State
	resets, incidents int
}

func withFakeLab(t *testing.T, st *lab.State) *fakeLab {
	t.Helper()
	f := &fakeLab{t: t, st: st}
	saved := []func(){}
	swap := func(restore func()) { saved = append(saved, restore) }
	up, open, reset, ov, pre, root := labUp, labOpen, labReset, labOverload, labPreemption, labIsRoot
	swap(func() {
		labUp, labOpen, labReset, labOverload, labPreemption, labIsRoot = up, open, reset, ov, pre, root
	})
	t.Cleanup(func() {
		for _, r := range saved {
			r()
		}
	})
	labUp = func(context.Context, lab.Options) (*lab.Lab, error) {
		t.Error("the test brought a lab up")
		return nil, context.Canceled
	}
	labOpen = func(dir string) (*lab.Lab, error) {
		if f.st == nil {
			t.Errorf("the test opened the lab in %s", dir)
			return nil, context.Canceled
		}
		return &lab.Lab{State: f.st}, nil
	}
	labReset = func(*lab.Lab, context.Context, io.Writer) error {
		if f.st == nil {
			t.Error("the test reset the lab")
		}
		f.resets++
		return nil
	}
	labOverload = func(*lab.Lab, context.Context, io.Writer) (*lab.OverloadResult, error) {
		t.Error("the test started the overload incident")
		return nil, context.Canceled
	}
	labPreemption = func(*lab.Lab, context.Context, io.Writer) (*lab.PreemptionResult, error) {
		if f.st == nil {
			t.Error("the test started the preemption incident")
		}
		f.incidents++
		return &lab.PreemptionResult{OriginalIngesters: 2, Evicted: 2}, nil
	}
	labIsRoot = func() bool { return true }
	return f
}

// Every way rehearse can be refused is refused before the lab is touched,
// as a usage error (exit 2) that says what to do.
func TestRehearseUsageErrors(t *testing.T) {
	withFakeLab(t, nil)
	file := writeFile(t, "mine.yaml", cliRunbook)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"rehearse", "no-such-runbook", "--yes"}, []string{`no built-in runbook "no-such-runbook"`}},
		{[]string{"rehearse", file, "--yes"}, []string{"runbook scale-web (" + file + ") has no lab incident",
			"apiserver-overload (lab incident overload)", "priority-preemption-cascade (lab incident preemption)"}},
		{[]string{"rehearse"}, []string{"stdin is not a terminal", "hint: pass --yes"}},
		{[]string{"rehearse", "priority-preemption-cascade"}, []string{"stdin is not a terminal", "hint: pass --yes"}},
		{[]string{"rehearse", "--yes", "--param", "nosuch=1"}, []string{"runbook apiserver-overload has no such parameter"}},
		{[]string{"rehearse", "--yes", "--param", "slo=soon"}, []string{"--param slo"}},
		{[]string{"rehearse", "--yes", "--param", "slo"}, []string{"want NAME=VALUE"}},
		{[]string{"rehearse", "apiserver-overload", "priority-preemption-cascade", "--yes"}, []string{"accepts at most 1 arg"}},
		{[]string{"rehearse", "--yes", "-o", "yaml"}, []string{"--output yaml is not supported"}},
	} {
		code, _, errOut := run(t, testDeps(), tc.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", tc.args, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%v: stderr does not say %q:\n%s", tc.args, w, errOut)
			}
		}
	}
}

// The options: the runbook defaults to apiserver-overload, the lab
// directory to the lab commands' default.
func TestRehearseOptions(t *testing.T) {
	var got *rehearseOptions
	d := testDeps()
	root := newRootCmd(d)
	for _, c := range root.Commands() {
		if c.Name() == "rehearse" {
			root.RemoveCommand(c)
		}
	}
	root.AddCommand(newCmdRehearse(d, func(o *rehearseOptions) error { got = o; return nil }))
	root.SetArgs([]string{"rehearse", "--yes"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Runbook != "apiserver-overload" || got.Dir != ".lab" {
		t.Errorf("options %+v, want runbook apiserver-overload in .lab", got)
	}
}

// Every built-in runbook has a lab incident to rehearse it against, and
// the parameters the lab fills in are ones it has, of the right types,
// with every required one given.
func TestRehearsalsCoverBuiltins(t *testing.T) {
	incidents := map[string]bool{lab.IncidentOverload: true, lab.IncidentPreemption: true}
	for _, name := range runbook.Builtins() {
		r, ok := rehearsals[name]
		if !ok {
			t.Errorf("built-in runbook %s has no rehearsal: add it to rehearsals (rehearse.go) with the lab incident it recovers", name)
			continue
		}
		if !incidents[r.incident] {
			t.Errorf("%s: lab incident %q is not one the lab has", name, r.incident)
		}
		rb, err := runbook.Builtin(name)
		if err != nil {
			t.Fatal(err)
		}
		st := prospectiveState(t.TempDir())
		if _, err := rb.ResolveParams(rehearsalParams(r, st, incidentFacts{ingesters: 6}, nil)); err != nil {
			t.Errorf("%s: the lab's parameters do not resolve: %v", name, err)
		}
	}
	for name := range rehearsals {
		if _, err := runbook.Builtin(name); err != nil {
			t.Errorf("rehearsal of %s: %v", name, err)
		}
	}
	if _, ok := rehearsals[defaultRehearsal]; !ok {
		t.Errorf("the default rehearsal %s has no incident", defaultRehearsal)
	}
}

// With a lab that is up (faked: its state points at an embedded etcd and
// an inventory with no nodes), rehearse resets it, starts the incident and
// runs the runbook through runbook run's code against the lab's inventory
// and etcd, whatever --inventory and ETCDCTL_ENDPOINTS say; the summary
// lists the run's change with its undo command and how to end the
// rehearsal.
func TestRehearseRunsTheRunbookAgainstTheLab(t *testing.T) {
	e, st := fakeUpLab(t)
	dir, inv := st.Dir, st.Inventory
	f := withFakeLab(t, st)
	t.Setenv("ETCDCTL_ENDPOINTS", "http://127.0.0.1:1") // a rehearsal must not go there

	// A dry run plans the scale and changes nothing.
	args := []string{"rehearse", "priority-preemption-cascade", "--dir", dir, "--journal", e.journal, "--inventory", "/nonexistent.yaml"}
	code, out, errOut := run(t, testDeps(), append(args, "--dry-run", "-o", "json")...)
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, errOut)
	}
	if f.resets != 1 || f.incidents != 1 {
		t.Errorf("dry run: %d resets, %d incidents started, want 1 and 1", f.resets, f.incidents)
	}
	if got := e.deploymentReplicas(t, lab.NewClusterNS, "new-cluster"); got != 3 {
		t.Errorf("the dry run scaled the preemptor to %d", got)
	}
	var last map[string]any
	for _, l := range jsonLines(t, out) {
		last = l
	}
	if last["type"] != "rehearsal" || last["status"] != "planned" || last["dryRun"] != true {
		t.Errorf("dry run's last line %v, want a planned rehearsal", last)
	}

	// The run: the scale is applied, the victims never run (no nodes), so
	// the run fails at its victims step; the change is listed.
	code, out, errOut = run(t, testDeps(), append(args, "--yes", "--param", "timeout=1s")...)
	if code != 1 {
		t.Errorf("run: exit %d, want 1 (the victims do not run here)\n%s\n%s", code, out, errOut)
	}
	if got := e.deploymentReplicas(t, lab.NewClusterNS, "new-cluster"); got != 0 {
		t.Errorf("the run left the preemptor at %d replicas, want 0", got)
	}
	for _, w := range []string{
		"original ingesters preempted: 2 of 2", // the incident's evidence
		"rehearsal of priority-preemption-cascade against lab incident preemption (" + dir + "): failed",
		"recovery: not measured",
		"3 scale", // after the diagnose (1) and the neutralise, skipped here (2)
		"breakglass runbook undo rb-", " --step 3 --journal " + e.journal + " --inventory " + inv,
		"breakglass report rb-",
		"breakglass lab incident reset --dir " + dir,
		"breakglass lab down --dir " + dir,
	} {
		if !strings.Contains(out, w) {
			t.Errorf("the summary does not say %q:\n%s", w, out)
		}
	}
	if !strings.Contains(errOut, "rehearse: the lab is up in "+dir) {
		t.Errorf("stderr does not say the lab was up:\n%s", errOut)
	}

	// -o json: the rehearsal line names the change and its undo.
	e.putDeploy(t, lab.NewClusterNS, "new-cluster", 3)
	code, out, _ = run(t, testDeps(), append(args, "--yes", "-o", "json", "--param", "timeout=1s")...)
	if code != 1 {
		t.Errorf("run -o json: exit %d, want 1", code)
	}
	var reh rehearsalWire
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &reh); err != nil {
		t.Fatal(err)
	}
	if reh.Type != "rehearsal" || reh.RunID == "" || len(reh.Changes) != 1 || reh.Changes[0].StepID != "scale" ||
		!strings.HasPrefix(reh.Changes[0].Undo, "breakglass runbook undo "+reh.RunID+" --step 3") || len(reh.End) != 3 ||
		reh.End[0] != "breakglass runbook undo "+reh.RunID+" --journal "+e.journal+" --inventory "+inv {
		t.Errorf("rehearsal line %+v", reh)
	}
}

// fakeUpLab is a lab that is up as far as rehearse can tell: lab.json in
// its directory, its etcd an embedded one holding the preemption
// incident's preemptor, its inventory one worker that does not answer.
func fakeUpLab(t *testing.T) (*etcdEnv, *lab.State) {
	t.Helper()
	e := newEtcdEnv(t)
	e.putDeploy(t, lab.NewClusterNS, "new-cluster", 3)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, lab.StateFile), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	inv := writeFile(t, "breakglass.yaml", "ssh: {config: none, agent: false, connectTimeout: 1s}\nnodes:\n  - {name: worker-1, address: "+host+", port: "+port+", roles: [worker]}\n")
	return e, &lab.State{Dir: dir, Inventory: inv, OncallKubeconfig: filepath.Join(dir, "oncall.kubeconfig"),
		Etcd: lab.EtcdState{Endpoints: []string{e.srv.Endpoint}}}
}

// In a terminal, the runbook opens in the run's TUI, as runbook run opens
// it (here a dry run, which asks nothing), and the summary follows it.
func TestRehearseInATerminalOpensTheTUI(t *testing.T) {
	e, st := fakeUpLab(t)
	withFakeLab(t, st)
	d := testDeps()
	d.InIsTTY, d.OutIsTTY = true, true
	d.In = strings.NewReader("")
	code, out, errOut := run(t, d, "rehearse", "priority-preemption-cascade", "--dir", st.Dir, "--journal", e.journal, "--dry-run")
	if code != 0 || !strings.Contains(out, "runbook priority-preemption-cascade") || !strings.Contains(out, "3 planned    scale") ||
		!strings.Contains(out, "rehearsal of priority-preemption-cascade against lab incident preemption") ||
		!strings.Contains(out, "dry run: every step was planned against the incident, nothing was changed") {
		t.Errorf("exit %d\n%s\n%s", code, out, errOut)
	}
	if got := e.deploymentReplicas(t, lab.NewClusterNS, "new-cluster"); got != 3 {
		t.Errorf("the dry run scaled the preemptor to %d", got)
	}
}

// deploymentReplicas reads a Deployment's spec.replicas from etcd.
func (e *etcdEnv) deploymentReplicas(t *testing.T, ns, name string) int32 {
	t.Helper()
	key := "/registry/deployments/" + ns + "/" + name
	kv, _, err := e.store.Get(context.Background(), key, etcd.Linearizable)
	if err != nil || kv == nil {
		t.Fatalf("%s: %v", key, err)
	}
	d, err := e.store.Codec.Decode(key, kv.Value, kv.ModRevision)
	if err != nil {
		t.Fatal(err)
	}
	return *d.Object.(*appsv1.Deployment).Spec.Replicas
}

// The real binary with no terminal on stdin and no --yes: exit 2 with the
// hint, before any lab is looked for (its --dir does not exist). Were it
// to go on, lab up would find none of its tools on this PATH and stop
// before it made anything.
func TestRehearseBinaryWithoutATerminalWantsYes(t *testing.T) {
	res := runBinary(t, []string{"PATH=" + t.TempDir()}, "rehearse", "--dir", filepath.Join(t.TempDir(), "no-lab"))
	if res.code != 2 || !strings.Contains(res.stderr, "stdin is not a terminal") || !strings.Contains(res.stderr, "hint: pass --yes") ||
		strings.Contains(res.stderr, "lab up") {
		t.Errorf("exit %d\n%s", res.code, res.stderr)
	}
}
