package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ansibleRun is one Ansible row of the real-node table.
type ansibleRun struct {
	name   string
	module string
	cpDir  string // its own ControlPath directory
	env    []string
}

// ansibleRuns are the Ansible rows: Ansible as it ships (an empty config
// file, so that no ansible.cfg of the machine, the user or the working
// directory changes it), with only the bench's key and known_hosts added.
// They go in through ssh_common_args, which leaves ssh_args at its default
// of `-C -o ControlMaster=auto -o ControlPersist=60s`: Ansible's first run
// opens one SSH master connection per node and leaves it open in the
// background for 60 s, and every run within that reuses it. A round
// normally takes less than 60 s, so the rounds of an Ansible row after the
// first reuse the connections of the round before, which breakglass and the
// other clients never do; the bench says so (it counts the control sockets
// each round finds) and prints round 1 apart. Each row has its own control
// directory, so that its round 1 does open new connections.
//
// The `command` module runs twice: as it ships, and with pipelining on (one
// SSH session per node instead of several); `raw` runs no module, so
// pipelining does not apply to it.
func ansibleRuns(dir string, rn *realNodes) []ansibleRun {
	cfg := filepath.Join(dir, "ansible.cfg")
	check(os.WriteFile(cfg, nil, 0o600))
	base := []string{
		"ANSIBLE_CONFIG=" + cfg,
		"ANSIBLE_PRIVATE_KEY_FILE=" + rn.clientKey,
		"ANSIBLE_SSH_COMMON_ARGS=-o UserKnownHostsFile=" + rn.knownHosts + " -o StrictHostKeyChecking=yes",
		"ANSIBLE_LOCAL_TEMP=" + filepath.Join(dir, "ansible-tmp"),
		"ANSIBLE_NOCOLOR=1", // the output is parsed
	}
	runs := []ansibleRun{
		{name: "ansible -m raw", module: "raw"},
		{name: "ansible -m command", module: "command"},
		{name: "ansible -m command, pipelining", module: "command"},
	}
	for i := range runs {
		r := &runs[i]
		// Short: a ControlPath must fit in a socket address (108 bytes).
		r.cpDir = filepath.Join(dir, "cp"+strconv.Itoa(i))
		r.env = append(append([]string{}, base...), "ANSIBLE_SSH_CONTROL_PATH_DIR="+r.cpDir)
		if strings.HasSuffix(r.name, "pipelining") {
			r.env = append(r.env, "ANSIBLE_PIPELINING=True")
		}
	}
	return runs
}

// controlSockets counts the SSH master connections an Ansible row has open
// (ssh removes its socket when the master exits).
func controlSockets(dir string) int {
	es, _ := os.ReadDir(dir)
	return len(es)
}

// The ssh master processes that ControlPersist leaves in the background
// outlive the ansible run that started them, so RUSAGE_CHILDREN never counts
// them, yet they do the key exchanges and the encryption of every session.
// The bench makes itself a child subreaper, so that they become its
// children when their parent ssh exits, and adds their CPU during each run
// to the run's client CPU.

func becomeSubreaper() {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		check(fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err))
	}
}

// orphanSSH returns the CPU time so far of each ssh process the bench has
// inherited, by pid: the masters, and the zombies of the intermediate
// processes through which each master detached (no CPU to speak of; they
// are reaped by stopOrphans).
func orphanSSH() map[int]time.Duration {
	out := map[int]time.Duration{}
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp || s[lp+1:rp] != "ssh" {
			continue
		}
		f := strings.Fields(s[rp+1:]) // f[0] is the state, f[1] the parent
		if len(f) < 13 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != self {
			continue
		}
		out[pid] = procCPU(pid, f)
	}
	return out
}

// procCPU is the CPU time of a single-threaded process: its run time from
// schedstat, to the nanosecond (a master's share of a short run is a few
// milliseconds, under the 10 ms ticks of stat), or else user+system from
// the fields f of its stat.
func procCPU(pid int, f []string) time.Duration {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid)); err == nil {
		if ss := strings.Fields(string(b)); len(ss) > 0 {
			if ns, err := strconv.ParseInt(ss[0], 10, 64); err == nil {
				return time.Duration(ns)
			}
		}
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // CLK_TCK is 100 on Linux
}

// orphanCPU is the CPU the inherited ssh processes took between two
// orphanSSH snapshots (one that appeared in between counts from zero).
func orphanCPU(before, after map[int]time.Duration) time.Duration {
	var d time.Duration
	for pid, t := range after {
		d += t - before[pid]
	}
	return d
}

// stopOrphans ends the ssh masters the bench inherited (processes its
// clients started) and reaps them.
func stopOrphans() {
	for pid := range orphanSSH() {
		syscall.Kill(pid, syscall.SIGTERM)
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	}
}
