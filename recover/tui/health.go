package tui

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// The apiserver's health as the TUI shows it: polled on its own through a
// probe the command gives (the model dials nothing), and updated by the
// runbook's apiserver checks as their events come.

// ProbeResult is what one probe of the apiserver found.
type ProbeResult struct {
	// OK: the apiserver answered 2xx.
	OK bool
	// Latency is how long the answer (or the failure) took.
	Latency time.Duration
	// Detail says why it is not OK (an error, an HTTP status). It is
	// shown briefly: its first line, cut, with anything that looks like a
	// credential blanked out.
	Detail string
}

// Probe asks the apiserver once. It must return when ctx is done (the
// model gives each probe a timeout, and cancels it when the program ends).
type Probe func(ctx context.Context) ProbeResult

// Defaults of Health.
const (
	DefaultPollEvery    = 2 * time.Second
	DefaultProbeTimeout = 3 * time.Second
	DefaultSlow         = time.Second
)

// Health is how the model polls the apiserver on its own.
type Health struct {
	// Probe asks the apiserver once; nil: no apiserver is configured, the
	// model shows "apiserver: not configured" and polls nothing.
	Probe Probe
	// What names what the probe asks ("/readyz"), for the screen.
	What string
	// Reason says why there is no probe (shown after "not configured").
	Reason string
	// Every is the wait between the end of a probe and the start of the
	// next (DefaultPollEvery): a probe never starts while one is running.
	Every time.Duration
	// Timeout bounds one probe (DefaultProbeTimeout).
	Timeout time.Duration
	// Slow: an OK answer that took longer is shown as slow (DefaultSlow).
	Slow time.Duration
	// Context ends the polling and the probe in flight when it is done
	// (the run's context; context.Background when nil).
	Context context.Context
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// healthTickMsg says it is time for the next probe.
type healthTickMsg struct{}

// healthResultMsg is a probe's result, at the time it came.
type healthResultMsg struct {
	Result ProbeResult
	At     time.Time
}

// Health states.
const (
	stateOK           = "ok"
	stateSlow         = "slow"
	stateNotAnswering = "not answering"
	// stateFailing: a runbook's apiserver check did not hold (its detail
	// says why: a non-2xx answer, or one over the check's SLO).
	stateFailing = "failing"
)

// health is what the model knows of the apiserver's health.
type health struct {
	cfg      Health
	inflight bool
	known    bool
	state    string
	detail   string
	source   string    // what the last result came from: "/readyz", "check of step 4"
	at       time.Time // of the last result
	since    time.Time // when the state last changed
	lastOK   time.Time // the last result that was ok (zero: never)
}

func newHealth(h Health) health {
	if h.Every <= 0 {
		h.Every = DefaultPollEvery
	}
	if h.Timeout <= 0 {
		h.Timeout = DefaultProbeTimeout
	}
	if h.Slow <= 0 {
		h.Slow = DefaultSlow
	}
	if h.What == "" {
		h.What = "probe"
	}
	if h.Context == nil {
		h.Context = context.Background()
	}
	if h.Now == nil {
		h.Now = time.Now
	}
	return health{cfg: h}
}

// WithHealth makes the model poll the apiserver through h.Probe: the first
// probe when the model starts, then h.Every after each one returned, until
// the run ends or h.Context is done. With a nil Probe the model shows
// "apiserver: not configured" (and h.Reason) until a check reports.
func (m Model) WithHealth(h Health) Model {
	m.health = newHealth(h)
	return m
}

func (m Model) now() time.Time { return m.health.cfg.Now() }

// startPoll is the model's first tick (a message, so that Update marks
// the probe in flight).
func (m Model) startPoll() tea.Cmd {
	if m.health.cfg.Probe == nil {
		return nil
	}
	return func() tea.Msg { return healthTickMsg{} }
}

// probe starts a probe unless one is in flight (or the run ended).
func (m Model) probe() (Model, tea.Cmd) {
	h := m.health.cfg
	if h.Probe == nil || m.health.inflight || m.finished {
		return m, nil
	}
	m.health.inflight = true
	return m, func() tea.Msg {
		if h.Context.Err() != nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(h.Context, h.Timeout)
		defer cancel()
		r := h.Probe(ctx)
		return healthResultMsg{Result: r, At: h.Now()}
	}
}

// tick waits Every, or until the context is done: nothing is left
// running once the program ended.
func (m Model) tick() tea.Cmd {
	if m.finished {
		return nil
	}
	ctx, every := m.health.cfg.Context, m.health.cfg.Every
	return func() tea.Msg {
		t := time.NewTimer(every)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			return healthTickMsg{}
		}
	}
}

// probed records a probe's result and schedules the next probe.
func (m Model) probed(msg healthResultMsg) (Model, tea.Cmd) {
	m.health.inflight = false
	r := msg.Result
	state, detail := stateOK, fmt.Sprintf("%s in %s", m.health.cfg.What, roundLatency(r.Latency))
	switch {
	case !r.OK:
		state, detail = stateNotAnswering, fmt.Sprintf("%s (%s)", m.health.cfg.What, roundLatency(r.Latency))
		if d := brief(r.Detail); d != "" {
			detail += ": " + d
		}
	case r.Latency > m.health.cfg.Slow:
		state, detail = stateSlow, fmt.Sprintf("%s in %s (over %s)", m.health.cfg.What, roundLatency(r.Latency), m.health.cfg.Slow)
	}
	m.health = m.health.record(state, detail, m.health.cfg.What, msg.At)
	return m, m.tick()
}

// checked records a runbook's apiserver check (a step's event).
func (m Model) checked(ok bool, detail string, index int) Model {
	state := stateOK
	if !ok {
		state = stateFailing
	}
	m.health = m.health.record(state, brief(detail), fmt.Sprintf("check of step %d", index), m.now())
	return m
}

func (h health) record(state, detail, source string, at time.Time) health {
	if !h.known || state != h.state {
		h.since = at
	}
	h.known, h.state, h.detail, h.source, h.at = true, state, detail, source, at
	if state == stateOK {
		h.lastOK = at
	}
	return h
}

// view is the health's lines: the state and what it is from, then how
// long it has held, since when, and when the apiserver was last ok.
func (h health) view(now time.Time, w int) string {
	if !h.known {
		switch {
		case h.cfg.Probe == nil && h.cfg.Reason != "":
			return truncate("apiserver: not configured ("+h.cfg.Reason+")", w) + "\n"
		case h.cfg.Probe == nil:
			return "apiserver: not configured\n"
		}
		return truncate("apiserver: asking "+h.cfg.What+" (every "+h.cfg.Every.String()+")", w) + "\n"
	}
	line := "apiserver: " + h.state
	if h.detail != "" {
		line += ": " + h.detail
	}
	held := fmt.Sprintf("  %s for %s, since %s", h.state, ago(now, h.since), h.since.Format("15:04:05"))
	if h.state != stateOK {
		if h.lastOK.IsZero() {
			held += "; not seen ok yet"
		} else {
			held += fmt.Sprintf("; last ok %s ago", ago(now, h.lastOK))
		}
	}
	held += fmt.Sprintf(" · %s %s ago", h.source, ago(now, h.at))
	if h.cfg.Probe == nil {
		held += " · not polled (not configured)"
	}
	return truncate(line, w) + "\n" + truncate(held, w) + "\n"
}

func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String()
}

func roundLatency(d time.Duration) string {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// credential is what brief blanks out: bearer tokens, token= and
// password= values, and everything from a PEM block on.
var credential = regexp.MustCompile(`(?i)(bearer\s+|token[=:]\s*|password[=:]\s*)\S+`)

// brief is a detail as the screen shows it: one line, short, no
// credentials.
func brief(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if i := strings.Index(s, "-----BEGIN"); i >= 0 {
		s = s[:i] + "[…]"
	}
	s = credential.ReplaceAllString(s, "${1}[redacted]")
	return truncate(strings.TrimSpace(s), 120)
}
