package lab

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// DownPlan names the lab directory Down would remove, resolved as Down
// resolves it, and removes nothing. (The machine-wide part of the plan,
// processes, namespaces and cgroups, is whatever this machine has: it is
// read, never changed, so this test is safe beside a live lab.)
func TestDownPlanDir(t *testing.T) {
	ctx := context.Background()
	mkLab := func(dir, stateDir string) {
		for _, sub := range []string{"hosts", "logs"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if stateDir != "" {
			if err := os.WriteFile(filepath.Join(dir, StateFile), []byte(`{"dir":"`+stateDir+`"}`), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	has := func(plan []string, s string) bool {
		for _, p := range plan {
			if p == s {
				return true
			}
		}
		return false
	}

	// A lab directory whose lab.json was lost (hosts/ and logs/ remain).
	lost := filepath.Join(t.TempDir(), "lost")
	mkLab(lost, "")
	plan, err := DownPlan(ctx, lost)
	if err != nil || !has(plan, "dir "+lost) {
		t.Errorf("lab dir without lab.json: %v %q", err, plan)
	}

	// lab.json names another directory: that one is what Down removes.
	other := filepath.Join(t.TempDir(), "other")
	mkLab(other, other)
	here := filepath.Join(t.TempDir(), "here")
	mkLab(here, other)
	plan, err = DownPlan(ctx, here)
	if err != nil || !has(plan, "dir "+other) || has(plan, "dir "+here) {
		t.Errorf("lab.json naming %s: %v %q", other, err, plan)
	}

	// A relative --dir is made absolute, as Down does.
	t.Chdir(filepath.Dir(lost))
	if plan, err := DownPlan(ctx, "lost"); err != nil || !has(plan, "dir "+lost) {
		t.Errorf("relative dir: %v %q", err, plan)
	}

	// Not a lab: not in the plan.
	plain := t.TempDir()
	if plan, err = DownPlan(ctx, plain); err != nil || has(plan, "dir "+plain) {
		t.Errorf("plain dir: %v %q", err, plan)
	}
	for _, d := range []string{lost, other, here} {
		if _, err := os.Stat(filepath.Join(d, "hosts")); err != nil {
			t.Errorf("%s was touched: %v", d, err)
		}
	}
}
