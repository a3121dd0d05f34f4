package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What runs on a host, read from /proc on the machine: the lab's hosts
// share its kernel, and each worker's pods live under its kubelet's cgroup
// root (/bglab-worker-N), so a process's cgroup says which worker runs it.
// Tests use this to judge a lever by what the nodes run, never by what
// breakglass itself reports.

// ProcessesOnWorkers counts, per worker, the processes whose executable's
// base name is exe (the telemetry agent's binary, say).
func (l *Lab) ProcessesOnWorkers(exe string) (map[string]int, error) {
	out := map[string]int{}
	workers := l.State.HostsWithRole("worker")
	for _, w := range workers {
		out[w.Name] = 0
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || filepath.Base(strings.TrimSuffix(target, " (deleted)")) != exe {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
		if err != nil {
			continue
		}
		for _, w := range workers {
			if strings.Contains(string(cg), cgroupRoot(w)+"/") {
				out[w.Name]++
			}
		}
	}
	return out, nil
}

// staticPodExes are the commands of cp-1's static pods.
var staticPodExes = []string{etcdExe, apiserverExe, controllerManagerExe, schedulerExe}

// componentPID returns the pid of a component on host: the child of its
// supervisor, or for a static pod's component (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) its one process in the host's
// pods.
func (l *Lab) componentPID(host, component string) (int, error) {
	if slices.Contains(staticPodExes, component) {
		h, ok := l.State.Host(host)
		if !ok {
			return 0, fmt.Errorf("no lab host %s", host)
		}
		procs := processArgvs(h, component)
		if len(procs) != 1 {
			return 0, fmt.Errorf("%s: %d %s processes run in its pods, want 1\nhint: see %s", host, len(procs), component, staticPodLogs(h, component))
		}
		for pid := range procs {
			return pid, nil
		}
	}
	b, err := os.ReadFile(filepath.Join(l.State.Dir, "run", host+"-"+component+".pid"))
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", host, component, err)
	}
	sup, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after
		// the last ')'.
		s := string(st)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(sup) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("%s: %s is not running (no child of its supervisor %d)", host, component, sup)
}

// RestartComponent kills a supervised component (containerd, kubelet,
// kube-controller-manager...) with SIGKILL, as a crash would, and waits
// until its supervisor runs it again (a new process for at least a
// second). It returns the new pid.
func (l *Lab) RestartComponent(ctx context.Context, host, component string) (int, error) {
	old, err := l.componentPID(host, component)
	if err != nil {
		return 0, err
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		return 0, fmt.Errorf("%s: kill %s (%d): %w", host, component, old, err)
	}
	var pid int
	var since time.Time
	err = poll(ctx, 100*time.Millisecond, time.Minute, func(context.Context) bool {
		p, err := l.componentPID(host, component)
		if err != nil || p == old {
			since = time.Time{}
			return false
		}
		if p != pid {
			pid, since = p, time.Now()
		}
		return time.Since(since) >= time.Second
	})
	if err == errTimeout {
		return 0, fmt.Errorf("%s: %s did not run again within a minute of being killed\nhint: see %s", host, component, filepath.Join(l.State.Dir, "logs", host+"-"+component+".log"))
	}
	return pid, err
}

// staticPodLogs is where h's kubelet keeps the logs of its static pod
// name.
func staticPodLogs(h Host, name string) string {
	return filepath.Join(h.Root, "/var/log/pods", "kube-system_"+name+"-"+h.Name+"_*")
}

// waitStaticPods waits until a process of each of exes runs in h's pods.
func (l *Lab) waitStaticPods(ctx context.Context, h Host, timeout time.Duration, exes ...string) error {
	var missing []string
	err := poll(ctx, 200*time.Millisecond, timeout, func(context.Context) bool {
		missing = missing[:0]
		for _, e := range exes {
			if len(processArgvs(h, e)) == 0 {
				missing = append(missing, e)
			}
		}
		return len(missing) == 0
	})
	if err == errTimeout {
		return fmt.Errorf("%s: no %s process in its pods after %s\nhint: see %s and %s", h.Name, strings.Join(missing, ", "), timeout,
			filepath.Join(h.Root, "/var/log/pods"), filepath.Join(l.State.Dir, "logs", h.Name+"-kubelet.log"))
	}
	return err
}

// FreezeComponent stops a component with SIGSTOP (as a hung
// process would be) and returns the function that thaws it.
func (l *Lab) FreezeComponent(host, component string) (thaw func() error, err error) {
	pid, err := l.componentPID(host, component)
	if err != nil {
		return nil, err
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("%s: stop %s (%d): %w", host, component, pid, err)
	}
	return func() error { return syscall.Kill(pid, syscall.SIGCONT) }, nil
}

// HealAPIServer gives the apiserver its default limits back (the first
// step of an incident's reset) and leaves every object as it is.
func (l *Lab) HealAPIServer(ctx context.Context) error {
	if l.apiserverHasDefaultFlags() {
		return nil
	}
	return l.setAPIServerSpec(ctx, l.defaultAPIServerSpec())
}
