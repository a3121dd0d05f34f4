package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/breakglass/breakglass/recover/change"
)

// runbookPrinter prints a run's events: plain progress lines on stderr
// (the change events of each step too), or, with -o json, one JSON line
// per event on stdout (the change events as the commands print them).
// The end of the run is a line on stdout in both.
type runbookPrinter struct {
	d    *Deps
	json bool
	// ep prints each step's change events; in text it writes to stderr.
	ep *eventPrinter
	w  io.Writer
	// end gets the text line that ends the run: stdout, except for
	// runbook plan, whose stdout may be the plan itself (-o -).
	end io.Writer
}

func newRunbookPrinter(d *Deps) *runbookPrinter {
	rp := &runbookPrinter{d: d, json: d.Global.Output == "json", w: d.ErrOut, end: d.Out}
	if rp.json {
		rp.ep = &eventPrinter{d: d, p: newPrinter(d.Out, "json")}
	} else {
		// The steps' change lines are progress here: stderr.
		pd := &Deps{Out: d.ErrOut, ErrOut: d.ErrOut, Global: d.Global, InIsTTY: d.InIsTTY, EtcdFlags: d.EtcdFlags}
		rp.ep = &eventPrinter{d: pd, p: newPrinter(d.ErrOut, "table")}
	}
	return rp
}

// The JSON wire structs of the run's events (docs/json-output.md).
type runStartedWire struct {
	Type     string    `json:"type"` // runStarted
	RunID    string    `json:"runId"`
	Runbook  string    `json:"runbook"`
	Operator string    `json:"operator,omitempty"`
	Steps    int       `json:"steps"`
	DryRun   bool      `json:"dryRun,omitempty"`
	Resumed  bool      `json:"resumed,omitempty"`
	Done     int       `json:"done,omitempty"`
	Time     time.Time `json:"time"`
}

type stepStartedWire struct {
	Type  string `json:"type"` // stepStarted
	RunID string `json:"runId"`
	Step  int    `json:"step"`
	ID    string `json:"id"`
	Kind  string `json:"stepType"`
	Title string `json:"title"`
}

type stepCheckWire struct {
	Type   string `json:"type"` // stepCheck
	RunID  string `json:"runId"`
	Step   int    `json:"step"`
	ID     string `json:"id"`
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

type stepNoteWire struct {
	Type  string `json:"type"` // stepNote
	RunID string `json:"runId"`
	Step  int    `json:"step"`
	ID    string `json:"id"`
	Text  string `json:"text"`
}

type stepFinishedWire struct {
	Type      string            `json:"type"` // stepFinished
	RunID     string            `json:"runId"`
	Step      int               `json:"step"`
	ID        string            `json:"id"`
	Kind      string            `json:"stepType"`
	Status    string            `json:"status"`
	Changes   []string          `json:"changes,omitempty"`
	Result    map[string]string `json:"result,omitempty"`
	Error     string            `json:"error,omitempty"`
	ElapsedMS int64             `json:"elapsedMs"`
}

type runFinishedWire struct {
	Type      string `json:"type"` // runFinished
	RunID     string `json:"runId"`
	Runbook   string `json:"runbook"`
	Status    string `json:"status"`
	Error     string `json:"error,omitempty"`
	ElapsedMS int64  `json:"elapsedMs"`
	// HealthyMS is how long after the start the apiserver first answered
	// within its SLO (absent when no check of it passed).
	HealthyMS int64  `json:"healthyMs,omitempty"`
	Undo      string `json:"undo,omitempty"`
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (rp *runbookPrinter) print(ev change.Event) {
	w := rp.w
	switch ev := ev.(type) {
	case change.RunStarted:
		if rp.json {
			printJSON(rp.d.Out, runStartedWire{Type: "runStarted", RunID: ev.RunID, Runbook: ev.Runbook, Operator: ev.Operator, Steps: ev.Steps,
				DryRun: ev.DryRun, Resumed: ev.Resumed, Done: ev.Done, Time: ev.Time.UTC()})
			return
		}
		what := "run"
		switch {
		case ev.DryRun:
			what = "dry run (nothing is changed)"
		case ev.Resumed:
			what = fmt.Sprintf("resumed run (%d step%s done before)", ev.Done, plural(ev.Done))
		}
		fmt.Fprintf(w, "runbook %s: %s %s, %d step%s\n", ev.Runbook, what, ev.RunID, ev.Steps, plural(ev.Steps))
	case change.StepStarted:
		if rp.json {
			printJSON(rp.d.Out, stepStartedWire{Type: "stepStarted", RunID: ev.RunID, Step: ev.Index, ID: ev.ID, Kind: ev.Type, Title: ev.Title})
			return
		}
		fmt.Fprintf(w, "step %d %s (%s): %s\n", ev.Index, ev.ID, ev.Type, ev.Title)
	case change.StepCheck:
		if rp.json {
			printJSON(rp.d.Out, stepCheckWire{Type: "stepCheck", RunID: ev.RunID, Step: ev.Index, ID: ev.ID, Check: ev.Check, OK: ev.OK, Detail: ev.Detail})
			return
		}
		state := "not yet"
		if ev.OK {
			state = "ok"
		}
		fmt.Fprintf(w, "  check %s: %s: %s\n", ev.Check, state, ev.Detail)
	case change.StepNote:
		if rp.json {
			printJSON(rp.d.Out, stepNoteWire{Type: "stepNote", RunID: ev.RunID, Step: ev.Index, ID: ev.ID, Text: ev.Text})
			return
		}
		fmt.Fprintf(w, "  note: %s\n", ev.Text)
	case change.StepFinished:
		if rp.json {
			printJSON(rp.d.Out, stepFinishedWire{Type: "stepFinished", RunID: ev.RunID, Step: ev.Index, ID: ev.ID, Kind: ev.Type, Status: ev.Status,
				Changes: ev.Changes, Result: ev.Result, Error: errText(ev.Err), ElapsedMS: ms(ev.Elapsed)})
			return
		}
		line := fmt.Sprintf("step %d %s: %s in %s", ev.Index, ev.ID, ev.Status, shortDuration(ev.Elapsed))
		if len(ev.Changes) > 0 {
			line += fmt.Sprintf(" (change %v)", ev.Changes)
		}
		if ev.Err != nil {
			line += ": " + firstLineOf(ev.Err.Error())
		}
		fmt.Fprintln(w, line)
	case change.RunFinished:
		undo := ""
		if ev.RunID != change.DryRunID && !strings.HasPrefix(ev.Status, "undo") {
			undo = "breakglass runbook undo " + ev.RunID
		}
		if rp.json {
			printJSON(rp.d.Out, runFinishedWire{Type: "runFinished", RunID: ev.RunID, Runbook: ev.Runbook, Status: ev.Status, Error: errText(ev.Err),
				ElapsedMS: ms(ev.Elapsed), HealthyMS: ms(ev.Healthy), Undo: undo})
			return
		}
		line := fmt.Sprintf("run %s (%s): %s", ev.RunID, ev.Runbook, ev.Status)
		if ev.Elapsed > 0 {
			line += " in " + shortDuration(ev.Elapsed)
		}
		if ev.Healthy > 0 {
			line += "; apiserver healthy after " + shortDuration(ev.Healthy)
		}
		if undo != "" {
			line += "; undo: " + undo
			if ev.Status == "cancelled" || ev.Status == "failed" {
				line += "; resume: breakglass runbook resume " + ev.RunID
			}
		}
		fmt.Fprintln(rp.end, line)
	default:
		rp.ep.print(ev)
	}
}
