package fanout

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// MinHeapGrowth is how much the heap may grow between two garbage
// collections, at least, once TuneGC is on.
const MinHeapGrowth = 256 << 20

// TuneGC sets the garbage collector for a process that fans out to many
// nodes: breakglass's main calls it, and so do the benchmarks' clients,
// which stand for it. Each node in flight allocates an SSH connection
// (key exchange, buffers) and, for the pods levers, a gRPC connection over
// it, most of it garbage a moment later; with Go's default (collect when
// the heap has doubled) a run over thousands of nodes collected about
// every 900 nodes, and the collector was a tenth of the client's CPU
// (docs/pods.md). After each collection TuneGC lets the heap grow by
// MinHeapGrowth or by the live heap, whichever is more, and by at most
// ten times the live heap: a small heap is
// collected less often, and a large one (65,000 nodes' plans) exactly as
// by default, so the peak memory of a large run does not grow. A GOGC in
// the environment is the user's choice and turns TuneGC off.
func TuneGC() {
	if os.Getenv("GOGC") != "" {
		return
	}
	retune(nil)
}

// gcSentinel is garbage as soon as it is made: its finalizer runs after
// the next collection, sets the collector for the one after, and makes
// the next sentinel.
type gcSentinel struct{ _ [16]byte }

func retune(*gcSentinel) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	var live uint64
	if sample[0].Value.Kind() == metrics.KindUint64 {
		live = sample[0].Value.Uint64()
	}
	debug.SetGCPercent(gcPercent(live))
	runtime.SetFinalizer(&gcSentinel{}, retune)
}

// gcPercent is the GOGC that lets a heap of live bytes grow by
// MinHeapGrowth, or double, whichever is more; at most 1000 (ten times).
// A live heap of 0 (no collection yet) gets 1000.
func gcPercent(live uint64) int {
	if live == 0 {
		return 1000
	}
	return int(max(100, min(1000, MinHeapGrowth*100/live)))
}
