package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// processArgvs returns the command lines, by PID, of the processes of
// h's pods whose program is bin. The lab's hosts share the machine's PID
// namespace, so a process's cgroup (under h's kubelet's cgroup root) says
// which host runs it: cp-2's API server, once added, is not cp-1's.
func processArgvs(h Host, bin string) map[int][]string {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	out := map[int][]string{}
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		if argv[0] != bin {
			continue
		}
		cg, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cgroup"))
		if err != nil || !strings.Contains(string(cg), cgroupRoot(h)+"/") {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		out[pid] = argv
	}
	return out
}

// onlyNewRunning reports whether exactly one process of want's program
// runs, with want's command line, under want's CPU cap on h's pods; and,
// when restarted, it is none of old (the processes before the spec
// changed): the kubelet has stopped the old pod and started the new one,
// or the cap was set in place.
func onlyNewRunning(h Host, want Spec, old map[int][]string, restarted bool) (bool, string) {
	name := filepath.Base(want.Argv[0])
	procs := processArgvs(h, want.Argv[0])
	if len(procs) != 1 {
		return false, fmt.Sprintf("%d %s processes run", len(procs), name)
	}
	for pid, argv := range procs {
		if _, ok := old[pid]; ok && restarted {
			return false, "the old " + name + " process still runs"
		}
		if !slices.Equal(argv, want.Argv) {
			return false, name + " runs with other flags than its spec"
		}
	}
	got, err := hostCPUCap(h)
	if err != nil {
		return false, err.Error()
	}
	if got != want.CPUMillis {
		return false, fmt.Sprintf("%s's pods have a CPU cap of %dm, want %dm", h.Name, got, want.CPUMillis)
	}
	return true, ""
}
