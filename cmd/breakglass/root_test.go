package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

type codedErr struct{ code int }

func (e codedErr) Error() string { return fmt.Sprintf("coded %d", e.code) }
func (e codedErr) ExitCode() int { return e.code }

func TestExitCode(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	signalled, cancelSig := context.WithCancelCause(context.Background())
	cancelSig(&signalError{os.Interrupt})
	tests := []struct {
		name string
		err  error
		ctx  context.Context
		want int
	}{
		{"nil", nil, context.Background(), 0},
		{"plain", errors.New("boom"), context.Background(), 1},
		{"usage", usagef("bad"), context.Background(), 2},
		{"wrapped usage", fmt.Errorf("x: %w", usagef("bad")), context.Background(), 2},
		{"nodes failed", fmt.Errorf("exec: %w", codedErr{3}), context.Background(), 3},
		{"refused", &refusedError{errors.New("no")}, context.Background(), 4},
		// Only a signal is a cancellation: a context that is merely done
		// (main's own stop, a deadline) is an error like any other.
		{"canceled error", fmt.Errorf("x: %w", context.Canceled), context.Background(), 1},
		{"context cancelled without a signal", errors.New("anything"), cancelled, 1},
		{"deadline", fmt.Errorf("wait: %w", context.DeadlineExceeded), context.Background(), 1},
		{"signal", fmt.Errorf("x: %w", context.Canceled), signalled, 130},
		{"signal beats nodes failed", codedErr{3}, signalled, 130},
		{"cobra unknown flag", errors.New("unknown flag: --nope"), context.Background(), 2},
		{"cobra args", errors.New(`accepts 1 arg(s), received 0`), context.Background(), 2},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err, tt.ctx); got != tt.want {
			t.Errorf("%s: exitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}

// run executes the root command as main does and returns the exit code and
// both streams.
func run(t *testing.T, d *Deps, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	d.Out, d.ErrOut = &out, &errOut
	if d.In == nil {
		d.In = strings.NewReader("")
	}
	root := newRootCmd(d)
	root.SetArgs(args)
	ctx := context.Background()
	err := root.ExecuteContext(ctx)
	code := reportError(&errOut, err, ctx)
	return code, out.String(), errOut.String()
}

func testDeps() *Deps {
	d := newDeps()
	d.InIsTTY, d.OutIsTTY, d.ErrIsTTY = false, false, false
	return d
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"--output", "xml", "version"},
		{"--concurrency", "0", "version"},
		{"--no-such-flag", "version"},
		{"version", "extra"},
		{"no-such-command"},
		{"--timeout", "soon", "version"},
	} {
		code, _, errOut := run(t, testDeps(), args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, errOut)
		}
		if !strings.HasPrefix(errOut, "breakglass: ") {
			t.Errorf("%v: stderr %q does not start with breakglass:", args, errOut)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, testDeps(), "version")
	if code != 0 || !strings.HasPrefix(out, "breakglass ") {
		t.Fatalf("exit %d, out %q", code, out)
	}
	code, out, _ = run(t, testDeps(), "-o", "json", "version")
	if code != 0 || !strings.Contains(out, `"type":"version"`) {
		t.Fatalf("json: exit %d, out %q", code, out)
	}
}

func TestConfirm(t *testing.T) {
	d := testDeps()
	d.ErrOut = &bytes.Buffer{}
	if err := confirm(context.Background(), d, "delete it?"); exitCode(err, context.Background()) != 4 || !strings.Contains(err.Error(), "--yes") {
		t.Errorf("no terminal, no --yes: err %v, want a refusal naming --yes", err)
	}
	d.Global.Yes = true
	if err := confirm(context.Background(), d, "delete it?"); err != nil {
		t.Errorf("--yes: %v", err)
	}
	d.Global.Yes = false
	d.InIsTTY = true
	d.In = strings.NewReader("y\n")
	if err := confirm(context.Background(), d, "delete it?"); err != nil {
		t.Errorf("answered y: %v", err)
	}
	d.In = strings.NewReader("n\n")
	if err := confirm(context.Background(), d, "delete it?"); err == nil {
		t.Error("answered n: no error")
	}
}

func TestInventoryEnvAndErrors(t *testing.T) {
	dir := t.TempDir()
	bad := dir + "/bad.yaml"
	writeTestFile(t, bad, "ssh:\n  prot: 22\n")
	d := testDeps()
	t.Setenv("BREAKGLASS_INVENTORY", bad)
	root := newRootCmd(d)
	root.SetArgs([]string{"version"})
	root.SetOut(&bytes.Buffer{})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !d.Global.InventoryExplicit || d.Global.Inventory != bad {
		t.Fatalf("BREAKGLASS_INVENTORY not honoured: %+v", d.Global)
	}
	_, err := d.Inventory()
	if err == nil || !strings.Contains(err.Error(), bad+":2: ssh.prot: unknown key") {
		t.Fatalf("err = %v", err)
	}
	if exitCode(err, context.Background()) != 2 {
		t.Errorf("bad inventory exit %d, want 2", exitCode(err, context.Background()))
	}
}
