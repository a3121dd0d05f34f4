package fanout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
)

func nodes(n int) []nodeops.Target {
	var ts []nodeops.Target
	for i := 0; i < n; i++ {
		ts = append(ts, nodeops.Target{Name: fmt.Sprintf("n%02d", i)})
	}
	return ts
}

func TestEveryNodeGetsAResultInOrder(t *testing.T) {
	ts := nodes(40)
	var inFlight, peak atomic.Int32
	res := Run(context.Background(), ts, Options{Concurrency: 5}, func(ctx context.Context, tg nodeops.Target) (nodeops.Output, error) {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer inFlight.Add(-1)
		time.Sleep(time.Millisecond)
		if tg.Name == "n07" {
			return nodeops.Output{ExitCode: 2}, &nodeops.Error{Node: tg.Name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "exit", Err: &nodeops.ExitError{Code: 2}}
		}
		return nodeops.Output{Stdout: []byte(tg.Name)}, nil
	})
	if len(res) != len(ts) {
		t.Fatalf("%d results", len(res))
	}
	for i, r := range res {
		if r.Target.Name != ts[i].Name || r.Index != i {
			t.Fatalf("result %d is %s", i, r.Target.Name)
		}
		if i == 7 {
			if r.Status != nodeops.StatusFailed || r.ExitCode != 2 {
				t.Errorf("n07: %+v", r)
			}
		} else if r.Status != nodeops.StatusOK || string(r.Output.Stdout) != r.Target.Name {
			t.Errorf("%s: %+v", r.Target.Name, r)
		}
	}
	if peak.Load() > 5 {
		t.Errorf("%d in flight, limit 5", peak.Load())
	}
	s := Summarize(res, 3)
	if s.Counts[nodeops.StatusOK] != 39 || s.Counts[nodeops.StatusFailed] != 1 || len(s.Slowest) != 3 || s.OK() {
		t.Errorf("summary %+v", s)
	}
}

func TestRetriesOnlySafeErrors(t *testing.T) {
	calls := map[string]int{}
	var mu sync.Mutex
	res := Run(context.Background(), nodes(3), Options{Concurrency: 3, Backoff: time.Millisecond, Retries: 3},
		func(ctx context.Context, tg nodeops.Target) (nodeops.Output, error) {
			mu.Lock()
			calls[tg.Name]++
			n := calls[tg.Name]
			mu.Unlock()
			switch tg.Name {
			case "n00": // refused twice, then fine
				if n < 3 {
					return nodeops.Output{}, &nodeops.Error{Node: tg.Name, Phase: nodeops.PhaseDial, Status: nodeops.StatusUnreachable, Retryable: true, Err: syscall.ECONNREFUSED}
				}
				return nodeops.Output{}, nil
			case "n01": // the command may have run: never retried
				return nodeops.Output{}, &nodeops.Error{Node: tg.Name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "connection-lost", Err: errors.New("eof")}
			}
			return nodeops.Output{}, &nodeops.Error{Node: tg.Name, Phase: nodeops.PhaseDial, Status: nodeops.StatusUnreachable, Retryable: true, Err: syscall.ECONNREFUSED}
		})
	if res[0].Status != nodeops.StatusOK || res[0].Attempts != 3 {
		t.Errorf("n00: %+v", res[0])
	}
	if calls["n01"] != 1 || res[1].Status != nodeops.StatusFailed {
		t.Errorf("n01 called %d times: %+v", calls["n01"], res[1])
	}
	if calls["n02"] != 4 || res[2].Status != nodeops.StatusUnreachable {
		t.Errorf("n02 called %d times: %+v", calls["n02"], res[2])
	}
}

func TestCancelStopsNewWorkAndAccountsForEveryNode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var started atomic.Int32
	var events []Event
	res := Run(ctx, nodes(20), Options{Concurrency: 4, OnEvent: func(e Event) { events = append(events, e) }},
		func(ctx context.Context, tg nodeops.Target) (nodeops.Output, error) {
			if started.Add(1) == 4 {
				cancel()
			}
			if tg.Name == "n01" {
				// A runner that ignores its context: the engine still
				// returns after the grace period.
				time.Sleep(2 * time.Second)
				return nodeops.Output{}, nil
			}
			<-ctx.Done()
			return nodeops.Output{}, ctx.Err()
		})
	if started.Load() != 4 {
		t.Errorf("%d nodes started after cancel, want 4", started.Load())
	}
	ends := map[string]int{}
	for _, e := range events {
		if e.Result != nil {
			ends[e.Target.Name]++
		}
	}
	for i, r := range res {
		if r.Status != nodeops.StatusCancelled {
			t.Errorf("%s: %s", r.Target.Name, r.Status)
		}
		want := "not started"
		if i < 4 {
			want = "cancelled while running"
		}
		if r.Reason != want {
			t.Errorf("%s: reason %q, want %q", r.Target.Name, r.Reason, want)
		}
		if ends[r.Target.Name] != 1 {
			t.Errorf("%s: %d end events", r.Target.Name, ends[r.Target.Name])
		}
	}
}

func TestPerNodeTimeout(t *testing.T) {
	res := Run(context.Background(), nodes(2), Options{Concurrency: 2, Timeout: 50 * time.Millisecond},
		func(ctx context.Context, tg nodeops.Target) (nodeops.Output, error) {
			if tg.Name == "n00" {
				return nodeops.Output{}, nil
			}
			<-ctx.Done()
			return nodeops.Output{}, &nodeops.Error{Node: tg.Name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "timeout", Err: ctx.Err()}
		})
	if res[0].Status != nodeops.StatusOK || res[1].Status != nodeops.StatusFailed || res[1].Reason != "timeout" {
		t.Errorf("%+v", res)
	}
}

// A consumer that stops reading (a TUI busy redrawing, a terminal on
// scroll-lock) must not hold up the nodes: every node's work finishes while
// the consumer is stalled, and every event still arrives afterwards, in
// order per node.
func TestSlowConsumerDoesNotStallNodes(t *testing.T) {
	const n = 200
	targets := make([]nodeops.Target, n)
	for i := range targets {
		targets[i] = nodeops.Target{Name: fmt.Sprintf("n%d", i)}
	}
	release := make(chan struct{})
	var got []Event
	var worked atomic.Int64
	allWorked := make(chan struct{})
	opts := Options{Concurrency: 16, OnEvent: func(e Event) {
		<-release
		got = append(got, e)
	}}
	done := make(chan []Result)
	go func() {
		done <- Run(context.Background(), targets, opts, func(ctx context.Context, t nodeops.Target) (nodeops.Output, error) {
			if worked.Add(1) == n {
				close(allWorked)
			}
			return nodeops.Output{}, nil
		})
	}()
	select {
	case <-allWorked:
	case <-time.After(time.Minute):
		t.Fatalf("only %d of %d nodes worked while the event consumer was stalled", worked.Load(), n)
	}
	close(release)
	res := <-done
	if len(got) != 2*n {
		t.Fatalf("%d events, want %d (started and finished per node)", len(got), 2*n)
	}
	seen := map[int]EventType{}
	for _, e := range got {
		if e.Type == EventStarted && seen[e.Index] != "" || e.Type == EventFinished && seen[e.Index] != EventStarted {
			t.Fatalf("node %d: %s after %q", e.Index, e.Type, seen[e.Index])
		}
		seen[e.Index] = e.Type
	}
	if !Summarize(res, 0).OK() {
		t.Error("not every node ok")
	}
}

// Levers return typed results per node, not only command output.
func TestTypedResults(t *testing.T) {
	type stopped struct{ Pods []string }
	targets := []nodeops.Target{{Name: "a"}, {Name: "b"}}
	res := RunOf(context.Background(), targets, OptionsOf[stopped]{Concurrency: 2}, func(ctx context.Context, t nodeops.Target) (stopped, error) {
		if t.Name == "b" {
			return stopped{}, errors.New("containerd: unavailable")
		}
		return stopped{Pods: []string{"telemetry/agent-" + t.Name}}, nil
	})
	if res[0].Status != nodeops.StatusOK || res[0].Output.Pods[0] != "telemetry/agent-a" || res[0].ExitCode != 0 {
		t.Errorf("a: %+v", res[0])
	}
	if res[1].Status == nodeops.StatusOK || res[1].Err == nil {
		t.Errorf("b: %+v", res[1])
	}
	if s := Summarize(res, 1); s.Counts[nodeops.StatusOK] != 1 || s.Total != 2 {
		t.Errorf("summary %+v", s)
	}
}
