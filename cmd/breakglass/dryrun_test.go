package main

import (
	"strings"
	"testing"
)

// Every command decides how it treats --dry-run: honoured, read-only, or
// refused. A new command that forgets would otherwise act on a dry run.
func TestEveryCommandDecidesDryRun(t *testing.T) {
	root := newRootCmd(testDeps())
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	if missing := undecidedDryRun(root); len(missing) > 0 {
		t.Errorf("commands missing from dryRunModes (decide: read-only, honoured or refused): %s", strings.Join(missing, ", "))
	}
}

func TestDryRunRefusedCommands(t *testing.T) {
	for _, args := range [][]string{
		{"docs", "--dir", t.TempDir(), "--dry-run"},
		{"lab", "supervise", "/nonexistent", "--dry-run"},
	} {
		code, _, errOut := run(t, testDeps(), args...)
		if code != 2 || !strings.Contains(errOut, "--dry-run is not supported by "+args[0]) {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
}
