package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// tmuxPane is one detached tmux session running a command in a real
// terminal: keys go in with send-keys, the screen comes out with
// capture-pane.
type tmuxPane struct {
	t       *testing.T
	socket  string
	session string
}

func (p *tmuxPane) tmux(args ...string) (string, error) {
	out, err := exec.Command("tmux", append([]string{"-S", p.socket}, args...)...).CombinedOutput()
	return string(out), err
}

func (p *tmuxPane) screen() string {
	out, err := p.tmux("capture-pane", "-p", "-J", "-t", p.session)
	if err != nil {
		p.t.Fatalf("tmux capture-pane: %v: %s", err, out)
	}
	return out
}

func (p *tmuxPane) send(keys ...string) {
	if out, err := p.tmux(append([]string{"send-keys", "-t", p.session}, keys...)...); err != nil {
		p.t.Fatalf("tmux send-keys %v: %v: %s", keys, err, out)
	}
}

// askLine is the TUI's question on the screen ("...? [y/n]" or
// "[y/n/s]"), or "".
var askLine = regexp.MustCompile(`(?m)^.*\? \[y/n(/s)?\]\s*$`)

// TestLabRunbookTUIInTmux is issue 13's terminal test: the real binary's
// TUI in a real terminal (tmux), against the lab under the overload
// incident. The test reads each question off the screen with
// capture-pane and confirms it with send-keys. At the end an ordinary
// user's requests through the real apiserver answer within the SLO, the
// telemetry program runs on no worker (its processes on the nodes), and
// runbook undo brings the lab back: the agents run again, the DaemonSet's
// spec is the one it had, no shed is active.
func TestLabRunbookTUIInTmux(t *testing.T) {
	st := labtest.Lab(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed (bash .ci/run installs it)")
	}
	bin := os.Getenv("BREAKGLASS_BIN")
	if bin == "" {
		t.Skip("BREAKGLASS_BIN is not set (make test sets it)")
	}
	l, err := lab.Open(st.Dir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := &runbookLab{st: st, l: l, inv: labInventory(t, st, nil), journal: filepath.Join(dir, "journal.jsonl")}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	p := &tmuxPane{t: t, socket: filepath.Join(dir, "tmux.sock"), session: "breakglass"}
	t.Cleanup(func() {
		p.tmux("kill-server")
		if err := l.Reset(context.Background(), testWriter{t}); err != nil {
			t.Errorf("reset: %v", err)
		}
	})
	if _, err := l.Overload(ctx, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	before := r.nodesAndEtcd(t)

	exitFile := filepath.Join(dir, "exit")
	cmdline := strings.Join([]string{shq(bin), "runbook", "run", "apiserver-overload",
		"--param", shq("daemonset=" + lab.TelemetryNamespace + "/" + lab.TelemetryDaemonSet),
		"--param", shq("kubeconfig=" + st.OncallKubeconfig),
		"--inventory", shq(r.inv), "--journal", shq(r.journal)}, " ")
	// The pane stays after the command so the last screen can be read;
	// the exit status goes to a file.
	script := fmt.Sprintf("%s; echo $? > %s; sleep 3600", cmdline, shq(exitFile))
	if out, err := p.tmux("new-session", "-d", "-s", p.session, "-x", "160", "-y", "48", "sh", "-c", script); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}

	// Confirm every question as it appears, one at a time: a new question
	// is one whose line differs from the last answered, or the same line
	// after the screen moved on without it.
	var answered []string
	var last, runID string
	sawAskGone := true
	deadline := time.Now().Add(10 * time.Minute)
	rid := regexp.MustCompile(`rb-[0-9]{8}T[0-9]{6}-[0-9a-f]+`)
	// The TUI's own poll of the apiserver, on the screen.
	polled := regexp.MustCompile(`apiserver: (ok|slow|not answering): /readyz`)
	var sawPoll string
	for {
		if _, err := os.Stat(exitFile); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the TUI did not finish within 10 minutes; answered %d questions; the screen:\n%s", len(answered), p.screen())
		}
		s := p.screen()
		if runID == "" {
			runID = rid.FindString(s)
		}
		if sawPoll == "" {
			sawPoll = polled.FindString(s)
		}
		q := strings.TrimSpace(askLine.FindString(s))
		switch {
		case q == "":
			sawAskGone = true
		case q != last || sawAskGone:
			t.Logf("question on the screen: %s", q)
			p.send("y")
			answered = append(answered, q)
			last, sawAskGone = q, false
		}
		time.Sleep(200 * time.Millisecond)
	}
	final := p.screen()
	code, err := os.ReadFile(exitFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the terminal at the end:\n%s", final)
	if strings.TrimSpace(string(code)) != "0" {
		t.Fatalf("runbook run in the TUI: exit %s; the screen:\n%s", strings.TrimSpace(string(code)), final)
	}
	if len(answered) < 3 {
		t.Errorf("answered %d questions on the screen, want one per changing step (shed, hold, lift): %q", len(answered), answered)
	}
	if runID == "" {
		runID = rid.FindString(final)
	}
	if sawPoll == "" {
		t.Errorf("the TUI never showed its own poll of the apiserver (%s); the last screen:\n%s", polled, final)
	} else {
		t.Logf("the TUI's poll on the screen: %s", sawPoll)
	}
	if runID == "" {
		t.Fatalf("no run ID on the screen:\n%s", final)
	}

	// The end state, from the real apiserver, the nodes and etcd.
	hctx, hcancel := context.WithTimeout(ctx, time.Minute)
	defer hcancel()
	if pr, err := l.WaitHealthy(hctx, 30*time.Second); err != nil {
		t.Errorf("after the TUI run, the oncall user: %v", err)
	} else {
		t.Logf("oncall after the TUI run: %s", pr)
	}
	for w, n := range r.agents(t) {
		if n > 0 {
			t.Errorf("%s still runs %d telemetry agent process(es)", w, n)
		}
	}
	if recovered := r.nodesAndEtcd(t); strings.Contains(recovered, " active ") {
		t.Errorf("a shed is still active after the runbook:\n%s", recovered)
	}

	r.undoOverloadRun(t, runID, before)
}

// shq quotes s for sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
