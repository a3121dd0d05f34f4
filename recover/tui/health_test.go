package tui

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/exp/teatest"

	"github.com/breakglass/breakglass/recover/change"
)

// fakeClock is the model's clock in these tests: time moves when the test
// says so.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 10, 0, 0, 0, time.Local)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// scriptedProbe answers each probe with the next result the test gives;
// it counts the probes and the most that ran at once.
type scriptedProbe struct {
	results            chan ProbeResult
	calls              atomic.Int32
	running, maxAtOnce atomic.Int32
	exited             chan struct{}
}

func newScriptedProbe() *scriptedProbe {
	return &scriptedProbe{results: make(chan ProbeResult), exited: make(chan struct{}, 100)}
}

func (p *scriptedProbe) probe(ctx context.Context) ProbeResult {
	defer func() { p.exited <- struct{}{} }()
	p.calls.Add(1)
	n := p.running.Add(1)
	defer p.running.Add(-1)
	for {
		if old := p.maxAtOnce.Load(); n <= old || p.maxAtOnce.CompareAndSwap(old, n) {
			break
		}
	}
	select {
	case r := <-p.results:
		return r
	case <-ctx.Done():
		return ProbeResult{Detail: ctx.Err().Error()}
	}
}

// The TUI polls the apiserver by itself through the probe it is given:
// the first probe when it starts, the next one after each returned. The
// screen follows the health from ok to not answering and back, with how
// long each state has held and when the apiserver was last ok; ticks that
// come while a probe runs start no second one; when the program ended,
// the probe in flight returns with the context.
func TestHealthPollsOnItsOwn(t *testing.T) {
	clock := newFakeClock()
	p := newScriptedProbe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := New("x", testSteps, nil, nil).WithHealth(Health{Probe: p.probe, What: "/readyz", Every: time.Millisecond, Context: ctx, Now: clock.Now})
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(120, 40))
	answer := func(r ProbeResult) {
		t.Helper()
		select {
		case p.results <- r:
		case <-time.After(5 * time.Second):
			t.Fatal("the model did not probe the apiserver")
		}
	}

	answer(ProbeResult{OK: true, Latency: 12 * time.Millisecond})
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return contains("apiserver: ok: /readyz in 12ms")(b) && contains("ok for 0s, since 10:00:00")(b)
	}, teatest.WithDuration(5*time.Second))

	clock.Add(5 * time.Second)
	answer(ProbeResult{Latency: 3 * time.Second, Detail: `Get "https://10.0.0.1:6443/readyz": context deadline exceeded`})
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return contains(`apiserver: not answering: /readyz (3s): Get "https://10.0.0.1:6443/readyz": context deadline exceeded`)(b) &&
			contains("not answering for 0s, since 10:00:05; last ok 5s ago")(b)
	}, teatest.WithDuration(5*time.Second))

	// The next probe runs (it waits for its answer): ticks now start no
	// other.
	for i := 0; i < 3; i++ {
		tm.Send(healthTickMsg{})
	}
	clock.Add(7 * time.Second)
	answer(ProbeResult{Latency: 2 * time.Millisecond, Detail: "429 Too Many Requests after 2ms"})
	teatest.WaitFor(t, tm.Output(), contains("not answering for 7s, since 10:00:05; last ok 12s ago"), teatest.WithDuration(5*time.Second))

	clock.Add(time.Second)
	answer(ProbeResult{OK: true, Latency: 1500 * time.Millisecond})
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return contains("apiserver: slow: /readyz in 1.5s (over 1s)")(b) && contains("slow for 0s, since 10:00:13; last ok 13s ago")(b)
	}, teatest.WithDuration(5*time.Second))

	clock.Add(2 * time.Second)
	answer(ProbeResult{OK: true, Latency: 8 * time.Millisecond})
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		return contains("apiserver: ok: /readyz in 8ms")(b) && contains("ok for 0s, since 10:00:15")(b)
	}, teatest.WithDuration(5*time.Second))

	tm.Send(DoneMsg{})
	tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
	if got := p.maxAtOnce.Load(); got != 1 {
		t.Errorf("%d probes ran at once", got)
	}
	// One probe per answer, and the one after the last that nobody
	// answers; none for the ticks sent while one ran.
	if got := p.calls.Load(); got < 5 || got > 6 {
		t.Errorf("%d probes for 5 answers", got)
	}
	cancel()
	deadline := time.After(5 * time.Second)
	for exited := int32(0); exited < p.calls.Load(); exited++ {
		select {
		case <-p.exited:
		case <-deadline:
			t.Fatal("a probe still runs after the program ended and its context was cancelled")
		}
	}
}

// countingProbe returns ok at once and counts its calls.
type countingProbe struct{ calls int }

func (c *countingProbe) probe(ctx context.Context) ProbeResult {
	c.calls++
	return ProbeResult{OK: true, Latency: 5 * time.Millisecond}
}

func update(t *testing.T, m Model, msg tea.Msg) (Model, tea.Cmd) {
	t.Helper()
	nm, cmd := m.Update(msg)
	return nm.(Model), cmd
}

// The model's Update, driven with its tick and result messages: a tick
// starts a probe, a tick while it runs starts none, its result schedules
// the next tick, and after the run ended nothing is polled any more.
func TestHealthNeverTwoProbesAtOnce(t *testing.T) {
	clock := newFakeClock()
	c := &countingProbe{}
	m := New("x", testSteps, nil, nil).WithHealth(Health{Probe: c.probe, What: "/readyz", Now: clock.Now})
	start := m.Init()
	if start == nil {
		t.Fatal("Init starts no poll")
	}
	msg := start()
	if _, ok := msg.(healthTickMsg); !ok {
		t.Fatalf("Init's poll: %T, want the first tick", msg)
	}
	m, probe := update(t, m, msg)
	if probe == nil {
		t.Fatal("a tick started no probe")
	}
	m, again := update(t, m, healthTickMsg{})
	if again != nil {
		t.Fatal("a tick while a probe runs started another")
	}
	res := probe()
	if c.calls != 1 {
		t.Fatalf("%d probes, want 1", c.calls)
	}
	m, next := update(t, m, res)
	if next == nil {
		t.Fatal("a probe's result scheduled no next tick")
	}
	if v := m.View(); !strings.Contains(v, "apiserver: ok: /readyz in 5ms") {
		t.Errorf("after the probe:\n%s", v)
	}
	m, probe = update(t, m, healthTickMsg{})
	if probe == nil {
		t.Fatal("the tick after a result started no probe")
	}
	probe()
	if c.calls != 2 {
		t.Fatalf("%d probes, want 2", c.calls)
	}
	m, _ = update(t, m, DoneMsg{})
	if _, cmd := update(t, m, healthTickMsg{}); cmd != nil {
		t.Error("a tick after the run ended started a probe")
	}
	if _, cmd := update(t, m, healthResultMsg{Result: ProbeResult{OK: true}, At: clock.Now()}); cmd != nil {
		t.Error("a result after the run ended scheduled another tick")
	}
}

// The runbook's apiserver checks update the health too, as they come: a
// check that does not hold shows failing with its detail, one that holds
// ok, each with its step and when it came.
func TestHealthFromChecks(t *testing.T) {
	clock := newFakeClock()
	c := &countingProbe{}
	m := New("x", testSteps, nil, nil).WithHealth(Health{Probe: c.probe, What: "/readyz", Now: clock.Now})
	m, _ = update(t, m, healthResultMsg{Result: ProbeResult{OK: true, Latency: 4 * time.Millisecond}, At: clock.Now()})
	clock.Add(3 * time.Second)
	m, _ = update(t, m, EventMsg{change.StepCheck{Index: 2, ID: "hold", Check: "apiserver", OK: false, Detail: "request 1 of 5: 429 Too Many Requests after 3ms"}})
	v := m.View()
	for _, want := range []string{"apiserver: failing: request 1 of 5: 429 Too Many Requests after 3ms", "failing for 0s, since 10:00:03; last ok 3s ago · check of step 2 0s ago"} {
		if !strings.Contains(v, want) {
			t.Errorf("no %q in:\n%s", want, v)
		}
	}
	clock.Add(time.Second)
	m, _ = update(t, m, EventMsg{change.StepCheck{Index: 2, ID: "hold", Check: "apiserver", OK: true, Detail: "5 of 5 answered 2xx, slowest 9ms (SLO 1s)"}})
	if v := m.View(); !strings.Contains(v, "apiserver: ok: 5 of 5 answered 2xx, slowest 9ms (SLO 1s)") || !strings.Contains(v, "ok for 0s, since 10:00:04") {
		t.Errorf("after the check held:\n%s", v)
	}
	// Another check's events leave the apiserver's health alone.
	m, _ = update(t, m, EventMsg{change.StepCheck{Index: 2, ID: "hold", Check: "workload-stopped", OK: false, Detail: "3 pod(s) still run"}})
	if v := m.View(); !strings.Contains(v, "apiserver: ok: 5 of 5") {
		t.Errorf("after another check:\n%s", v)
	}
}

// Without a probe (no apiserver configured) the TUI says so and polls
// nothing; a check's event still shows, as not polled.
func TestHealthNotConfigured(t *testing.T) {
	m := New("x", testSteps, nil, nil)
	if cmd := m.Init(); cmd != nil {
		t.Error("Init with no probe and no run returned a command")
	}
	if v := m.View(); !strings.Contains(v, "apiserver: not configured\n") {
		t.Errorf("no probe:\n%s", v)
	}
	if _, cmd := update(t, m, healthTickMsg{}); cmd != nil {
		t.Error("a tick with no probe started something")
	}
	m = New("x", testSteps, nil, nil).WithHealth(Health{Reason: "no kubeconfig given, none found, and the inventory has no apiserver.url"})
	if v := m.View(); !strings.Contains(v, "apiserver: not configured (no kubeconfig given, none found, and the inventory has no apiserver.url)") {
		t.Errorf("no probe, with its reason:\n%s", v)
	}
	m, _ = update(t, m, EventMsg{change.StepCheck{Index: 1, Check: "apiserver", OK: true, Detail: "5 of 5 answered 2xx"}})
	if v := m.View(); !strings.Contains(v, "apiserver: ok: 5 of 5 answered 2xx") || !strings.Contains(v, "not polled (not configured)") {
		t.Errorf("a check, no probe:\n%s", v)
	}

	// Under teatest too: the line is on the screen and no probe runs.
	tm := teatest.NewTestModel(t, New("x", testSteps, nil, nil), teatest.WithInitialTermSize(100, 30))
	teatest.WaitFor(t, tm.Output(), contains("apiserver: not configured"), teatest.WithDuration(5*time.Second))
	tm.Send(DoneMsg{})
	tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
}

// A probe's error is shown briefly: one line, cut, and nothing that looks
// like a credential.
func TestHealthDetailIsBrief(t *testing.T) {
	for _, tc := range []struct{ in, want, not string }{
		{in: "unauthorized: Authorization: Bearer eyJhbGciOi.secret.sig sent", want: "Bearer [redacted] sent", not: "eyJhbGciOi"},
		{in: "bad cert -----BEGIN CERTIFICATE-----\nMIIB...", want: "bad cert […]", not: "MIIB"},
		{in: "url https://x/?token=abc123&x=1 refused", want: "token=[redacted] refused", not: "abc123"},
		{in: "first line\nsecond line", want: "first line", not: "second"},
		{in: strings.Repeat("x", 300), want: "…", not: strings.Repeat("x", 121)},
	} {
		got := brief(tc.in)
		if !strings.Contains(got, tc.want) || strings.Contains(got, tc.not) {
			t.Errorf("brief(%q) = %q, want %q in it and no %q", tc.in, got, tc.want, tc.not)
		}
	}
}
