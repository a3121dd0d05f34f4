package tui

import (
	"fmt"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/exp/teatest"
)

var pickItems = []PickItem{
	{Name: "apiserver-overload", Summary: "a workload floods the apiservers", Text: "The December 2024 recovery.",
		Params: []PickParam{{Name: "daemonset", Type: "string", Required: true, Description: "the offending DaemonSet"}, {Name: "ttl", Type: "duration", Default: "15m"}}},
	{Name: "priority-preemption-cascade", Summary: "a PriorityClass preempts production", Params: nil},
}

// The picker lists the runbooks with their descriptions; enter chooses
// one, a required parameter is asked for until given, a default is kept
// (and not passed), and the last enter ends it with the choice.
func TestPickerChoosesARunbookAndItsParameters(t *testing.T) {
	tm := teatest.NewTestModel(t, NewPicker(pickItems), teatest.WithInitialTermSize(100, 30))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return contains("apiserver-overload")(b) && contains("a PriorityClass preempts production")(b)
	}, teatest.WithDuration(5*time.Second))
	tm.Send(tea.KeyMsg{Type: tea.KeyEnter})
	teatest.WaitFor(t, tm.Output(), contains("daemonset (string):"), teatest.WithDuration(5*time.Second))
	tm.Send(tea.KeyMsg{Type: tea.KeyEnter})
	teatest.WaitFor(t, tm.Output(), contains("daemonset is required"), teatest.WithDuration(5*time.Second))
	tm.Send(keyRunes("telemetry/agent"))
	tm.Send(tea.KeyMsg{Type: tea.KeyEnter})
	teatest.WaitFor(t, tm.Output(), contains("ttl (duration):"), teatest.WithDuration(5*time.Second))
	tm.Send(tea.KeyMsg{Type: tea.KeyEnter})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Picker)
	name, params, ok := fm.Chosen()
	if !ok || name != "apiserver-overload" || fmt.Sprint(params) != "map[daemonset:telemetry/agent]" {
		t.Errorf("chosen %q %v %v", name, params, ok)
	}
}

// Down and enter chooses the second; q leaves with no choice.
func TestPickerMovesAndQuits(t *testing.T) {
	tm := teatest.NewTestModel(t, NewPicker(pickItems), teatest.WithInitialTermSize(100, 30))
	teatest.WaitFor(t, tm.Output(), contains("priority-preemption-cascade"), teatest.WithDuration(5*time.Second))
	tm.Send(tea.KeyMsg{Type: tea.KeyDown})
	tm.Send(tea.KeyMsg{Type: tea.KeyEnter})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Picker)
	if name, _, ok := fm.Chosen(); !ok || name != "priority-preemption-cascade" {
		t.Errorf("chosen %q %v", name, ok)
	}

	tm = teatest.NewTestModel(t, NewPicker(pickItems), teatest.WithInitialTermSize(100, 30))
	teatest.WaitFor(t, tm.Output(), contains("apiserver-overload"), teatest.WithDuration(5*time.Second))
	tm.Send(keyRunes("q"))
	fm = tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Picker)
	if _, _, ok := fm.Chosen(); ok {
		t.Error("q chose a runbook")
	}
}
