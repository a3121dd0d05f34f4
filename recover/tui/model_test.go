package tui

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/exp/teatest"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

var testSteps = []Step{{ID: "shed", Type: "shed-network", Title: "shed admin traffic"}, {ID: "hold", Type: "hold-pods", Title: "hold the offender"}}

func contains(s string) func([]byte) bool {
	return func(b []byte) bool { return bytes.Contains(b, []byte(s)) }
}

// The model renders the run's events and puts the engine's question to the
// operator; a "y" answers it.
func TestModelRendersEventsAndConfirms(t *testing.T) {
	m := New("apiserver-overload", testSteps, nil, nil)
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(120, 40))
	plan := &change.Plan{ID: "c1", Op: "shed-apply", Items: []*change.Item{{Kind: "nft", Target: journal.Target{Node: "cp-1"}, Summary: "cp-1: shed tcp/6443 (reject)", Diff: "table inet breakglass {\n"}}}
	tm.Send(EventMsg{change.RunStarted{RunID: "rb-1", Runbook: "apiserver-overload", Steps: 2}})
	tm.Send(EventMsg{change.StepStarted{RunID: "rb-1", Index: 1, ID: "shed", Type: "shed-network", Title: "shed admin traffic"}})
	tm.Send(EventMsg{change.PlanReady{Plan: plan}})
	reply := make(chan Answer, 1)
	tm.Send(ConfirmMsg{Question: "shed port 6443 on 1 node", Reply: reply})
	teatest.WaitFor(t, tm.Output(), contains("shed port 6443 on 1 node? [y/n]"), teatest.WithDuration(5*time.Second))
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("y")})
	select {
	case a := <-reply:
		if a != Yes {
			t.Fatal("y answered no")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the question was not answered")
	}
	tm.Send(EventMsg{change.ItemApplied{Plan: plan, Item: plan.Items[0]}})
	tm.Send(EventMsg{change.StepCheck{RunID: "rb-1", Index: 1, ID: "shed", Check: "apiserver", OK: true, Detail: "5 of 5 answered 2xx"}})
	tm.Send(EventMsg{change.StepFinished{RunID: "rb-1", Index: 1, ID: "shed", Status: change.StepApplied, Changes: []string{"c1"}}})
	teatest.WaitFor(t, tm.Output(), contains("apiserver: ok: 5 of 5 answered 2xx"), teatest.WithDuration(5*time.Second))
	tm.Send(EventMsg{change.StepStarted{RunID: "rb-1", Index: 2, ID: "hold", Type: "hold-pods"}})
	tm.Send(EventMsg{change.StepFinished{RunID: "rb-1", Index: 2, ID: "hold", Status: change.StepFailed, Err: errors.New("refused")}})
	tm.Send(EventMsg{change.RunFinished{RunID: "rb-1", Status: "failed", Elapsed: 3 * time.Second}})
	tm.Send(DoneMsg{Err: errors.New("step 2 (hold): refused")})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
	if done, err := fm.Finished(); !done || err == nil {
		t.Errorf("finished %v, err %v", done, err)
	}
	if got := strings.Join(fm.Status(), " "); got != "shed=applied hold=failed" {
		t.Errorf("steps: %s", got)
	}
}

// "n" refuses; Ctrl-C asks first, and the second one aborts the run.
func TestModelRefusesAndAborts(t *testing.T) {
	aborted := make(chan struct{}, 1)
	m := New("x", testSteps, nil, func() { aborted <- struct{}{} })
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(100, 30))
	reply := make(chan Answer, 1)
	tm.Send(ConfirmMsg{Question: "pause daemonset telemetry/agent", Reply: reply})
	teatest.WaitFor(t, tm.Output(), contains("pause daemonset telemetry/agent? [y/n]"), teatest.WithDuration(5*time.Second))
	tm.Send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("n")})
	if a := <-reply; a != No {
		t.Fatal("n answered yes")
	}
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	teatest.WaitFor(t, tm.Output(), contains("press Ctrl-C again"), teatest.WithDuration(5*time.Second))
	select {
	case <-aborted:
		t.Fatal("one Ctrl-C aborted the run")
	default:
	}
	tm.Send(tea.KeyMsg{Type: tea.KeyCtrlC})
	select {
	case <-aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("the second Ctrl-C did not abort")
	}
	tm.Send(DoneMsg{Err: errors.New("cancelled")})
	tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
}

func TestModelResizes(t *testing.T) {
	m := New("x", testSteps, nil, nil)
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(100, 30))
	tm.Send(tea.WindowSizeMsg{Width: 40, Height: 20})
	tm.Send(EventMsg{change.StepStarted{Index: 1, ID: "shed", Type: "shed-network", Title: "a very long title that does not fit in forty columns at all"}})
	teatest.WaitFor(t, tm.Output(), contains("…"), teatest.WithDuration(5*time.Second))
	tm.Send(DoneMsg{})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
	if fm.width != 40 {
		t.Errorf("width %d after resize", fm.width)
	}
}
