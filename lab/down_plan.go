package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DownPlan lists what Down(ctx, dir, ...) would remove, in the order Down
// removes it, and changes nothing: it is what lab down --dry-run prints.
// Like Down it works from what it finds on the machine (the same helpers:
// labProcesses, labNetns, labMounts, labCgroups), so it lists every lab
// here, not only the one in dir. Empty means Down would do nothing.
func DownPlan(ctx context.Context, dir string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := downDir(dir)
	if err != nil {
		return nil, err
	}
	var plan []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			plan = append(plan, s)
		}
	}
	for _, p := range labProcesses() {
		add(fmt.Sprintf("process %d (%s)", p, procName(p)))
	}
	ents, _ := os.ReadDir(nsDir)
	for _, e := range ents {
		if p := filepath.Join(nsDir, e.Name()); isMountPoint(p) {
			add("mount " + p)
		}
	}
	for _, ns := range labNetns() {
		add("netns " + ns)
	}
	if _, err := os.Stat("/sys/class/net/" + bridgeName); err == nil {
		add("bridge " + bridgeName)
	}
	for _, l := range labLinks() {
		add("link " + l)
	}
	mounts := labMounts(dir)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		add("mount " + m)
	}
	for _, c := range labCgroups() {
		add("cgroup " + c)
	}
	if b, err := os.ReadFile(createdDirsFile); err == nil {
		lines := strings.Fields(string(b))
		sort.Slice(lines, func(i, j int) bool { return len(lines[i]) > len(lines[j]) })
		for _, d := range lines {
			if _, err := os.Stat(d); err == nil {
				add("dir " + d + " (if empty)")
			}
		}
	}
	if _, err := os.Stat(runDir); err == nil {
		add("dir " + runDir)
	}
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, StateFile)); err == nil || isLabDir(dir) {
			add("dir " + dir)
		}
	}
	return plan, nil
}

// downDir resolves the lab directory for Down and DownPlan: absolute, or the
// one lab.json in it names.
func downDir(dir string) (string, error) {
	if dir == "" {
		return "", nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if s, err := LoadState(abs); err == nil && s.Dir != "" {
		return s.Dir, nil
	}
	return abs, nil
}
