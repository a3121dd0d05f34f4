package tui

import (
	"errors"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/exp/teatest"

	"github.com/breakglass/breakglass/recover/change"
)

func keyRunes(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }

func waitReply(t *testing.T, reply <-chan Answer) Answer {
	t.Helper()
	select {
	case a := <-reply:
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("the question was not answered")
	}
	return No
}

var skipSteps = []Step{{ID: "shed", Type: "shed-network", Title: "shed admin traffic"}, {ID: "hold", Type: "hold-pods", Title: "hold the offender", Skippable: true}}

// s skips a step that may be skipped (Skip on the reply); on a step that
// may not, it answers nothing and says why.
func TestModelSkip(t *testing.T) {
	tm := teatest.NewTestModel(t, New("x", skipSteps, nil, nil), teatest.WithInitialTermSize(120, 40))
	tm.Send(EventMsg{change.RunStarted{RunID: "rb-1", Runbook: "x", Steps: 2}})
	tm.Send(EventMsg{change.StepStarted{RunID: "rb-1", Index: 1, ID: "shed", Type: "shed-network"}})
	reply := make(chan Answer, 1)
	tm.Send(ConfirmMsg{Question: "shed port 6443 on 1 node", Reply: reply})
	teatest.WaitFor(t, tm.Output(), contains("shed port 6443 on 1 node? [y/n]"), teatest.WithDuration(5*time.Second))
	tm.Send(keyRunes("s"))
	teatest.WaitFor(t, tm.Output(), contains("this step cannot be skipped"), teatest.WithDuration(5*time.Second))
	select {
	case a := <-reply:
		t.Fatalf("s on a step that may not be skipped answered %v", a)
	default:
	}
	tm.Send(keyRunes("y"))
	if a := waitReply(t, reply); a != Yes {
		t.Fatalf("y answered %v", a)
	}
	tm.Send(EventMsg{change.StepFinished{RunID: "rb-1", Index: 1, ID: "shed", Status: change.StepApplied, Changes: []string{"c1"}}})
	tm.Send(EventMsg{change.StepStarted{RunID: "rb-1", Index: 2, ID: "hold", Type: "hold-pods"}})
	reply = make(chan Answer, 1)
	tm.Send(ConfirmMsg{Question: "hold 3 pods", Reply: reply})
	teatest.WaitFor(t, tm.Output(), contains("hold 3 pods? [y/n/s]"), teatest.WithDuration(5*time.Second))
	tm.Send(keyRunes("s"))
	if a := waitReply(t, reply); a != Skip {
		t.Fatalf("s answered %v, want Skip", a)
	}
	tm.Send(EventMsg{change.StepFinished{RunID: "rb-1", Index: 2, ID: "hold", Status: change.StepSkipped}})
	tm.Send(DoneMsg{})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
	if got := strings.Join(fm.Status(), " "); got != "shed=applied hold=skipped" {
		t.Errorf("steps: %s", got)
	}
}

// u, while the run waits at a question, undoes the last applied step
// through the undo function; the undo's own question comes over the run's
// and is answered first; the run's question is still there afterwards.
func TestModelUndoLastStep(t *testing.T) {
	undone := make(chan string, 1)
	var undoReply chan Answer
	var tm *teatest.TestModel
	undo := func(runID string, step int) error {
		undoReply = make(chan Answer, 1)
		tm.Send(EventMsg{change.RunStarted{RunID: runID, Runbook: "x", Steps: 1}})
		tm.Send(ConfirmMsg{Question: "undo change c1 (replicas 0 -> 3)", Reply: undoReply})
		if a := waitReply(t, undoReply); a != Yes {
			return errors.New("not confirmed")
		}
		tm.Send(EventMsg{change.RunFinished{RunID: runID, Status: "undone"}})
		undone <- runID + " step " + string(rune('0'+step))
		return nil
	}
	tm = teatest.NewTestModel(t, New("x", skipSteps, nil, nil).WithUndo(undo), teatest.WithInitialTermSize(120, 40))
	tm.Send(EventMsg{change.RunStarted{RunID: "rb-1", Runbook: "x", Steps: 2}})
	tm.Send(EventMsg{change.StepStarted{RunID: "rb-1", Index: 1, ID: "shed", Type: "shed-network"}})
	tm.Send(EventMsg{change.StepFinished{RunID: "rb-1", Index: 1, ID: "shed", Status: change.StepApplied, Changes: []string{"c1"}}})
	tm.Send(EventMsg{change.StepStarted{RunID: "rb-1", Index: 2, ID: "hold", Type: "hold-pods"}})
	reply := make(chan Answer, 1)
	tm.Send(ConfirmMsg{Question: "hold 3 pods", Reply: reply})
	teatest.WaitFor(t, tm.Output(), contains("hold 3 pods? [y/n/s]"), teatest.WithDuration(5*time.Second))
	tm.Send(keyRunes("u"))
	teatest.WaitFor(t, tm.Output(), contains("undo change c1 (replicas 0 -> 3)? [y/n]"), teatest.WithDuration(5*time.Second))
	tm.Send(keyRunes("y"))
	select {
	case got := <-undone:
		if got != "rb-1 step 1" {
			t.Errorf("undid %s, want rb-1 step 1", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the undo did not run")
	}
	teatest.WaitFor(t, tm.Output(), contains("step 1 shed undone"), teatest.WithDuration(5*time.Second))
	select {
	case a := <-reply:
		t.Fatalf("the run's question was answered %v by the undo", a)
	default:
	}
	tm.Send(keyRunes("n"))
	if a := waitReply(t, reply); a != No {
		t.Fatalf("n answered %v", a)
	}
	tm.Send(DoneMsg{Err: errors.New("refused")})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
	if got := strings.Join(fm.Status(), " "); got != "shed=undone hold=running" {
		t.Errorf("steps: %s", got)
	}
	if fm.status != "" {
		t.Errorf("the undo's end was taken for the run's: %q", fm.status)
	}
}

// ? toggles the full help (bubbles/help), which lists the keys that work
// now; ? again goes back to the short line.
func TestModelHelp(t *testing.T) {
	tm := teatest.NewTestModel(t, New("x", skipSteps, nil, nil), teatest.WithInitialTermSize(120, 40))
	teatest.WaitFor(t, tm.Output(), contains("? help"), teatest.WithDuration(5*time.Second))
	reply := make(chan Answer, 1)
	tm.Send(ConfirmMsg{Question: "go on", Reply: reply})
	tm.Send(keyRunes("?"))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		s := string(b)
		return strings.Contains(s, "keys:") && strings.Contains(s, "yes: go ahead") && strings.Contains(s, "twice: abort")
	}, teatest.WithDuration(5*time.Second))
	tm.Send(keyRunes("?"))
	tm.Send(keyRunes("y"))
	waitReply(t, reply)
	tm.Send(DoneMsg{})
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
	if fm.help.ShowAll {
		t.Error("? twice left the full help on")
	}
	if v := fm.View(); strings.Contains(v, "yes: go ahead") || !strings.Contains(v, "? help") {
		t.Errorf("after ? twice:\n%s", v)
	}
}
