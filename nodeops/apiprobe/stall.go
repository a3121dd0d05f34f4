package apiprobe

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/breakglass/breakglass/nodeops"
)

// CPUStall is how much of about a second the node's API server could not
// run for want of CPU: the share of that time in which every one of its
// threads that had work waited for a CPU (the "full" line of its cgroup's
// cpu.pressure, Linux's pressure stall information). A CPU limit's
// throttling counts, and so does a node whose CPUs are all taken. An API
// server that answers /readyz (the probes are exempt from API Priority and
// Fairness, and cheap) may still be starved of the CPU its load needs, and
// a restart needs more of it than it has (post-start hooks, caches
// refilled from etcd, every client's LIST again).
type CPUStall struct {
	// Known says Percent was measured; Why says why not otherwise.
	Known   bool    `json:"known"`
	Percent float64 `json:"percent"`
	// Window is how long it was measured over.
	Window time.Duration `json:"window"`
	// Source is the cpu.pressure file read.
	Source string `json:"source,omitempty"`
	Why    string `json:"why,omitempty"`
}

func (s CPUStall) String() string {
	if !s.Known {
		return "CPU stall unknown (" + s.Why + ")"
	}
	return fmt.Sprintf("its threads waited for CPU %.0f%% of %s", s.Percent, s.Window.Round(10*time.Millisecond))
}

// StallScript reads the "full" total of the newest kube-apiserver's
// cgroup cpu.pressure (cgroup v2 at /sys/fs/cgroup, or at
// /sys/fs/cgroup/unified beside a v1 hierarchy) twice, a second apart, with
// the times of the reads (/proc/uptime).
const StallScript = findProcess + `[ -n "$best" ] || { echo "U no kube-apiserver process runs"; exit 0; }
u=$(sed -n 's/^0:://p' /proc/$best/cgroup 2>/dev/null)
f=
if [ -n "$u" ] && [ "$u" != / ]; then
  for r in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    if [ -r "$r$u/cpu.pressure" ]; then f=$r$u/cpu.pressure; break; fi
  done
fi
[ -n "$f" ] || { echo "U no cpu.pressure for its cgroup (pressure stall information needs cgroup v2 and a kernel with PSI on)"; exit 0; }
full() { awk '$1=="full" { for (i = 2; i <= NF; i++) if ($i ~ /^total=/) { sub(/^total=/, "", $i); print $i } }' "$f"; }
a=$(full); t0=$(cut -d' ' -f1 /proc/uptime)
sleep 1
b=$(full); t1=$(cut -d' ' -f1 /proc/uptime)
echo "F $f"
echo "S ${a:-x} ${b:-x} $t0 $t1"
exit 0`

// Stall runs StallScript on the node.
func Stall(ctx context.Context, r nodeops.Runner, t nodeops.Target) (CPUStall, error) {
	out, err := r.Run(ctx, t, nodeops.Command{Line: StallScript})
	if err != nil {
		return CPUStall{}, err
	}
	return ParseStall(out.Stdout), nil
}

// ParseStall reads StallScript's output.
func ParseStall(out []byte) CPUStall {
	s := CPUStall{Why: "no answer from the script"}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rec, rest, _ := strings.Cut(sc.Text(), " ")
		switch rec {
		case "U":
			s.Why = rest
		case "F":
			s.Source = rest
		case "S":
			f := strings.Fields(rest)
			if len(f) != 4 {
				s.Why = fmt.Sprintf("unreadable sample %q", rest)
				continue
			}
			a, errA := strconv.ParseUint(f[0], 10, 64)
			b, errB := strconv.ParseUint(f[1], 10, 64)
			t0, errT0 := strconv.ParseFloat(f[2], 64)
			t1, errT1 := strconv.ParseFloat(f[3], 64)
			if errA != nil || errB != nil || b < a {
				s.Why = fmt.Sprintf("no full total in %s", s.Source)
				continue
			}
			window := time.Second
			if errT0 == nil && errT1 == nil && t1 > t0 {
				window = time.Duration((t1 - t0) * float64(time.Second))
			}
			stalled := time.Duration(b-a) * time.Microsecond
			s.Known, s.Why, s.Window = true, "", window
			s.Percent = min(100, 100*stalled.Seconds()/window.Seconds())
		}
	}
	return s
}
