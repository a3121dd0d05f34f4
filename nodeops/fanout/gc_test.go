package fanout

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 1000},
		{1 << 20, 1000},          // 256 MiB is 25600% of 1 MiB: capped
		{MinHeapGrowth / 4, 400}, // a quarter: the heap may grow fourfold
		{MinHeapGrowth, 100},     // as large as the growth: Go's default
		{4 * MinHeapGrowth, 100}, // larger: never below the default
		{MinHeapGrowth / 3, 300}, // rounded down
	} {
		if got := gcPercent(c.live); got != c.want {
			t.Errorf("gcPercent(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}

// TestTuneGC: once a collection has run, a test binary's small heap gets
// the largest percent, and the tuning goes on after further collections.
func TestTuneGC(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: TuneGC leaves the collector alone")
	}
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	TuneGC()
	for i := 0; i < 3; i++ {
		debug.SetGCPercent(100)
		deadline := time.Now().Add(30 * time.Second)
		for {
			runtime.GC()
			// SetGCPercent returns the setting it replaces.
			p := debug.SetGCPercent(-1)
			debug.SetGCPercent(p)
			if p == 1000 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after collection round %d the collector's percent is %d, want 1000", i, p)
			}
			runtime.Gosched()
		}
	}
}
