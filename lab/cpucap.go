package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cpuPeriodUs is the CFS period of a CPU cap; the quota is a share of it.
const cpuPeriodUs = 100000

// cpuHierarchy finds where the cpu controller is mounted: a cgroup v1
// hierarchy with cpu.cfs_quota_us, or the v2 one whose controllers include
// cpu. v2 says so.
func cpuHierarchy() (dir string, v2 bool, err error) {
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, "cpu.cfs_quota_us")); err == nil {
			return h, false, nil
		}
	}
	for _, h := range cgroupHierarchies() {
		b, err := os.ReadFile(filepath.Join(h, "cgroup.controllers"))
		if err == nil && slices.Contains(strings.Fields(string(b)), "cpu") {
			return h, true, nil
		}
	}
	return "", false, fmt.Errorf("no cgroup hierarchy has the cpu controller (looked at %v)", cgroupHierarchies())
}

// capCPU puts process pid in the cgroup name (under the cpu controller)
// with a quota of millis thousandths of a CPU: the lab's stand-in for a
// control-plane machine, or a static pod's CPU limit, that is small for
// the load put on it. With millis 0 it moves the process back to the
// root, uncapped. It works on a running process, as an in-place resize
// of a pod's CPU does. The cgroup is named with the lab's prefix, so lab
// down removes it.
func capCPU(name string, pid, millis int) error {
	if !strings.HasPrefix(name, cgroupPrefix) {
		return fmt.Errorf("internal: cgroup %q does not start with %q", name, cgroupPrefix)
	}
	hier, v2, err := cpuHierarchy()
	if err != nil {
		return err
	}
	if millis == 0 {
		return os.WriteFile(filepath.Join(hier, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
	}
	dir := filepath.Join(hier, name)
	quota := millis * cpuPeriodUs / 1000
	files := [][2]string{{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUs)}, {"cpu.cfs_quota_us", strconv.Itoa(quota)}}
	if v2 {
		// The controller must be on for the root's children.
		os.WriteFile(filepath.Join(hier, "cgroup.subtree_control"), []byte("+cpu"), 0o644)
		files = [][2]string{{"cpu.max", fmt.Sprintf("%d %d", quota, cpuPeriodUs)}}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	for _, f := range append(files, [2]string{"cgroup.procs", strconv.Itoa(pid)}) {
		if err := os.WriteFile(filepath.Join(dir, f[0]), []byte(f[1]), 0o644); err != nil {
			return fmt.Errorf("cgroup %s/%s: %w", dir, f[0], err)
		}
	}
	return nil
}
