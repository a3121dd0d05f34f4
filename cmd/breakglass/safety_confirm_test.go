package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// promptWriter records what confirm prints and says when the question is
// out, so that the test cancels while confirm waits for an answer.
type promptWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	once  sync.Once
	asked chan struct{}
}

func newPromptWriter() *promptWriter { return &promptWriter{asked: make(chan struct{})} }

func (w *promptWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	w.once.Do(func() { close(w.asked) })
	return n, err
}

func (w *promptWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// ttyDeps is Deps whose stdin counts as a terminal: a pipe that the test
// writes the answer into, or never writes at all.
func ttyDeps(t *testing.T) (*Deps, *os.File, *promptWriter) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(); r.Close() })
	d := testDeps()
	d.InIsTTY = true
	d.In = r
	pw := newPromptWriter()
	d.ErrOut = pw
	return d, w, pw
}

// The first Ctrl-C at a prompt ends it: the read of the answer blocks, but
// confirm returns when the context is cancelled, with the signal as the
// cause (exit 130), on a line of its own.
func TestConfirmCtrlC(t *testing.T) {
	d, _, errOut := ttyDeps(t) // nobody ever answers
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- confirm(ctx, d, "delete it?") }()

	<-errOut.asked
	cancel(&signalError{os.Interrupt})
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("confirm still waits for an answer after SIGINT")
	}
	if code := exitCode(err, ctx); code != 130 {
		t.Errorf("exit code %d, want 130 (err %v)", code, err)
	}
	if got := errOut.String(); got != "delete it? [y/N] \n" {
		t.Errorf("stderr %q: want the question, then a newline", got)
	}
	var report bytes.Buffer
	reportError(&report, err, ctx)
	if got := report.String(); got != "breakglass: cancelled (interrupted by SIGINT)\n" {
		t.Errorf("report %q", got)
	}

	// Already cancelled: no question at all.
	d, _, errOut = ttyDeps(t)
	if err := confirm(ctx, d, "delete it?"); exitCode(err, ctx) != 130 || errOut.String() != "" {
		t.Errorf("cancelled before asking: exit %d, stderr %q", exitCode(err, ctx), errOut.String())
	}

	// A context that ends without a signal is an error, not a cancellation.
	plain, stop := context.WithCancel(context.Background())
	d, _, errOut = ttyDeps(t)
	go func() { <-errOut.asked; stop() }()
	if err := confirm(plain, d, "delete it?"); err == nil || exitCode(err, plain) != 1 {
		t.Errorf("context done without a signal: err %v, exit %d, want 1", err, exitCode(err, plain))
	}
}

// Answers still work through the goroutine: y confirms, n (or nothing)
// refuses with exit 4.
func TestConfirmAnswers(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		answer string
		want   int
	}{
		{"y\n", 0}, {"yes\n", 0}, {"Y\n", 0}, {"n\n", 4}, {"\n", 4}, {"maybe\n", 4},
	} {
		d, w, _ := ttyDeps(t)
		if _, err := w.WriteString(tt.answer); err != nil {
			t.Fatal(err)
		}
		err := confirm(ctx, d, "delete it?")
		if code := exitCode(err, ctx); code != tt.want {
			t.Errorf("answer %q: exit %d, want %d (err %v)", tt.answer, code, tt.want, err)
		}
		if tt.want == 4 && (err == nil || !strings.Contains(err.Error(), "not confirmed")) {
			t.Errorf("answer %q: err %v", tt.answer, err)
		}
	}
	// stdin closed without an answer: refused.
	d, w, _ := ttyDeps(t)
	w.Close()
	if err := confirm(ctx, d, "delete it?"); exitCode(err, ctx) != 4 {
		t.Errorf("EOF: err %v, want a refusal", err)
	}
}

// The real binary in a real terminal: Ctrl-C typed at the confirmation
// prompt ends the command at once with exit 130, and nothing is written.
// tmux gives the binary a terminal and delivers Ctrl-C the way a user's
// terminal does (the line discipline sends SIGINT to the foreground group).
func TestBinaryCtrlCAtPrompt(t *testing.T) {
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("tmux not installed")
	}
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "web", 3)
	key := "/registry/deployments/shop/web"
	orig := e.value(t, key)

	bin := breakglassBinary(t)
	dir := t.TempDir()
	// A server of our own on its own socket: nothing else's tmux is touched.
	sock := filepath.Join(dir, "tmux.sock")
	tm := func(args ...string) string {
		out, err := exec.Command(tmux, append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	// The shell is in the terminal's foreground group too: it must outlive
	// Ctrl-C to report the exit code (a trap, unlike ignoring the signal,
	// is not inherited by the binary).
	script := fmt.Sprintf("trap : INT; env -i PATH=%q HOME=%q XDG_STATE_HOME=%q TERM=screen %q scale deployment shop/web --replicas 0 --endpoints %q --journal %q; echo \"exit=$?\"; sleep 600",
		os.Getenv("PATH"), dir, dir, bin, e.srv.Endpoint, filepath.Join(dir, "journal.jsonl"))
	tm("-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "50", "sh", "-c", script)
	t.Cleanup(func() { exec.Command(tmux, "-S", sock, "kill-server").Run() })

	waitFor := func(what string, ok func(pane string) bool) string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			pane := tm("capture-pane", "-p", "-J")
			if ok(pane) {
				return pane
			}
			if time.Now().After(deadline) {
				t.Fatalf("waited for %s; the terminal shows:\n%s", what, pane)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("the prompt", func(p string) bool { return strings.Contains(p, "[y/N]") })
	tm("send-keys", "C-c")
	pane := waitFor("the command to end after one Ctrl-C", func(p string) bool { return strings.Contains(p, "exit=") })

	if !strings.Contains(pane, "exit=130") {
		t.Errorf("want exit 130; the terminal shows:\n%s", pane)
	}
	if !strings.Contains(pane, "\nbreakglass: cancelled (interrupted by SIGINT)\n") {
		t.Errorf("the cancellation is not on a line of its own; the terminal shows:\n%s", pane)
	}
	if !bytes.Equal(e.value(t, key), orig) {
		t.Error("the deployment changed although the prompt was cancelled")
	}
}
