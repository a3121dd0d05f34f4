package main

import (
	"context"
	"fmt"
	"strings"
	"time"

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

// runTUI runs start (a run of rb with params) under the bubbletea TUI:
// the engine's events and questions go to the model instead of the
// printer, and the model polls the apiserver's health (healthProbe).
// Ctrl-C pressed twice cancels the run's context; the step in progress
// stops as a cancelled command does and the journal stays consistent
// (resume or undo it later). The poll's probe in flight and its timer
// end with that context too, which is cancelled when the TUI returns.
func runTUI(ctx context.Context, d *Deps, r *runbookEngine, rb *runbook.Runbook, params map[string]string, start func(ctx context.Context) error) error {
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
	model := tui.New(rb.Name, steps, run, cancel).WithUndo(undo).WithHealth(healthProbe(ctx, r, rb, params))
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

// healthPath is what the TUI's poll asks: cheap, and answered to any
// client that may ask anything (system:public-info-viewer), unlike the
// LIST a runbook's check may make under an overload.
const healthPath = "/readyz"

// healthProbe is the TUI's own poll of the apiserver: the runbook's
// apiserver check's request (the same client and credentials: the
// kubeconfig the runbook's apiserver checks name, else the check's
// default), made once to healthPath within tui.DefaultProbeTimeout. With
// no apiserver to ask (no kubeconfig, none found, no apiserver.url in the
// inventory) it has no probe, and the reason: the TUI shows "not
// configured" and polls nothing.
func healthProbe(ctx context.Context, r *runbookEngine, rb *runbook.Runbook, params map[string]string) tui.Health {
	kubeconfig := ""
	if resolved, err := rb.ResolveParams(params); err == nil {
		kubeconfig = rb.APIServerKubeconfig(resolved)
	}
	check, err := runbook.APIServerProbe(ctx, r.Session, kubeconfig, healthPath, tui.DefaultProbeTimeout)
	if err != nil {
		reason, _, _ := strings.Cut(err.Error(), "\n")
		return tui.Health{Reason: reason}
	}
	return tui.Health{What: healthPath, Timeout: tui.DefaultProbeTimeout, Context: ctx, Probe: func(ctx context.Context) tui.ProbeResult {
		start := time.Now()
		ok, detail, err := check(ctx)
		res := tui.ProbeResult{OK: ok && err == nil, Latency: time.Since(start)}
		if err != nil {
			detail = err.Error()
		}
		if !res.OK {
			// One request: the check's "request 1 of 1: " says nothing.
			res.Detail = strings.TrimPrefix(detail, "request 1 of 1: ")
		}
		return res
	}}
}
