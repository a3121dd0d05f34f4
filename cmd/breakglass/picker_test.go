package main

import (
	"strings"
	"testing"
)

// Not in a terminal, breakglass with no arguments prints the help as
// before; in one, it opens the picker (q leaves it, running nothing).
func TestNoArgumentsHelpOrPicker(t *testing.T) {
	code, out, errOut := run(t, testDeps())
	if code != 0 || !strings.Contains(out, "Available Commands:") || !strings.Contains(out, "runbook") || errOut != "" {
		t.Errorf("no terminal: exit %d\n%s\n%s", code, out, errOut)
	}
	d := testDeps()
	d.InIsTTY, d.OutIsTTY = true, true
	d.In = strings.NewReader("q")
	code, out, errOut = run(t, d)
	if code != 0 || !strings.Contains(out, "apiserver-overload") || !strings.Contains(out, "priority-preemption-cascade") || strings.Contains(out, "Available Commands:") {
		t.Errorf("terminal: exit %d\n%q\n%s", code, out, errOut)
	}
	d = testDeps()
	d.InIsTTY, d.OutIsTTY, d.Global.Yes = true, true, true
	if code, out, _ := run(t, d, "--yes"); code != 0 || !strings.Contains(out, "Available Commands:") {
		t.Errorf("--yes in a terminal: exit %d\n%s", code, out)
	}
}

// Choosing a runbook in the picker runs it as runbook run does: here a
// dry run (--dry-run) of priority-preemption-cascade on embedded etcd, in
// the run's TUI, which changes nothing. Its diagnose reads etcd alone (no
// node known) and names no class; the scale of the preemptor given in the
// picker is planned; the victims step (read from the nodes' containerd)
// fails here, where the inventory has no nodes.
func TestPickerRunsTheChosenRunbook(t *testing.T) {
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "new", 3)
	t.Setenv("ETCDCTL_ENDPOINTS", e.srv.Endpoint)
	d := testDeps()
	d.InIsTTY, d.OutIsTTY = true, true
	// down, enter; preemptor, replicas (default), victims, then the
	// defaults of the rest.
	d.In = strings.NewReader("\x1b[B\rshop/new\r\rcortex\r\r\r\r")
	code, out, errOut := run(t, d, "--dry-run")
	if code != 1 || !strings.Contains(out, "runbook priority-preemption-cascade") || !strings.Contains(out, "3 planned    scale") ||
		!strings.Contains(errOut, "step 4 (victims): no nodes") {
		t.Errorf("exit %d\n%s\n%s", code, out, errOut)
	}
	if e.replicasOf(t, "new") != 3 {
		t.Errorf("a dry run changed etcd")
	}
}
