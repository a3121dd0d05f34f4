// Package tui is the terminal UI of a runbook run: a bubbletea model that
// renders the run's event stream (the steps with their status, the current
// step's plan, per-node progress, checks, a log) and puts the engine's
// questions to the operator. It has no logic of its own: the run is a
// tea.Cmd that calls into recover/runbook, and everything shown comes
// from the events it emits, except the apiserver's health, which the
// model also polls through a probe the command gives it (it dials
// nothing itself).
package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/breakglass/breakglass/recover/change"
)

// EventMsg carries one event of the run to the model.
type EventMsg struct{ Event change.Event }

// Answer is the operator's answer to a question.
type Answer int

// Answers: No refuses (the run stops there), Yes consents, Skip skips the
// step asked about (only offered for a step that may be skipped).
const (
	No Answer = iota
	Yes
	Skip
)

// ConfirmMsg is a question of the engine (a step's plan, a confirm step,
// the plan of an undo). The model answers on Reply.
type ConfirmMsg struct {
	Question string
	Reply    chan<- Answer
}

// DoneMsg says the run returned.
type DoneMsg struct{ Err error }

// UndoDoneMsg says the undo of step Step (from 1) returned.
type UndoDoneMsg struct {
	Step int
	Err  error
}

// Step is a runbook step as the model lists it before the run starts.
// Skippable says the operator may skip it at its question (its onFailure
// is continue).
type Step struct {
	ID, Type, Title string
	Skippable       bool
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
	// health is the apiserver's, polled (WithHealth) and from the checks.
	health health
	// asks are the questions waiting for an answer, the last on top: an
	// undo's questions come while the run's question waits under them.
	asks []*ConfirmMsg
	// abortAsked: Ctrl-C was pressed once; a second press aborts.
	abortAsked bool
	aborting   bool
	finished   bool
	status     string
	err        error
	width      int
	height     int
	// undoing is the step (from 1) being undone, 0 when none is; the
	// run's plan is kept aside meanwhile.
	undoing   int
	savedPlan []string
	help      help.Model

	run   tea.Cmd
	abort func()
	undo  func(runID string, step int) error
}

// New returns the model of a run of runbook with these steps. run starts
// the run (a tea.Cmd that returns DoneMsg); abort cancels its context.
func New(runbook string, steps []Step, run tea.Cmd, abort func()) Model {
	m := Model{runbook: runbook, current: -1, run: run, abort: abort, width: 100, height: 30, help: help.New(), health: newHealth(Health{})}
	for _, s := range steps {
		m.steps = append(m.steps, stepRow{Step: s, status: "pending"})
	}
	return m
}

// WithUndo lets the operator undo the last applied step while the run
// waits at a question (the u key): undo undoes step N (from 1) of the run
// as `runbook undo RUN-ID --step N` does, and its questions come as
// ConfirmMsg.
func (m Model) WithUndo(undo func(runID string, step int) error) Model {
	m.undo = undo
	return m
}

// keyMap is the model's keys, for key.Matches and the help view.
type keyMap struct {
	Yes, No, Skip, Undo, Abort, Help, Quit key.Binding
}

func (k keyMap) ShortHelp() []key.Binding {
	return []key.Binding{k.Yes, k.No, k.Skip, k.Undo, k.Abort, k.Help, k.Quit}
}

func (k keyMap) FullHelp() [][]key.Binding {
	return [][]key.Binding{{k.Yes, k.No, k.Skip}, {k.Undo, k.Abort}, {k.Help, k.Quit}}
}

// keys are the bindings, enabled as they apply now: the help shows only
// the keys that do something.
func (m Model) keys() keyMap {
	k := keyMap{
		Yes:   key.NewBinding(key.WithKeys("y", "Y"), key.WithHelp("y", "yes: go ahead")),
		No:    key.NewBinding(key.WithKeys("n", "N"), key.WithHelp("n", "no: refuse (the run stops; resume it later)")),
		Skip:  key.NewBinding(key.WithKeys("s"), key.WithHelp("s", "skip this step (journaled as skipped; onFailure: continue steps only)")),
		Undo:  key.NewBinding(key.WithKeys("u"), key.WithHelp("u", "undo the last applied step (as runbook undo --step N)")),
		Abort: key.NewBinding(key.WithKeys("ctrl+c"), key.WithHelp("ctrl+c", "twice: abort (resume or undo later)")),
		Help:  key.NewBinding(key.WithKeys("?"), key.WithHelp("?", "help")),
		Quit:  key.NewBinding(key.WithKeys("q"), key.WithHelp("q", "quit")),
	}
	asking := len(m.asks) > 0
	k.Yes.SetEnabled(asking)
	k.No.SetEnabled(asking)
	k.Skip.SetEnabled(m.canSkip())
	k.Undo.SetEnabled(m.undoTarget() > 0)
	k.Quit.SetEnabled(m.finished)
	return k
}

// canSkip: the run's own question about a step that may be skipped.
func (m Model) canSkip() bool {
	return len(m.asks) > 0 && m.undoing == 0 && m.current >= 0 && m.steps[m.current].Skippable
}

// undoTarget is the step (from 1) u would undo: the last applied step
// with changes before the current one, while the run waits at its
// question; 0 when there is none or u does not apply now.
func (m Model) undoTarget() int {
	if m.undo == nil || m.undoing != 0 || len(m.asks) == 0 || m.runID == "" {
		return 0
	}
	for i := len(m.steps) - 1; i >= 0; i-- {
		if i == m.current {
			continue
		}
		if s := m.steps[i]; s.status == "applied" && len(s.changes) > 0 {
			return i + 1
		}
	}
	return 0
}

func (m Model) top() *ConfirmMsg {
	if len(m.asks) == 0 {
		return nil
	}
	return m.asks[len(m.asks)-1]
}

// answer replies to the question on top and takes it off.
func (m Model) answer(a Answer) Model {
	q := m.top()
	q.Reply <- a
	m.asks = m.asks[:len(m.asks)-1]
	word := map[Answer]string{No: "no", Yes: "yes", Skip: "skip"}[a]
	return m.logf("%s: %s", word, q.Question)
}

// refuseAll answers no to every question waiting.
func (m Model) refuseAll() Model {
	for len(m.asks) > 0 {
		m.top().Reply <- No
		m.asks = m.asks[:len(m.asks)-1]
	}
	return m
}

// Init starts the run, and the apiserver's poll (WithHealth).
func (m Model) Init() tea.Cmd { return tea.Batch(m.run, m.startPoll()) }

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
		m.asks = append(m.asks, &msg)
	case EventMsg:
		m = m.event(msg.Event)
	case healthTickMsg:
		return m.probe()
	case healthResultMsg:
		return m.probed(msg)
	case UndoDoneMsg:
		m.undoing = 0
		m.plan, m.savedPlan = m.savedPlan, nil
		i := m.step(msg.Step)
		switch {
		case msg.Err != nil:
			m = m.logf("undo of step %d not done: %v", msg.Step, msg.Err)
		case i >= 0:
			m.steps[i].status = "undone"
			m = m.logf("step %d %s undone", msg.Step, m.steps[i].ID)
		}
	case DoneMsg:
		m.finished, m.err = true, msg.Err
		m = m.refuseAll()
		return m, tea.Quit
	}
	return m, nil
}

func (m Model) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	keys := m.keys()
	switch {
	case key.Matches(k, keys.Abort):
		if m.abortAsked || m.finished {
			m.aborting = true
			m = m.refuseAll()
			if m.abort != nil {
				m.abort()
			}
			m = m.logf("aborting: the step in progress stops safely; the journal says what was done (runbook resume, runbook undo)")
			return m, nil
		}
		m.abortAsked = true
		m = m.logf("press Ctrl-C again to abort the run, any other key to go on")
		return m, nil
	case key.Matches(k, keys.Yes):
		m = m.answer(Yes)
	case key.Matches(k, keys.No):
		m = m.answer(No)
	case key.Matches(k, keys.Skip):
		m = m.answer(Skip)
	case k.String() == "s" && m.undoing != 0:
		m = m.logf("an undo's question cannot be skipped: y or n")
	case k.String() == "s" && len(m.asks) > 0:
		m = m.logf("this step cannot be skipped: only a step whose onFailure is continue can (n refuses it and stops the run)")
	case key.Matches(k, keys.Undo):
		n := m.undoTarget()
		m.undoing, m.savedPlan, m.plan = n, m.plan, nil
		m = m.logf("undo of step %d %s: its changes are planned, shown and asked about one by one", n, m.steps[n-1].ID)
		undo, id := m.undo, m.runID
		m.abortAsked = false
		return m, func() tea.Msg { return UndoDoneMsg{Step: n, Err: undo(id, n)} }
	case k.String() == "u":
		m = m.logf("nothing to undo now: u undoes the last applied step while the run waits at a question")
	case key.Matches(k, keys.Help):
		m.help.ShowAll = !m.help.ShowAll
	case key.Matches(k, keys.Quit):
		return m, tea.Quit
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
		if m.undoing != 0 {
			m = m.logf("undo of step %d of run %s", m.undoing, ev.RunID)
			return m
		}
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
			m = m.checked(ev.OK, ev.Detail, ev.Index)
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
		if m.undoing != 0 {
			m = m.logf("undo of step %d: %s", m.undoing, ev.Status)
			return m
		}
		m.status = ev.Status
		line := fmt.Sprintf("run %s: %s in %s", ev.RunID, ev.Status, ev.Elapsed.Round(100*time.Millisecond))
		if ev.Healthy > 0 {
			line += fmt.Sprintf("; apiserver healthy after %s", ev.Healthy.Round(100*time.Millisecond))
		}
		m = m.logf("%s", line)
	}
	return m
}
