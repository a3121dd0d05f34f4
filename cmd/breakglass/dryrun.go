package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

// How each command treats the global --dry-run. One table, so that a
// command cannot be added without deciding: a test walks the command tree
// and fails on a runnable command missing here.
const (
	// dryRunReadOnly: the command changes nothing, with or without it.
	dryRunReadOnly = "read-only"
	// dryRunHonoured: the command shows what it would change and changes
	// nothing (each such command has a test that says so).
	dryRunHonoured = "honoured"
	// dryRunRefused: the command cannot show its effect without acting:
	// --dry-run is refused (exit 2) rather than ignored.
	dryRunRefused = "refused"
)

var dryRunModes = map[string]string{
	"breakglass version":                    dryRunReadOnly,
	"breakglass get":                        dryRunReadOnly,
	"breakglass count":                      dryRunReadOnly,
	"breakglass diagnose":                   dryRunReadOnly,
	"breakglass nodes list":                 dryRunReadOnly,
	"breakglass nodes check":                dryRunReadOnly,
	"breakglass lab status":                 dryRunReadOnly,
	"breakglass completion bash":            dryRunReadOnly,
	"breakglass completion zsh":             dryRunReadOnly,
	"breakglass completion fish":            dryRunReadOnly,
	"breakglass completion powershell":      dryRunReadOnly,
	"breakglass help":                       dryRunReadOnly,
	"breakglass scale":                      dryRunHonoured,
	"breakglass kubelet stop":               dryRunHonoured,
	"breakglass kubelet start":              dryRunHonoured,
	"breakglass controller-manager restore": dryRunHonoured,
	"breakglass delete":                     dryRunHonoured,
	"breakglass daemonset pause":            dryRunHonoured,
	"breakglass priorityclass neutralise":   dryRunHonoured,
	"breakglass priorityclass":              dryRunReadOnly,
	"breakglass daemonset resume":           dryRunHonoured,
	"breakglass pods stop":                  dryRunHonoured,
	"breakglass pods hold":                  dryRunHonoured,
	"breakglass pods hold lift":             dryRunHonoured,
	"breakglass pods list":                  dryRunReadOnly,
	"breakglass pods hold list":             dryRunReadOnly,
	"breakglass pods":                       dryRunReadOnly,
	"breakglass shed apply":                 dryRunHonoured,
	"breakglass shed extend":                dryRunHonoured,
	"breakglass shed lift":                  dryRunHonoured,
	"breakglass shed flowschema":            dryRunHonoured,
	"breakglass shed status":                dryRunReadOnly,
	"breakglass shed":                       dryRunReadOnly,
	"breakglass undo":                       dryRunHonoured,
	"breakglass apiserver tune":             dryRunHonoured,
	"breakglass apiserver add":              dryRunHonoured,
	"breakglass apiserver remove":           dryRunHonoured,
	"breakglass apiserver status":           dryRunReadOnly,
	"breakglass apiserver scale":            dryRunHonoured,
	"breakglass apiserver":                  dryRunReadOnly,
	"breakglass exec":                       dryRunHonoured,
	"breakglass lab down":                   dryRunHonoured,
	"breakglass lab up":                     dryRunRefused,
	"breakglass lab incident":               dryRunRefused,
	"breakglass lab build":                  dryRunRefused,
	"breakglass lab supervise":              dryRunRefused,
	"breakglass docs":                       dryRunRefused,
	"breakglass __complete":                 dryRunReadOnly,
	"breakglass __completeNoDesc":           dryRunReadOnly,
	"breakglass completion":                 dryRunReadOnly,
	"breakglass lab":                        dryRunReadOnly,
	"breakglass nodes":                      dryRunReadOnly,
	"breakglass daemonset":                  dryRunReadOnly,
	"breakglass":                            dryRunHonoured, // the picker runs a runbook as runbook run does
}

// checkDryRun refuses --dry-run for a command that would act anyway.
func checkDryRun(cmd *cobra.Command, dryRun bool) error {
	if !dryRun {
		return nil
	}
	switch dryRunModes[cmd.CommandPath()] {
	case dryRunReadOnly, dryRunHonoured:
		return nil
	case dryRunRefused:
		return usagef("--dry-run is not supported by %s: it cannot show its effect without acting; run it without --dry-run", strings.TrimPrefix(cmd.CommandPath(), "breakglass "))
	}
	return usagef("--dry-run: %s has not said whether it honours it, so it is refused", cmd.CommandPath())
}

// undecidedDryRun lists the runnable commands of the tree that are not in
// dryRunModes.
func undecidedDryRun(root *cobra.Command) []string {
	var out []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() {
			if _, ok := dryRunModes[c.CommandPath()]; !ok {
				out = append(out, fmt.Sprintf("%q", c.CommandPath()))
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	sort.Strings(out)
	return out
}
