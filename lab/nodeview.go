package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The incidents judge what runs from the nodes themselves, never from pod
// status written through the apiserver they are saturating: a kubelet whose
// status update is refused still runs its containers.

// runningPodContainers counts, on one worker, the running app containers
// (not sandboxes) of pods in namespace ns, as that worker's containerd
// reports them.
func runningPodContainers(ctx context.Context, h Host, ns string) (int, error) {
	filter := `labels."io.cri-containerd.kind"==container,labels."io.kubernetes.pod.namespace"==` + ns
	ids, err := shIn(ctx, h, "ctr", "-n", "k8s.io", "containers", "ls", "-q", filter)
	if err != nil {
		return 0, fmt.Errorf("%s: containerd: %w", h.Name, err)
	}
	if strings.TrimSpace(ids) == "" {
		return 0, nil
	}
	tasks, err := shIn(ctx, h, "ctr", "-n", "k8s.io", "tasks", "ls")
	if err != nil {
		return 0, fmt.Errorf("%s: containerd: %w", h.Name, err)
	}
	running := map[string]bool{}
	for _, line := range strings.Split(tasks, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "RUNNING" {
			running[f[0]] = true
		}
	}
	n := 0
	for _, id := range strings.Fields(ids) {
		if running[id] {
			n++
		}
	}
	return n, nil
}

// NodeCount is what one worker's containerd shows of a namespace.
type NodeCount struct {
	Node    string `json:"node"`
	Running int    `json:"running"`
}

// countOnWorkers asks every worker's containerd how many containers of
// namespace ns run there.
func (l *Lab) countOnWorkers(ctx context.Context, ns string) ([]NodeCount, error) {
	var out []NodeCount
	for _, w := range l.State.HostsWithRole("worker") {
		n, err := runningPodContainers(ctx, w, ns)
		if err != nil {
			return out, err
		}
		out = append(out, NodeCount{w.Name, n})
	}
	return out, nil
}

func describeCounts(cs []NodeCount) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s=%d", c.Node, c.Running))
	}
	return strings.Join(parts, " ")
}

// processArgvs returns the command lines of every process on the machine
// whose program is bin. The lab's hosts share the machine's PID namespace,
// so this sees the components of every host.
func processArgvs(bin string) [][]string {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out [][]string
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		if argv[0] == bin {
			out = append(out, argv)
		}
	}
	return out
}

// onlyArgvRunning reports whether exactly the processes of want's program
// that run now all have want's command line, and at least one does: the
// supervisor has stopped the old process and started the new one.
func onlyArgvRunning(want []string) (bool, string) {
	procs := processArgvs(want[0])
	if len(procs) == 0 {
		return false, "no " + filepath.Base(want[0]) + " process"
	}
	for _, argv := range procs {
		if !slices.Equal(argv, want) {
			return false, "the old " + filepath.Base(want[0]) + " process still runs"
		}
	}
	return true, ""
}
