// Package tui is the terminal UI of a runbook run: a bubbletea model that
// renders the run's event stream (the steps with their status, the current
// step's plan, per-node progress, checks, a log) and puts the engine's
// questions to the operator. It has no logic of its own: the run is a
// tea.Cmd that calls into recover/runbook, and everything shown comes
// from the events it emits.
package tui

import (
	"fmt"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/breakglass/breakglass/recover/change"
)

// EventMsg carries one event of the run to the model.
type EventMsg struct{ Event change.Event }

// ConfirmMsg is a question of the engine (a step's plan, a confirm step).
// The model answers on Reply: true for yes.
type ConfirmMsg struct {
	Question string
	Reply    chan<- bool
}

// DoneMsg says the run returned.
type DoneMsg struct{ Err error }

// Step is a runbook step as the model lists it before the run starts.
type Step struct {
	ID, Type, Title string
}

type stepRow struct {
	Step
	status  string
	changes []string
	detail  string
}

// Model is the run's screen.
type Model struct {
	runbook string
	runID   string
	steps   []stepRow
	current int // index in steps, -1 before the first
	plan    []string
	log     []string
	done    int
	total   int
	health  string
	ask     *ConfirmMsg
	// abortAsked: Ctrl-C was pressed once; a second press aborts.
	abortAsked bool
	aborting   bool
	help       bool
	finished   bool
	status     string
	err        error
	width      int
	height     int

	run   tea.Cmd
	abort func()
}

// New returns the model of a run of runbook with these steps. run starts
// the run (a tea.Cmd that returns DoneMsg); abort cancels its context.
func New(runbook string, steps []Step, run tea.Cmd, abort func()) Model {
	m := Model{runbook: runbook, current: -1, run: run, abort: abort, width: 100, height: 30}
	for _, s := range steps {
		m.steps = append(m.steps, stepRow{Step: s, status: "pending"})
	}
	return m
}

// Init starts the run.
func (m Model) Init() tea.Cmd { return m.run }

// Finished reports whether the run returned, and its error.
func (m Model) Finished() (bool, error) { return m.finished, m.err }

// Status is each step's status, in order ("shed=applied").
func (m Model) Status() []string {
	var out []string
	for _, s := range m.steps {
		out = append(out, s.ID+"="+s.status)
	}
	return out
}

const logLines = 8

func (m Model) logf(format string, a ...any) Model {
	m.log = append(m.log, fmt.Sprintf(format, a...))
	if len(m.log) > 200 {
		m.log = m.log[len(m.log)-200:]
	}
	return m
}

// Update handles keys, questions, and the run's events.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyMsg:
		return m.key(msg)
	case ConfirmMsg:
		m.ask = &msg
	case EventMsg:
		m = m.event(msg.Event)
	case DoneMsg:
		m.finished, m.err = true, msg.Err
		if m.ask != nil {
			m.ask.Reply <- false
			m.ask = nil
		}
		return m, tea.Quit
	}
	return m, nil
}

func (m Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	switch k.String() {
	case "ctrl+c":
		if m.abortAsked || m.finished {
			m.aborting = true
			if m.ask != nil {
				m.ask.Reply <- false
				m.ask = nil
			}
			if m.abort != nil {
				m.abort()
			}
			m = m.logf("aborting: the step in progress stops safely; the journal says what was done (runbook resume, runbook undo)")
			return m, nil
		}
		m.abortAsked = true
		m = m.logf("press Ctrl-C again to abort the run, any other key to go on")
		return m, nil
	case "y", "Y":
		if m.ask != nil {
			m.ask.Reply <- true
			m = m.logf("yes: %s", m.ask.Question)
			m.ask = nil
		}
	case "n", "N", "s":
		if m.ask != nil {
			m.ask.Reply <- false
			m = m.logf("no: %s", m.ask.Question)
			m.ask = nil
		}
	case "?":
		m.help = !m.help
	case "q":
		if m.finished {
			return m, tea.Quit
		}
	}
	m.abortAsked = false
	return m, nil
}

func (m Model) step(index int) int {
	if index >= 1 && index <= len(m.steps) {
		return index - 1
	}
	return -1
}

func (m Model) event(ev change.Event) Model {
	switch ev := ev.(type) {
	case change.RunStarted:
		m.runID = ev.RunID
		what := "run"
		if ev.DryRun {
			what = "dry run"
		} else if ev.Resumed {
			what = "resumed run"
		}
		m = m.logf("%s %s of %s", what, ev.RunID, ev.Runbook)
	case change.StepStarted:
		if i := m.step(ev.Index); i >= 0 {
			m.current = i
			m.steps[i].status = "running"
		}
		m.plan, m.done, m.total = nil, 0, 0
	case change.PlanReady:
		m.plan = nil
		for _, it := range ev.Plan.Items {
			m.plan = append(m.plan, it.Summary)
			for _, l := range strings.Split(strings.TrimRight(it.Diff, "\n"), "\n") {
				if l != "" {
					m.plan = append(m.plan, "  "+l)
				}
			}
		}
		for _, n := range ev.Plan.Notes {
			m.plan = append(m.plan, "note: "+n)
		}
		m.total = len(ev.Plan.Items)
		if len(ev.Plan.Items) == 0 {
			m.plan = append(m.plan, "nothing to change")
		}
	case change.Progress:
		m.done, m.total = ev.Done, ev.Total
	case change.ItemApplied:
		m.done++
		m = m.logf("%s: done %s", ev.Item.Summary, ev.Item.Result)
	case change.ItemFailed:
		m.done++
		m = m.logf("%s: failed: %v", ev.Item.Target.Node, ev.Err)
	case change.StepCheck:
		state := "not yet"
		if ev.OK {
			state = "ok"
		}
		if ev.Check == "apiserver" {
			m.health = state + ": " + ev.Detail
		}
		if i := m.step(ev.Index); i >= 0 {
			m.steps[i].detail = ev.Check + " " + state
		}
		m = m.logf("check %s: %s: %s", ev.Check, state, ev.Detail)
	case change.StepNote:
		m = m.logf("note: %s", ev.Text)
	case change.StepFinished:
		if i := m.step(ev.Index); i >= 0 {
			m.steps[i].status, m.steps[i].changes = ev.Status, ev.Changes
		}
		if ev.Err != nil {
			m = m.logf("step %d %s failed: %v", ev.Index, ev.ID, ev.Err)
		}
	case change.RunFinished:
		m.status = ev.Status
		line := fmt.Sprintf("run %s: %s in %s", ev.RunID, ev.Status, ev.Elapsed.Round(100*time.Millisecond))
		if ev.Healthy > 0 {
			line += fmt.Sprintf("; apiserver healthy after %s", ev.Healthy.Round(100*time.Millisecond))
		}
		m = m.logf("%s", line)
	}
	return m
}

var (
	titleStyle = lipgloss.NewStyle().Bold(true)
	boxStyle   = lipgloss.NewStyle().Border(lipgloss.NormalBorder()).Padding(0, 1)
	askStyle   = lipgloss.NewStyle().Bold(true).Reverse(true)
	statusMark = map[string]string{"pending": " ", "running": ">", "applied": "✓", "unchanged": "=", "planned": "~", "done": "✓",
		"skipped": "-", "deferred": "?", "failed": "✗"}
)

// View renders the screen.
func (m Model) View() string {
	var b strings.Builder
	head := "runbook " + m.runbook
	if m.runID != "" {
		head += "  " + m.runID
	}
	b.WriteString(titleStyle.Render(head) + "\n")
	if m.health != "" {
		b.WriteString("apiserver: " + m.health + "\n")
	}
	w := max(m.width-4, 20)
	var steps strings.Builder
	for i, s := range m.steps {
		title := s.Title
		if title == "" {
			title = s.ID
		}
		line := fmt.Sprintf("%s %d %-10s %-16s %s", statusMark[s.status], i+1, s.status, s.Type, title)
		if s.detail != "" {
			line += "  (" + s.detail + ")"
		}
		steps.WriteString(truncate(line, w) + "\n")
	}
	b.WriteString(boxStyle.Width(w).Render(strings.TrimRight(steps.String(), "\n")) + "\n")
	if m.current >= 0 && (len(m.plan) > 0 || m.total > 0) {
		var plan strings.Builder
		plan.WriteString(fmt.Sprintf("step %d plan", m.current+1))
		if m.total > 0 {
			plan.WriteString("  " + progressBar(m.done, m.total, 30))
		}
		plan.WriteString("\n")
		room := max(m.height-len(m.steps)-logLines-12, 3)
		for i, l := range m.plan {
			if i == room {
				plan.WriteString(fmt.Sprintf("... %d more lines\n", len(m.plan)-room))
				break
			}
			plan.WriteString(truncate(l, w) + "\n")
		}
		b.WriteString(boxStyle.Width(w).Render(strings.TrimRight(plan.String(), "\n")) + "\n")
	}
	logs := m.log
	if len(logs) > logLines {
		logs = logs[len(logs)-logLines:]
	}
	for _, l := range logs {
		b.WriteString(truncate(l, w+4) + "\n")
	}
	switch {
	case m.ask != nil:
		b.WriteString(askStyle.Render(m.ask.Question+"? [y/n]") + "\n")
	case m.finished:
		b.WriteString("finished: " + m.status + "  (q to quit)\n")
	}
	if m.help {
		b.WriteString("keys: y yes, n or s no (the step is refused and the run stops), Ctrl-C twice abort (resume or undo later), ? help, q quit when finished\n")
	} else {
		b.WriteString("? help\n")
	}
	return b.String()
}

func truncate(s string, n int) string {
	if n <= 1 || lipgloss.Width(s) <= n {
		return s
	}
	r := []rune(s)
	if len(r) > n-1 {
		r = r[:n-1]
	}
	return string(r) + "…"
}

func progressBar(done, total, width int) string {
	if total <= 0 {
		return ""
	}
	filled := width * min(done, total) / total
	return fmt.Sprintf("[%s%s] %d/%d", strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, total)
}
