package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/lab"
)

// noLabChanges makes lab up and lab down fail the test instead of acting:
// lab down removes every lab on the machine whatever --dir says, and these
// tests may run beside a live lab. The plan is the real one (it only reads).
func noLabChanges(t *testing.T) {
	t.Helper()
	up, down := labUp, labDown
	t.Cleanup(func() { labUp, labDown = up, down })
	labUp = func(context.Context, lab.Options) (*lab.Lab, error) {
		t.Error("lab up ran")
		return nil, os.ErrPermission
	}
	labDown = func(context.Context, string, io.Writer) error {
		t.Error("lab down removed things")
		return os.ErrPermission
	}
}

// fakeLabDir is a lab directory as lab up leaves it (lab.json, hosts/,
// logs/) with a marker file, in a temporary directory.
func fakeLabDir(t *testing.T) (dir, marker string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "lab")
	for _, sub := range []string{"hosts", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeTestFile(t, filepath.Join(dir, lab.StateFile), `{"dir":"`+dir+`"}`)
	marker = filepath.Join(dir, "logs", "marker")
	writeTestFile(t, marker, "still here")
	return dir, marker
}

func TestLabDownDryRun(t *testing.T) {
	noLabChanges(t)
	dir, marker := fakeLabDir(t)

	code, out, errOut := run(t, testDeps(), "lab", "down", "--dry-run", "--dir", dir)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "lab down would remove:\n") || !strings.Contains(out, "\n  dir "+dir+"\n") || !strings.Contains(out, "(dry run, nothing removed)") {
		t.Errorf("no plan naming the lab directory:\n%s", out)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the lab directory was touched: %v", err)
	}

	code, out, errOut = run(t, testDeps(), "lab", "down", "--dry-run", "--dir", dir, "-o", "json")
	var w labDownPlanWire
	if code != 0 || json.Unmarshal([]byte(out), &w) != nil || w.Type != "labDownPlan" || !w.DryRun || !slices.Contains(w.Remove, "dir "+dir) {
		t.Errorf("json: exit %d, %q (stderr %q)", code, out, errOut)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the lab directory was touched: %v", err)
	}

	// A directory that is not a lab is not in the plan (Down leaves it too).
	plain := t.TempDir()
	code, out, _ = run(t, testDeps(), "lab", "down", "--dry-run", "--dir", plain)
	if code != 0 || strings.Contains(out, "dir "+plain) {
		t.Errorf("plain directory: exit %d\n%s", code, out)
	}
}

// The lab commands that do not support --dry-run refuse it (exit 2, naming
// the flag) rather than act.
func TestLabDryRunRefused(t *testing.T) {
	noLabChanges(t)
	dir, marker := fakeLabDir(t)
	// A cache directory that cannot be made: if build ever ignored the
	// refusal, it would fail at once instead of building Kubernetes.
	notADir := filepath.Join(t.TempDir(), "file")
	writeTestFile(t, notADir, "")
	for _, args := range [][]string{
		{"lab", "up", "--dry-run", "--dir", dir},
		// No lab.json here: if incident ever ignored the refusal, it would
		// fail at once instead of reaching a cluster.
		{"lab", "incident", "overload", "--dry-run", "--dir", t.TempDir()},
		{"lab", "build", "--dry-run", "--cache-dir", filepath.Join(notADir, "cache")},
	} {
		code, out, errOut := run(t, testDeps(), args...)
		if code != 2 || !strings.Contains(errOut, "--dry-run is not supported by lab "+args[1]) || !strings.Contains(errOut, "run it without --dry-run") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 naming --dry-run", args, code, out, errOut)
		}
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the lab directory was touched: %v", err)
	}
}
