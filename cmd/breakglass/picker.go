package main

import (
	"strings"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/recover/runbook"
	"github.com/breakglass/breakglass/recover/tui"
)

// runPicker is breakglass with no arguments in a terminal (useTUI): it
// offers the built-in runbooks, asks for the chosen one's parameters, and
// then runs it exactly as "breakglass runbook run NAME --param ..." does
// (the same command, its flags at their defaults, the global flags as
// given: --dry-run rehearses it). Leaving the picker runs nothing.
func runPicker(cmd *cobra.Command, d *Deps) error {
	var items []tui.PickItem
	for _, name := range runbook.Builtins() {
		rb, err := runbook.Builtin(name)
		if err != nil {
			return err
		}
		it := tui.PickItem{Name: rb.Name, Summary: firstLineOf(strings.TrimSpace(rb.Description)), Text: rb.Description}
		for _, p := range rb.Parameters {
			it.Params = append(it.Params, tui.PickParam{Name: p.Name, Type: p.Type, Default: p.Default, Description: p.Description, Required: p.Required})
		}
		items = append(items, it)
	}
	final, err := tea.NewProgram(tui.NewPicker(items), tea.WithInput(d.In), tea.WithOutput(d.Out), tea.WithContext(cmd.Context())).Run()
	if err != nil {
		return err
	}
	name, params, ok := final.(tui.Picker).Chosen()
	if !ok {
		return nil
	}
	run, _, err := cmd.Root().Find([]string{"runbook", "run"})
	if err != nil {
		return err
	}
	var flags []string
	for k, v := range params {
		flags = append(flags, "--param", k+"="+v)
	}
	if err := run.ParseFlags(flags); err != nil {
		return err
	}
	run.SetContext(cmd.Context())
	return run.RunE(run, []string{name})
}
