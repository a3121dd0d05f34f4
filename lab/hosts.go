package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/breakglass/breakglass/nodeops"
)

// Names shared by every lab on the machine; `lab down` finds leftovers by
// them even when lab.json is gone.
const (
	netnsPrefix = "bglab-"
	vethPrefix  = "bgl-"
	runDir      = "/run/bglab"
	nsDir       = "/run/bglab/ns"
	bridgeName  = "bglab0"
	// cgroupPrefix names the cgroup each worker's kubelet uses as its root.
	cgroupPrefix = "bglab-"
)

// hostMounts are the directories each host sees at their default paths:
// the host's own copy is bind-mounted over them in its mount namespace.
var hostMounts = []string{
	"/etc/kubernetes",
	"/etc/containerd",
	"/etc/cni/net.d",
	"/var/lib/kubelet",
	"/var/lib/containerd",
	"/var/lib/etcd",
	"/var/lib/cni",
	"/var/log/pods",
	"/var/log/containers",
	"/run/containerd",
	"/run/netns",
}

// rootShellFiles are hidden inside every host (see createHost).
var rootShellFiles = []string{"/root/.bashrc", "/root/.profile", "/root/.bash_profile", "/root/.bash_login"}

// createdDirsFile records the mount points lab up had to create on the
// machine, so that lab down removes them again.
const createdDirsFile = runDir + "/created-dirs"

// StandbyRole is the role of a control-plane host that runs a kubelet and
// containerd but no API server yet: where breakglass apiserver add brings
// one up.
const StandbyRole = "standby"

// planHosts names and addresses the hosts: cp-1 at .10, the standby cp-2
// at .11 (unless noStandby), workers from .21, sshd-only hosts (role
// "ssh", for fan-out benchmarks) from .100.
func planHosts(dir string, subnet netip.Prefix, workers, sshHosts int, noStandby bool) ([]Host, error) {
	base := subnet.Addr()
	if !base.Is4() || subnet.Bits() > 24 {
		return nil, fmt.Errorf("subnet %s: want an IPv4 prefix of /24 or larger", subnet)
	}
	if workers < 1 || workers > 70 {
		return nil, fmt.Errorf("--workers %d: must be between 1 and 70", workers)
	}
	if sshHosts < 0 || sshHosts > 150 {
		return nil, fmt.Errorf("--ssh-hosts %d: must be between 0 and 150", sshHosts)
	}
	addr := func(n int) string {
		b := base.As4()
		b[3] = byte(n)
		return netip.AddrFrom4(b).String()
	}
	mk := func(name string, roles []string, a string) Host {
		return Host{
			Name: name, Roles: roles, Address: a,
			Netns:   netnsPrefix + name,
			MountNS: filepath.Join(nsDir, name+".mnt"),
			UTSNS:   filepath.Join(nsDir, name+".uts"),
			Root:    filepath.Join(dir, "hosts", name),
		}
	}
	hosts := []Host{mk("cp-1", []string{"control-plane"}, addr(10))}
	if !noStandby {
		hosts = append(hosts, mk("cp-2", []string{StandbyRole}, addr(11)))
	}
	for i := 1; i <= workers; i++ {
		hosts = append(hosts, mk(fmt.Sprintf("worker-%d", i), []string{"worker"}, addr(20+i)))
	}
	for i := 1; i <= sshHosts; i++ {
		hosts = append(hosts, mk(fmt.Sprintf("ssh-%d", i), []string{"ssh"}, addr(99+i)))
	}
	return hosts, nil
}

func bridgeAddr(subnet netip.Prefix) string {
	b := subnet.Addr().As4()
	b[3] = 1
	return netip.AddrFrom4(b).String()
}

// setupBridge creates the lab bridge with the operator's address on it.
func setupBridge(ctx context.Context, subnet netip.Prefix) error {
	if _, err := sh(ctx, "ip", "link", "add", bridgeName, "type", "bridge"); err != nil {
		return err
	}
	if _, err := sh(ctx, "ip", "addr", "add", fmt.Sprintf("%s/%d", bridgeAddr(subnet), subnet.Bits()), "dev", bridgeName); err != nil {
		return err
	}
	_, err := sh(ctx, "ip", "link", "set", bridgeName, "up")
	return err
}

// setupNSDir makes the directory that holds the namespace files a private
// mount, which the kernel requires before a mount namespace can be pinned
// by a bind mount.
func setupNSDir(ctx context.Context) error {
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		return err
	}
	if isMountPoint(nsDir) {
		return nil
	}
	if _, err := sh(ctx, "mount", "--bind", nsDir, nsDir); err != nil {
		return err
	}
	_, err := sh(ctx, "mount", "--make-private", nsDir)
	return err
}

// createHost makes a host: its network namespace on the bridge, its mount
// and UTS namespaces with its own copies of the default paths.
func createHost(ctx context.Context, h Host, subnet netip.Prefix) error {
	if _, err := sh(ctx, "ip", "netns", "add", h.Netns); err != nil {
		return err
	}
	veth := vethPrefix + h.Name
	if len(veth) > 15 {
		return fmt.Errorf("host name %q too long for an interface name", h.Name)
	}
	steps := [][]string{
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.Netns},
		{"ip", "link", "set", veth, "master", bridgeName},
		{"ip", "link", "set", veth, "up"},
		{"ip", "-n", h.Netns, "addr", "add", fmt.Sprintf("%s/%d", h.Address, subnet.Bits()), "dev", "eth0"},
		{"ip", "-n", h.Netns, "link", "set", "eth0", "up"},
		{"ip", "-n", h.Netns, "link", "set", "lo", "up"},
		{"ip", "-n", h.Netns, "route", "add", "default", "via", bridgeAddr(subnet)},
	}
	for _, s := range steps {
		if _, err := sh(ctx, s[0], s[1:]...); err != nil {
			return err
		}
	}
	// Pods get forwarded traffic through the host.
	if _, err := sh(ctx, "ip", "netns", "exec", h.Netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}

	for _, m := range hostMounts {
		if err := os.MkdirAll(filepath.Join(h.Root, m), 0o755); err != nil {
			return err
		}
		if err := ensureMountPoint(m); err != nil {
			return err
		}
	}
	for _, f := range []string{h.MountNS, h.UTSNS} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			return err
		}
	}
	// The script runs inside the new namespaces: bind the host's own
	// directories over the default paths, then make the tree shared within
	// the host (kubelet and containerd expect shared mounts), which does not
	// propagate back to the machine because the namespace began private.
	var script strings.Builder
	fmt.Fprintf(&script, "set -e\nhostname %s\n", h.Name)
	for _, m := range hostMounts {
		fmt.Fprintf(&script, "mount --bind %s %s\n", nodeops.ShellQuote(filepath.Join(h.Root, m)), m)
	}
	// Root's shell start-up files belong to the machine, not to the host:
	// an SSH command on a lab host runs a plain shell, as on a fresh node
	// (the machine's .bashrc may run slow or locking tools at every login).
	rc := filepath.Join(h.Root, "root-shell-rc")
	if err := os.WriteFile(rc, []byte("# lab host "+h.Name+": no shell start-up\n"), 0o644); err != nil {
		return err
	}
	for _, f := range rootShellFiles {
		fmt.Fprintf(&script, "if [ -f %[1]s ]; then mount --bind %[2]s %[1]s; fi\n", f, nodeops.ShellQuote(rc))
	}
	// The host resolves its own name, as a node does: sudo looks it up,
	// and with no DNS in the lab it would wait 20 s for each lookup.
	hosts := filepath.Join(h.Root, "etc-hosts")
	if err := os.WriteFile(hosts, []byte(fmt.Sprintf("127.0.0.1 localhost\n::1 localhost\n%s %s\n", h.Address, h.Name)), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(&script, "mount --bind %s /etc/hosts\n", nodeops.ShellQuote(hosts))
	script.WriteString("mount --make-rshared /\n")
	_, err := sh(ctx, "unshare", "--mount="+h.MountNS, "--uts="+h.UTSNS, "--propagation", "private", "sh", "-c", script.String())
	return err
}

// ensureMountPoint creates a missing mount point and records that lab up
// made it.
func ensureMountPoint(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(createdDirsFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, dir)
	return err
}

func isMountPoint(path string) bool { return slices.Contains(mountPoints(), path) }

// mountPoints lists the machine's mount points (this process's namespace).
func mountPoints() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
