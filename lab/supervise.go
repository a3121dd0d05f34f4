package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Spec is how a supervised component runs: the lab's stand-in for a static
// pod manifest. The supervisor restarts the component when it exits and when
// its spec file changes, as a kubelet does for a static pod.
type Spec struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	// CPUMillis caps the component's CPU, in thousandths of a CPU, in the
	// cgroup Cgroup (as a static pod's CPU limit, or a small control-plane
	// machine, would); 0 for no cap.
	CPUMillis int    `json:"cpuMillis,omitempty"`
	Cgroup    string `json:"cgroup,omitempty"`
}

// specDir is where specs live inside a host (its own /etc/kubernetes).
const specDir = "/etc/kubernetes/lab"

func specPath(h Host, component string) string {
	return filepath.Join(h.Root, specDir, component+".json")
}

func writeSpec(h Host, component string, s Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	p := specPath(h, component)
	tmp := p + ".tmp"
	if err := writeFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func readSpec(path string) (Spec, time.Time, error) {
	var s Spec
	fi, err := os.Stat(path)
	if err != nil {
		return s, time.Time{}, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return s, time.Time{}, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, time.Time{}, fmt.Errorf("%s: %w", path, err)
	}
	if len(s.Argv) == 0 {
		return s, time.Time{}, fmt.Errorf("%s: empty argv", path)
	}
	return s, fi.ModTime(), nil
}

// Supervise runs the component described by the spec file until ctx ends,
// restarting it when it exits (with backoff) or when the spec changes. It is
// what `breakglass lab supervise` runs inside a host.
func Supervise(ctx context.Context, spec string, log io.Writer) error {
	backoff := time.Second
	said := ""
	for ctx.Err() == nil {
		s, mtime, err := readSpec(spec)
		if err != nil {
			// A spec moved away (breakglass kubelet stop moves it aside, as
			// a static pod's manifest is moved out of the manifests
			// directory): nothing runs until it is back. Said once.
			if err.Error() != said {
				fmt.Fprintf(log, "supervise: %s: %v; waiting for it\n", time.Now().Format(time.RFC3339), err)
				said = err.Error()
			}
			if !sleepCtx(ctx, time.Second) {
				break
			}
			continue
		}
		said = ""
		cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
		cmd.Env = append(os.Environ(), s.Env...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		started := time.Now()
		fmt.Fprintf(log, "supervise: %s start %s\n", started.Format(time.RFC3339), filepath.Base(s.Argv[0]))
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(log, "supervise: start: %v\n", err)
			if !sleepCtx(ctx, backoff) {
				break
			}
			continue
		}
		if s.CPUMillis > 0 {
			// Whoever needs the cap checks it from outside (cpuCapped).
			if err := capCPU(s.Cgroup, cmd.Process.Pid, s.CPUMillis); err != nil {
				fmt.Fprintf(log, "supervise: cpu cap: %v\n", err)
			}
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		reason := ""
		tick := time.NewTicker(time.Second)
	wait:
		for {
			select {
			case err := <-done:
				fmt.Fprintf(log, "supervise: exited: %v\n", err)
				reason = "exit"
				break wait
			case <-ctx.Done():
				reason = "stop"
				break wait
			case <-tick.C:
				fi, err := os.Stat(spec)
				if errors.Is(err, fs.ErrNotExist) {
					// As kubelet removes a static pod whose manifest is
					// gone.
					fmt.Fprintf(log, "supervise: %s: spec removed, stopping\n", time.Now().Format(time.RFC3339))
					reason = "removed"
					break wait
				}
				if err == nil && !fi.ModTime().Equal(mtime) {
					next, nmtime, err := readSpec(spec)
					if err == nil && slices.Equal(next.Argv, s.Argv) && slices.Equal(next.Env, s.Env) {
						// Only the CPU cap changed: resized in place, as
						// kubelet resizes a pod's CPU, without a restart.
						name := next.Cgroup
						if name == "" {
							name = s.Cgroup
						}
						if err := capCPU(name, cmd.Process.Pid, next.CPUMillis); err != nil {
							fmt.Fprintf(log, "supervise: cpu cap: %v\n", err)
						}
						fmt.Fprintf(log, "supervise: cpu cap now %dm (0: none), not restarted\n", next.CPUMillis)
						s, mtime = next, nmtime
						continue
					}
					fmt.Fprintf(log, "supervise: spec changed, restarting\n")
					reason = "changed"
					break wait
				}
			}
		}
		tick.Stop()
		if reason != "exit" {
			stopGroup(cmd.Process.Pid, done, 10*time.Second)
		}
		if reason == "stop" {
			break
		}
		if reason == "exit" {
			if time.Since(started) > 30*time.Second {
				backoff = time.Second
			}
			if !sleepCtx(ctx, backoff) {
				break
			}
			backoff = min(2*backoff, 10*time.Second)
		}
	}
	return nil
}

// stopGroup sends SIGTERM to a process group and SIGKILL after grace.
func stopGroup(pgid int, done <-chan error, grace time.Duration) {
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// SuperviseMain is the body of `breakglass lab supervise SPEC`: it stops the
// component on SIGTERM or SIGINT.
func SuperviseMain(spec string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return Supervise(ctx, spec, os.Stdout)
}

// startSupervised starts `SELF lab supervise SPEC` inside the host, detached
// from this process, logging to DIR/logs/HOST-COMPONENT.log.
func (l *Lab) startSupervised(h Host, component string, s Spec) error {
	if err := writeSpec(h, component, s); err != nil {
		return err
	}
	logPath := filepath.Join(l.State.Dir, "logs", h.Name+"-"+component+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	argv := h.inHost(l.opts.Self, "lab", "supervise", filepath.Join(specDir, component+".json"))
	noInheritedFDs()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start %s: %w", h.Name, component, err)
	}
	pidPath := filepath.Join(l.State.Dir, "run", h.Name+"-"+component+".pid")
	if err := writeFile(pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return err
	}
	return cmd.Process.Release()
}

// noInheritedFDs marks every file descriptor this process inherited (beyond
// stdin, stdout and stderr) close-on-exec, once, before the lab starts its
// long-lived supervisors: Go opens its own files close-on-exec, but a
// descriptor inherited from the caller is passed on to every child, so a
// `flock LOCK breakglass lab up` would leave the lock held by the lab's
// daemons until lab down.
var noInheritedFDs = sync.OnceFunc(func() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
})
