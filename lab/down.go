package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// leftovers lists what a lab leaves on the machine: namespaces, the bridge,
// namespace files, cgroups and processes. Empty means the machine is clean.
func leftovers(ctx context.Context) []string {
	var out []string
	for _, ns := range labNetns() {
		out = append(out, "netns "+ns)
	}
	if _, err := os.Stat("/sys/class/net/" + bridgeName); err == nil {
		out = append(out, "bridge "+bridgeName)
	}
	for _, l := range labLinks() {
		out = append(out, "link "+l)
	}
	for _, m := range labMounts("") {
		out = append(out, "mount "+m)
	}
	for _, c := range labCgroups() {
		out = append(out, "cgroup "+c)
	}
	for _, p := range labProcesses() {
		out = append(out, fmt.Sprintf("process %d (%s)", p, procName(p)))
	}
	if _, err := os.Stat(runDir); err == nil {
		out = append(out, "dir "+runDir)
	}
	return out
}

// Leftovers is leftovers for callers outside the package (tests, status).
func Leftovers(ctx context.Context) []string { return leftovers(ctx) }

// labLinks lists the hosts' veth ends in the machine's namespace. A veth
// pair goes when its namespace goes, but the kernel tears namespaces down
// asynchronously (seconds later under gVisor): lab down deletes them itself,
// so that a lab up right after it does not find them.
func labLinks() []string {
	ents, _ := os.ReadDir("/sys/class/net")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), vethPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func labNetns() []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), netnsPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// labMounts lists mount points in this namespace that belong to a lab:
// under runDir, or under dir if given.
func labMounts(dir string) []string {
	var out []string
	for _, m := range mountPoints() {
		if m == runDir || strings.HasPrefix(m, runDir+"/") || (dir != "" && (m == dir || strings.HasPrefix(m, dir+"/"))) {
			out = append(out, m)
		}
	}
	return out
}

// labCgroups lists the cgroup directories the lab's kubelets use as roots.
func labCgroups() []string {
	var out []string
	for _, hier := range cgroupHierarchies() {
		ents, _ := os.ReadDir(hier)
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), cgroupPrefix) {
				out = append(out, filepath.Join(hier, e.Name()))
			}
		}
	}
	return out
}

// labProcesses finds every process that belongs to a lab: in a lab network
// or mount namespace, or in a lab cgroup (containers run in namespaces of
// their own, but always in the kubelet's cgroups).
func labProcesses() []int {
	nsIDs := map[string]bool{}
	for _, ns := range labNetns() {
		if id, err := nsID("/run/netns/" + ns); err == nil {
			nsIDs["net:"+id] = true
		}
	}
	ents, _ := os.ReadDir(nsDir)
	for _, e := range ents {
		p := filepath.Join(nsDir, e.Name())
		if id, err := nsID(p); err == nil {
			kind := "mnt:"
			if strings.HasSuffix(e.Name(), ".uts") {
				kind = "uts:"
			}
			nsIDs[kind+id] = true
		}
	}
	pids := map[int]bool{}
	procs, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		for _, kind := range []string{"net", "mnt", "uts"} {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
			if err != nil {
				continue
			}
			// link looks like "net:[4026532281]"
			id := strings.TrimSuffix(strings.TrimPrefix(link, kind+":["), "]")
			if nsIDs[kind+":"+id] {
				pids[pid] = true
			}
		}
	}
	for _, cg := range labCgroups() {
		filepath.WalkDir(cg, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || (d.Name() != "cgroup.procs" && d.Name() != "tasks") {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid != self {
					pids[pid] = true
				}
			}
			return nil
		})
	}
	out := make([]int, 0, len(pids))
	for p := range pids {
		// Kernel threads and processes that vanished meanwhile are skipped.
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p)); err == nil {
			out = append(out, p)
		}
	}
	sort.Ints(out)
	return out
}

// nsID returns the inode number of a namespace file.
func nsID(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", err
	}
	return strconv.FormatUint(st.Ino, 10), nil
}

func procName(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// Down removes everything a lab made: processes (supervisors, components and
// containers), namespaces, mounts, the bridge, cgroups and files. It works
// from what it finds on the machine, so it also cleans up after a crashed
// lab up or a lost lab.json. dir is the lab directory to remove.
func Down(ctx context.Context, dir string, log io.Writer) error {
	logf := func(format string, a ...any) { fmt.Fprintf(log, "lab: "+format+"\n", a...) }
	dir, err := downDir(dir)
	if err != nil {
		return err
	}
	var problems []string

	// Processes: supervisors first would restart nothing once they are gone,
	// but killing everything at once is simpler and as safe.
	killed := 0
	for round := 0; round < 40; round++ {
		pids := labProcesses()
		if len(pids) == 0 {
			break
		}
		sig := syscall.SIGTERM
		if round >= 10 {
			sig = syscall.SIGKILL
		}
		for _, p := range pids {
			if round == 0 {
				killed++
			}
			syscall.Kill(p, sig)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if left := labProcesses(); len(left) > 0 {
		problems = append(problems, fmt.Sprintf("processes still running: %v", left))
	}
	if killed > 0 {
		logf("stopped %d processes", killed)
	}

	// Namespace files, then the namespaces and the bridge.
	ents, _ := os.ReadDir(nsDir)
	for _, e := range ents {
		p := filepath.Join(nsDir, e.Name())
		if isMountPoint(p) {
			if _, err := sh(ctx, "umount", p); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	for _, ns := range labNetns() {
		if _, err := sh(ctx, "ip", "netns", "del", ns); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if _, err := os.Stat("/sys/class/net/" + bridgeName); err == nil {
		if _, err := sh(ctx, "ip", "link", "del", bridgeName); err != nil {
			problems = append(problems, err.Error())
		}
	}
	for _, l := range labLinks() {
		// Deleting one end deletes the pair; the kernel may have done it
		// meanwhile, which is fine.
		if _, err := sh(ctx, "ip", "link", "del", l); err != nil {
			if _, gone := os.Stat("/sys/class/net/" + l); gone == nil {
				problems = append(problems, err.Error())
			}
		}
	}
	// Any mount left under the lab's paths (deepest first).
	mounts := labMounts(dir)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if _, err := sh(ctx, "umount", "-l", m); err != nil {
			problems = append(problems, err.Error())
		}
	}

	// cgroups, deepest first; the kernel refuses while a task is inside.
	for _, cg := range labCgroups() {
		var dirs []string
		filepath.WalkDir(cg, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !os.IsNotExist(err) {
				problems = append(problems, fmt.Sprintf("rmdir %s: %v", dirs[i], err))
			}
		}
	}

	// Mount points lab up created on the machine.
	if b, err := os.ReadFile(createdDirsFile); err == nil {
		lines := strings.Fields(string(b))
		sort.Slice(lines, func(i, j int) bool { return len(lines[i]) > len(lines[j]) })
		for _, d := range lines {
			os.Remove(d) // only if empty
		}
	}
	if err := os.RemoveAll(runDir); err != nil {
		problems = append(problems, err.Error())
	}
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, StateFile)); err == nil || isLabDir(dir) {
			if err := os.RemoveAll(dir); err != nil {
				problems = append(problems, err.Error())
			} else {
				logf("removed %s", dir)
			}
		}
	}
	if left := leftovers(ctx); len(left) > 0 {
		problems = append(problems, "left behind: "+strings.Join(left, ", "))
	}
	if len(problems) > 0 {
		return fmt.Errorf("lab down incomplete:\n  %s\nhint: run breakglass lab down again; if it persists, see docs/lab.md", strings.Join(problems, "\n  "))
	}
	return nil
}

// isLabDir recognises a lab directory whose lab.json was lost: it has the
// hosts/ and logs/ that lab up makes.
func isLabDir(dir string) bool {
	_, e1 := os.Stat(filepath.Join(dir, "hosts"))
	_, e2 := os.Stat(filepath.Join(dir, "logs"))
	return e1 == nil && e2 == nil
}
