// Package fanout runs one action on many nodes at once: bounded concurrency,
// a timeout per node, retries with backoff for errors that are safe to retry,
// and cancellation that stops new work at once. It never fails fast: every
// node gets a Result, in the order the nodes were given, and every change of
// a node's state is reported as an Event for progress bars, the TUI and JSON
// output.
package fanout

import (
	"context"
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/breakglass/breakglass/nodeops"
)

// Result is how one node ended.
type Result struct {
	// Index is the node's position in the targets given to Run.
	Index  int
	Target nodeops.Target
	Status nodeops.Status
	// Reason refines Status ("timeout", "exit", "host-key-changed"...).
	Reason string
	// ExitCode is the command's exit status, or -1 if it did not exit.
	ExitCode int
	// Start is when the node's first attempt started (zero if never).
	Start time.Time
	// Duration covers every attempt and the backoff between them.
	Duration time.Duration
	Attempts int
	Output   nodeops.Output
	Err      error
}

// EventType says what happened to a node.
type EventType string

// The events of one node: Started, then Retrying any number of times, then
// exactly one of Finished (status ok), Failed (failed, unreachable, refused)
// or Cancelled.
const (
	EventStarted   EventType = "started"
	EventRetrying  EventType = "retrying"
	EventFinished  EventType = "finished"
	EventFailed    EventType = "failed"
	EventCancelled EventType = "cancelled"
)

// Event is one change in a node's state.
type Event struct {
	Type    EventType
	Index   int
	Target  nodeops.Target
	Attempt int
	Time    time.Time
	// Result is set for Finished, Failed and Cancelled; Err for Retrying.
	Result *Result
	Err    error
	// Total is the number of nodes in the run.
	Total int
}

// Options tune a run. The zero value runs one node at a time with no
// timeout, two retries and no events.
type Options struct {
	// Concurrency is how many nodes are worked on at once.
	Concurrency int
	// Timeout bounds each node, all attempts included (0: none).
	Timeout time.Duration
	// Retries is how many times a retryable error is retried (default 2;
	// negative: never).
	Retries int
	// Backoff is the first wait before a retry (default 250ms); it doubles
	// with each retry, with jitter.
	Backoff time.Duration
	// Grace is how long a cancelled run waits for the nodes in flight to
	// return before it reports them cancelled and returns (default 300ms).
	Grace time.Duration
	// OnEvent receives every event. Calls are serialised, so it needs no
	// lock, but it must be quick: it runs while the engine holds its lock.
	OnEvent func(Event)
}

// Func does the work on one node.
type Func func(ctx context.Context, t nodeops.Target) (nodeops.Output, error)

// RunCommand runs c on every target with r.
func RunCommand(ctx context.Context, r nodeops.Runner, targets []nodeops.Target, c nodeops.Command, opts Options) []Result {
	return Run(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (nodeops.Output, error) {
		return r.Run(ctx, t, c)
	})
}

type run struct {
	opts    Options
	targets []nodeops.Target
	fn      Func

	mu      sync.Mutex
	results []Result
	state   []nodeState
	closed  bool // results are final; late workers are ignored
}

type nodeState uint8

const (
	pending nodeState = iota
	inFlight
	final
)

// Run calls fn for every target and returns one Result per target, in the
// same order. When ctx is cancelled, no new node starts; nodes in flight get
// Grace to return, then every node not finished is reported cancelled.
func Run(ctx context.Context, targets []nodeops.Target, opts Options, fn Func) []Result {
	if opts.Concurrency < 1 {
		opts.Concurrency = 1
	}
	if opts.Retries == 0 {
		opts.Retries = 2
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 250 * time.Millisecond
	}
	if opts.Grace <= 0 {
		opts.Grace = 300 * time.Millisecond
	}
	r := &run{opts: opts, targets: targets, fn: fn,
		results: make([]Result, len(targets)), state: make([]nodeState, len(targets))}
	for i, t := range targets {
		r.results[i] = Result{Index: i, Target: t, ExitCode: -1}
	}

	workers := min(opts.Concurrency, len(targets))
	var next atomic.Int64
	var wg sync.WaitGroup
	wg.Add(workers)
	for w := 0; w < workers; w++ {
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(targets) {
					return
				}
				r.node(ctx, i)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	select {
	case <-done:
	case <-ctx.Done():
		t := time.NewTimer(opts.Grace)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.results {
		if r.state[i] == final {
			continue
		}
		res := &r.results[i]
		res.Status, res.Reason = nodeops.StatusCancelled, "not started"
		if r.state[i] == inFlight {
			res.Reason = "cancelled while running"
			res.Duration = time.Since(res.Start)
		}
		res.Err = context.Cause(ctx)
		if res.Err == nil {
			res.Err = context.Canceled
		}
		r.state[i] = final
		r.emit(Event{Type: EventCancelled, Index: i, Target: res.Target, Attempt: res.Attempts, Result: res})
	}
	r.closed = true
	out := make([]Result, len(r.results))
	copy(out, r.results)
	return out
}

// node runs one node, with retries.
func (r *run) node(ctx context.Context, i int) {
	start := time.Now()
	r.mu.Lock()
	if r.closed || ctx.Err() != nil {
		r.mu.Unlock()
		return
	}
	r.state[i] = inFlight
	r.results[i].Start = start
	r.results[i].Attempts = 1
	r.emit(Event{Type: EventStarted, Index: i, Target: r.targets[i], Attempt: 1})
	r.mu.Unlock()

	nctx := ctx
	if r.opts.Timeout > 0 {
		var cancel context.CancelFunc
		nctx, cancel = context.WithTimeout(ctx, r.opts.Timeout)
		defer cancel()
	}
	var out nodeops.Output
	var err error
	attempt := 1
	backoff := r.opts.Backoff
	for {
		out, err = r.fn(nctx, r.targets[i])
		if err == nil || !nodeops.Retryable(err) || attempt > r.opts.Retries || nctx.Err() != nil {
			break
		}
		// Jitter spreads the retries of many nodes that failed together.
		wait := backoff/2 + rand.N(backoff)
		if dl, ok := nctx.Deadline(); ok && time.Until(dl) < wait {
			break // no time left for another attempt
		}
		attempt++
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		r.results[i].Attempts = attempt
		r.emit(Event{Type: EventRetrying, Index: i, Target: r.targets[i], Attempt: attempt, Err: err})
		r.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-nctx.Done():
		}
		t.Stop()
		if nctx.Err() != nil {
			break
		}
		backoff *= 2
	}

	status, reason := nodeops.StatusOf(err)
	if err != nil && ctx.Err() != nil {
		// The run was cancelled: whatever the runner saw, it saw because of
		// that.
		status, reason = nodeops.StatusCancelled, "cancelled while running"
	} else if err != nil && nctx.Err() != nil && !isTimeout(err) {
		status, reason = timeoutStatus(err), "timeout"
	}
	exit := -1
	var ee *nodeops.ExitError
	if err == nil {
		exit = out.ExitCode
	} else if errors.As(err, &ee) && ee.Signal == "" {
		exit = ee.Code
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.state[i] == final {
		return
	}
	res := &r.results[i]
	res.Status, res.Reason, res.ExitCode = status, reason, exit
	res.Duration = time.Since(start)
	res.Attempts = attempt
	res.Output = out
	res.Err = err
	r.state[i] = final
	typ := EventFailed
	switch status {
	case nodeops.StatusOK:
		typ = EventFinished
	case nodeops.StatusCancelled:
		typ = EventCancelled
	}
	r.emit(Event{Type: typ, Index: i, Target: res.Target, Attempt: attempt, Result: res})
}

func isTimeout(err error) bool {
	var e *nodeops.Error
	return errors.As(err, &e) && e.Reason == "timeout"
}

// timeoutStatus: a node that timed out before its command started is
// unreachable; one that timed out while it ran has failed.
func timeoutStatus(err error) nodeops.Status {
	var e *nodeops.Error
	if errors.As(err, &e) && e.Phase != nodeops.PhaseCommand {
		return nodeops.StatusUnreachable
	}
	return nodeops.StatusFailed
}

// emit sends an event; r.mu is held.
func (r *run) emit(e Event) {
	if r.opts.OnEvent == nil || r.closed {
		return
	}
	e.Time = time.Now()
	e.Total = len(r.targets)
	if e.Result != nil {
		c := *e.Result // the receiver may keep it
		e.Result = &c
	}
	r.opts.OnEvent(e)
}

// Summary counts the results by status and names the slowest nodes.
type Summary struct {
	Total  int
	Counts map[nodeops.Status]int
	// Slowest are the nodes that took longest, slowest first (at most the
	// number asked for; nodes that never started are left out).
	Slowest []Result
}

// Summarize counts results and keeps the n slowest.
func Summarize(results []Result, n int) Summary {
	s := Summary{Total: len(results), Counts: map[nodeops.Status]int{}}
	var ran []Result
	for _, r := range results {
		s.Counts[r.Status]++
		if !r.Start.IsZero() {
			ran = append(ran, r)
		}
	}
	sort.SliceStable(ran, func(i, j int) bool { return ran[i].Duration > ran[j].Duration })
	if len(ran) > n {
		ran = ran[:n]
	}
	s.Slowest = ran
	return s
}

// OK reports whether every node ended ok.
func (s Summary) OK() bool { return s.Counts[nodeops.StatusOK] == s.Total }
