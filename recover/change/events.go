package change

import (
	"sync"
	"sync/atomic"
)

// Event is one thing the engine reports. The text printer, the JSON printer
// and the TUI all read the same events.
type Event interface{ isEvent() }

// PlanReady: a plan was made. Replanned is set when the state moved after
// an earlier plan of the same change; Reason says how.
type PlanReady struct {
	Plan      *Plan
	DryRun    bool
	Replanned bool
	Reason    string
}

// Unchanged: the plan is empty, the targets are already as wanted.
type Unchanged struct{ Plan *Plan }

// ItemStarted: an item is about to be applied.
type ItemStarted struct {
	Plan *Plan
	Item *Item
}

// ItemApplied: an item was applied.
type ItemApplied struct {
	Plan *Plan
	Item *Item
}

// ItemFailed: an item failed. Nothing after it in the plan was applied.
type ItemFailed struct {
	Plan *Plan
	Item *Item
	Err  error
}

// Applied: every item of the plan was applied and journaled.
type Applied struct {
	Plan    *Plan
	Journal string
}

// Progress is a tick of a long apply (nodes done of nodes): the only event
// a busy Stream may drop.
type Progress struct {
	Plan        *Plan
	Done, Total int
}

func (PlanReady) isEvent()   {}
func (Unchanged) isEvent()   {}
func (ItemStarted) isEvent() {}
func (ItemApplied) isEvent() {}
func (ItemFailed) isEvent()  {}
func (Applied) isEvent()     {}
func (Progress) isEvent()    {}

// Stream delivers events to one consumer in order without blocking the
// work: events are queued and a goroutine hands them to the consumer. Only
// Progress ticks are dropped (and counted) when the queue is full; every
// other event waits for room, so none is lost.
type Stream struct {
	ch      chan Event
	done    chan struct{}
	dropped atomic.Int64
	once    sync.Once
}

// NewStream starts delivering events to consume, queueing up to size.
func NewStream(size int, consume func(Event)) *Stream {
	s := &Stream{ch: make(chan Event, size), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for ev := range s.ch {
			if f, ok := ev.(flush); ok {
				close(f)
				continue
			}
			consume(ev)
		}
	}()
	return s
}

// Emit queues ev.
func (s *Stream) Emit(ev Event) {
	if _, ok := ev.(Progress); ok {
		select {
		case s.ch <- ev:
		default:
			s.dropped.Add(1)
		}
		return
	}
	s.ch <- ev
}

// Close waits until every queued event was consumed. Emit must not be
// called after it.
func (s *Stream) Close() {
	s.once.Do(func() { close(s.ch) })
	<-s.done
}

// flush marks a point in the queue; the consumer closes it on reaching it.
type flush chan struct{}

func (flush) isEvent() {}

// Flush waits until every event emitted before it was consumed: a prompt
// must come after the plan it asks about.
func (s *Stream) Flush() {
	f := make(flush)
	s.ch <- f
	<-f
}

// Dropped is how many Progress ticks were dropped.
func (s *Stream) Dropped() int64 { return s.dropped.Load() }
