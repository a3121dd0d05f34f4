package main

import (
	"testing"
	"time"
)

// The agent backs off between failed LISTs as client-go's reflector does.
func TestBackoff(t *testing.T) {
	var b backoff
	now := time.Unix(1000, 0)
	none := func(int64) int64 { return 0 }
	var got []time.Duration
	for range 8 {
		got = append(got, b.next(now, none))
		now = now.Add(time.Second)
	}
	want := []time.Duration{800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond,
		12800 * time.Millisecond, 25600 * time.Millisecond, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("back-off %d: %v, want %v (all: %v)", i, got[i], want[i], got)
		}
	}
	if d := b.next(now.Add(2*time.Minute+time.Second), none); d != 800*time.Millisecond {
		t.Errorf("after two quiet minutes: %v, want 800ms again", d)
	}
	full := func(n int64) int64 { return n - 1 }
	if d := b.next(now.Add(2*time.Minute+2*time.Second), full); d != 3200*time.Millisecond-1 {
		t.Errorf("with the most jitter: %v, want just under twice 1.6s", d)
	}
}
