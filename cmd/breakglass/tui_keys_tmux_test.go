package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keysRunbook has a step to undo with u and one to skip with s.
const keysRunbook = `name: keys
steps:
  - id: first
    type: scale
    params: {object: shop/a, replicas: "1"}
  - id: second
    type: scale
    onFailure: continue
    params: {object: shop/b, replicas: "1"}
  - id: last
    type: note
    params: {message: "the end"}
`

// The real binary's picker and TUI keys in a real terminal (tmux), on an
// embedded etcd: breakglass with no arguments lists the built-in runbooks
// and q leaves it, changing nothing; in a run, u at the second step's
// question undoes the first step (its undo asked about and confirmed on
// the screen) and s skips the second step, whose onFailure is continue.
// etcd then holds the replicas it had before.
func TestBinaryPickerAndTUIKeysInTmux(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux not installed")
	}
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "a", 3)
	e.putDeploy(t, "shop", "b", 3)
	bin := breakglassBinary(t)
	dir := t.TempDir()
	rb := writeFile(t, "keys.yaml", keysRunbook)
	journalPath := filepath.Join(dir, "journal.jsonl")
	exitFile := filepath.Join(dir, "exit")
	var p *tmuxPane
	state := t.TempDir()
	env := fmt.Sprintf("env -i PATH=%s HOME=%s XDG_STATE_HOME=%s ETCDCTL_ENDPOINTS=%s TERM=screen", shq(os.Getenv("PATH")), shq(dir), shq(state), shq(e.srv.Endpoint))
	start := func(args string) {
		t.Helper()
		os.Remove(exitFile)
		// A tmux server of its own per command, on its own socket.
		p = &tmuxPane{t: t, socket: filepath.Join(dir, fmt.Sprintf("tmux-%d.sock", time.Now().UnixNano())), session: "keys"}
		q := p
		t.Cleanup(func() { q.tmux("kill-server") })
		script := fmt.Sprintf("%s %s %s; echo $? > %s; sleep 600", env, shq(bin), args, shq(exitFile))
		if out, err := p.tmux("-f", "/dev/null", "new-session", "-d", "-s", p.session, "-x", "140", "-y", "45", "sh", "-c", script); err != nil {
			t.Fatalf("tmux new-session: %v: %s", err, out)
		}
	}
	waitScreen := func(what string, ok func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			s := p.screen()
			if ok(s) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("waited for %s; the terminal shows:\n%s", what, s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	exitCode := func() string {
		t.Helper()
		var code []byte
		waitScreen("the command to exit", func(string) bool {
			var err error
			code, err = os.ReadFile(exitFile)
			return err == nil && len(code) > 0
		})
		return strings.TrimSpace(string(code))
	}

	// The picker: both built-in runbooks listed; q runs nothing.
	start("")
	waitScreen("the picker", func(s string) bool {
		return strings.Contains(s, "apiserver-overload") && strings.Contains(s, "priority-preemption-cascade")
	})
	p.send("q")
	if code := exitCode(); code != "0" {
		t.Errorf("q in the picker: exit %s; the terminal:\n%s", code, p.screen())
	}
	if left, _ := os.ReadDir(state); len(left) != 0 {
		t.Errorf("q in the picker wrote state: %v", left)
	}
	if e.replicasOf(t, "a") != 3 || e.replicasOf(t, "b") != 3 {
		t.Error("q in the picker changed etcd")
	}

	// The run: y to the first step.
	start("runbook run " + shq(rb) + " --journal " + shq(journalPath))
	first := waitScreen("the first step's question", func(s string) bool {
		return askLine.MatchString(s) && strings.Contains(s, "shop/a")
	})
	t.Logf("the first question: %s", strings.TrimSpace(askLine.FindString(first)))
	p.send("y")
	// At the second step's question (y/n/s: it may be skipped), u undoes
	// the first step.
	second := waitScreen("the second step's question, skippable", func(s string) bool {
		return strings.Contains(askLine.FindString(s), "[y/n/s]")
	})
	if got := e.replicasOf(t, "a"); got != 1 {
		t.Fatalf("after y to the first step, shop/a has %d replicas, want 1; the terminal:\n%s", got, second)
	}
	question := strings.TrimSpace(askLine.FindString(second))
	p.send("u")
	undo := waitScreen("the undo's question", func(s string) bool {
		q := strings.TrimSpace(askLine.FindString(s))
		return q != "" && q != question
	})
	t.Logf("the undo's question: %s", strings.TrimSpace(askLine.FindString(undo)))
	p.send("y")
	waitScreen("the second step's question again, after the undo", func(s string) bool {
		return strings.TrimSpace(askLine.FindString(s)) == question
	})
	if got := e.replicasOf(t, "a"); got != 3 {
		t.Fatalf("after u and y, shop/a has %d replicas, want 3 (undone); the terminal:\n%s", got, p.screen())
	}
	p.send("s")
	final := waitScreen("the run to finish", func(s string) bool { return strings.Contains(s, "finished:") })
	p.send("q")
	if code := exitCode(); code != "0" {
		t.Errorf("the run: exit %s; the terminal:\n%s", code, final)
	}
	t.Logf("the terminal at the end:\n%s", final)
	if got := e.replicasOf(t, "b"); got != 3 {
		t.Errorf("s skipped the second step, yet shop/b has %d replicas", got)
	}
	if got := e.replicasOf(t, "a"); got != 3 {
		t.Errorf("shop/a has %d replicas after the run, want 3 (undone)", got)
	}
	j, err := os.ReadFile(journalPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(j), `"skipped"`) {
		t.Errorf("the journal does not record the skip:\n%s", j)
	}
}
