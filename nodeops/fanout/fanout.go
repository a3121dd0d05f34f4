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

// Result is how one node ended, for runs that execute commands.
type Result = ResultOf[nodeops.Output]

// Event is a change of a node's state in a run that executes commands.
type Event = EventOf[nodeops.Output]

// Options tune a run that executes commands.
type Options = OptionsOf[nodeops.Output]

// Summary sums up a run that executes commands.
type Summary = SummaryOf[nodeops.Output]

// Func does the work on one node.
type Func = FuncOf[nodeops.Output]

// ResultOf is how one node ended; Output is what the work on it returned,
// typed as the lever needs (command output, the pods stopped, the rules
// applied).
type ResultOf[T any] struct {
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
	Output   T
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
type EventOf[T any] struct {
	Type    EventType
	Index   int
	Target  nodeops.Target
	Attempt int
	Time    time.Time
	// Result is set for Finished, Failed and Cancelled; Err for Retrying.
	Result *ResultOf[T]
	Err    error
	// Total is the number of nodes in the run.
	Total int
}

// OptionsOf tune a run. The zero value runs one node at a time with no
// timeout, two retries and no events.
type OptionsOf[T any] struct {
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
	// OnEvent receives every event, in order, from one goroutine (so it
	// needs no lock). Events are queued: a slow consumer (a TUI, a
	// terminal) never holds up the nodes. Run returns after the last
	// event was delivered.
	OnEvent func(EventOf[T])
}

// FuncOf does the work on one node.
type FuncOf[T any] func(ctx context.Context, t nodeops.Target) (T, error)

// RunCommand runs c on every target with r.
func RunCommand(ctx context.Context, r nodeops.Runner, targets []nodeops.Target, c nodeops.Command, opts Options) []Result {
	return Run(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (nodeops.Output, error) {
		return r.Run(ctx, t, c)
	})
}

type run[T any] struct {
	opts    OptionsOf[T]
	targets []nodeops.Target
	fn      FuncOf[T]
	events  *queue[EventOf[T]]

	mu      sync.Mutex
	results []ResultOf[T]
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
	return RunOf(ctx, targets, opts, fn)
}

// RunOf is Run for work that returns any type of result.
func RunOf[T any](ctx context.Context, targets []nodeops.Target, opts OptionsOf[T], fn FuncOf[T]) []ResultOf[T] {
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
	r := &run[T]{opts: opts, targets: targets, fn: fn,
		results: make([]ResultOf[T], len(targets)), state: make([]nodeState, len(targets))}
	for i, t := range targets {
		r.results[i] = ResultOf[T]{Index: i, Target: t, ExitCode: -1}
	}
	if opts.OnEvent != nil {
		r.events = newQueue(opts.OnEvent)
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
		r.emit(EventOf[T]{Type: EventCancelled, Index: i, Target: res.Target, Attempt: res.Attempts, Result: res})
	}
	r.closed = true
	out := make([]ResultOf[T], len(r.results))
	copy(out, r.results)
	r.mu.Unlock()
	if r.events != nil {
		r.events.close() // every event delivered before Run returns
	}
	return out
}

// node runs one node, with retries.
func (r *run[T]) node(ctx context.Context, i int) {
	start := time.Now()
	r.mu.Lock()
	if r.closed || ctx.Err() != nil {
		r.mu.Unlock()
		return
	}
	r.state[i] = inFlight
	r.results[i].Start = start
	r.results[i].Attempts = 1
	r.emit(EventOf[T]{Type: EventStarted, Index: i, Target: r.targets[i], Attempt: 1})
	r.mu.Unlock()

	nctx := ctx
	if r.opts.Timeout > 0 {
		var cancel context.CancelFunc
		nctx, cancel = context.WithTimeout(ctx, r.opts.Timeout)
		defer cancel()
	}
	var out T
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
		r.emit(EventOf[T]{Type: EventRetrying, Index: i, Target: r.targets[i], Attempt: attempt, Err: err})
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
	if o, ok := any(out).(nodeops.Output); ok && err == nil {
		exit = o.ExitCode
	} else if err == nil {
		exit = 0
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
	r.emit(EventOf[T]{Type: typ, Index: i, Target: res.Target, Attempt: attempt, Result: res})
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

// emit queues an event for delivery; r.mu is held, so events are queued in
// the order they happen, and queueing never waits for the consumer.
func (r *run[T]) emit(e EventOf[T]) {
	if r.events == nil || r.closed {
		return
	}
	e.Time = time.Now()
	e.Total = len(r.targets)
	if e.Result != nil {
		c := *e.Result // the receiver may keep it
		e.Result = &c
	}
	r.events.push(e)
}

// queue delivers items to a consumer from one goroutine, in order. push
// never blocks: a run has a few events per node, so the queue is bounded by
// the number of nodes.
type queue[E any] struct {
	mu      sync.Mutex
	cond    *sync.Cond
	items   []E
	closing bool
	done    chan struct{}
}

func newQueue[E any](consume func(E)) *queue[E] {
	q := &queue[E]{done: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	go func() {
		defer close(q.done)
		for {
			q.mu.Lock()
			for len(q.items) == 0 && !q.closing {
				q.cond.Wait()
			}
			if len(q.items) == 0 {
				q.mu.Unlock()
				return
			}
			batch := q.items
			q.items = nil
			q.mu.Unlock()
			for _, it := range batch {
				consume(it)
			}
		}
	}()
	return q
}

func (q *queue[E]) push(e E) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
	q.cond.Signal()
}

// close waits until every pushed item was consumed.
func (q *queue[E]) close() {
	q.mu.Lock()
	q.closing = true
	q.mu.Unlock()
	q.cond.Signal()
	<-q.done
}

// SummaryOf counts the results by status and names the slowest nodes.
type SummaryOf[T any] struct {
	Total  int
	Counts map[nodeops.Status]int
	// Slowest are the nodes that took longest, slowest first (at most the
	// number asked for; nodes that never started are left out).
	Slowest []ResultOf[T]
}

// Summarize counts results and keeps the n slowest.
func Summarize[T any](results []ResultOf[T], n int) SummaryOf[T] {
	s := SummaryOf[T]{Total: len(results), Counts: map[nodeops.Status]int{}}
	var ran []ResultOf[T]
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
func (s SummaryOf[T]) OK() bool { return s.Counts[nodeops.StatusOK] == s.Total }
