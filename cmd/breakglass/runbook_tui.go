package main

import (
	"context"
	"fmt"
	"strings"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/runbook"
	"github.com/breakglass/breakglass/recover/tui"
)

// useTUI: the TUI appears only when stdin and stdout are terminals, -o json
// is not set, and a person answers the questions (no --yes).
func useTUI(d *Deps) bool {
	return d.InIsTTY && d.OutIsTTY && d.Global.Output != "json" && !d.Global.Yes
}

// runTUI runs start (a run, or a resume, of rb) under the bubbletea TUI:
// the engine's events and questions go to the model instead of the
// printer. Ctrl-C pressed twice cancels the run's context; the step in
// progress stops as a cancelled command does and the journal stays
// consistent (resume or undo it later).
func runTUI(ctx context.Context, d *Deps, r *runbookEngine, rb *runbook.Runbook, start func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var steps []tui.Step
	for i := range rb.Steps {
		s := &rb.Steps[i]
		steps = append(steps, tui.Step{ID: s.ID, Type: s.Type, Title: s.Title, Skippable: s.Skippable()})
	}
	var prog *tea.Program
	run := func() tea.Msg { return tui.DoneMsg{Err: start(ctx)} }
	// u: the same undo as runbook undo RUN-ID --step N, its plans asked
	// about through the same questions.
	undo := func(runID string, step int) error { return r.Engine.UndoStep(ctx, runID, step) }
	model := tui.New(rb.Name, steps, run, cancel).WithUndo(undo)
	prog = tea.NewProgram(model, tea.WithInput(d.In), tea.WithOutput(d.Out), tea.WithContext(ctx))
	emit := func(ev change.Event) { prog.Send(tui.EventMsg{Event: ev}) }
	ask := func(ctx context.Context, q string) error {
		reply := make(chan tui.Answer, 1)
		prog.Send(tui.ConfirmMsg{Question: strings.TrimSuffix(q, "?"), Reply: reply})
		select {
		case a := <-reply:
			switch a {
			case tui.Yes:
				return nil
			case tui.Skip:
				return runbook.ErrSkip
			}
			return &refusedError{fmt.Errorf("%s: not confirmed", q)}
		case <-ctx.Done():
			return promptCancelled(ctx, q)
		}
	}
	r.Engine.Emit, r.Session.Emit, r.Session.Ask = emit, emit, ask
	r.Engine.Confirm = func(ctx context.Context, p *change.Plan) error {
		return ask(ctx, fmt.Sprintf("%s (%s)", p.Title, shortSummary(p)))
	}
	final, err := prog.Run()
	if m, ok := final.(tui.Model); ok {
		if done, runErr := m.Finished(); done {
			return runErr
		}
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	return context.Canceled
}
