package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// containerdConfig is each worker's containerd configuration. Paths are the
// defaults: each host sees its own copies through its mount namespace.
func containerdConfig() string {
	return fmt.Sprintf(`# containerd of a lab worker, written by breakglass lab up
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# Plugins that would touch paths shared by every host, or are unused.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Root on these machines lacks CAP_SYS_RESOURCE, so the oom_score_adj of
  # -998 that kubelet asks for every sandbox would fail in runc: clamp it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
`, PauseImage)
}

// cniConfig gives each worker's pods a bridge network with its own /24.
func cniConfig(index int) string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "bglab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.%d.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
`, index)
}

func cgroupRoot(h Host) string { return "/" + cgroupPrefix + h.Name }

func kubeletConfig(h Host) string {
	return fmt.Sprintf(`# kubelet of lab host %s, written by breakglass lab up
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
# Every worker shares the machine's cgroup tree: each gets its own root.
cgroupRoot: %s
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
staticPodPath: /etc/kubernetes/manifests
clusterDNS: ["%s"]
clusterDomain: cluster.local
failSwapOn: false
rotateCertificates: false
serializeImagePulls: false
# The workers share one disk: never evict or collect images for disk space.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "0%%"
  nodefs.inodesFree: "0%%"
  imagefs.available: "0%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 10s
nodeStatusReportFrequency: 30s
maxPods: 110
`, h.Name, h.Address, cgroupRoot(h), ClusterDNS)
}

func containerdSpec() Spec {
	return Spec{Argv: []string{"/usr/bin/containerd", "--config", "/etc/containerd/config.toml"}}
}

func kubeletSpec(h Host, bin string) Spec {
	argv := []string{bin,
		"--config=/etc/kubernetes/kubelet-config.yaml",
		"--kubeconfig=/etc/kubernetes/kubelet.conf",
		"--hostname-override=" + h.Name,
		"--node-ip=" + h.Address,
		"--root-dir=/var/lib/kubelet",
		"--cert-dir=/var/lib/kubelet/pki",
		"--node-labels=breakglass.lab/host=" + h.Name,
		"--v=1",
	}
	if h.HasRole("control-plane") || h.HasRole(StandbyRole) {
		// As kubeadm's control-plane nodes: only pods that tolerate it
		// (none of the lab's workloads) land there besides static pods.
		argv = append(argv, "--register-with-taints="+ControlPlaneTaint+":NoSchedule")
	}
	return Spec{Argv: argv}
}

// cgroupHierarchies lists the mounted cgroup v1 hierarchies (and the v2
// unified one if that is all there is).
func cgroupHierarchies() []string {
	var out []string
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		sep := 0
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep == 0 || sep+1 >= len(f) {
			continue
		}
		if fstype := f[sep+1]; fstype == "cgroup" || fstype == "cgroup2" {
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out
}

// createCgroupRoot makes the kubelet's cgroup root in every hierarchy; a new
// cpuset cgroup starts with no CPUs and no memory nodes, so copy the parent's.
func createCgroupRoot(h Host) error {
	for _, hier := range cgroupHierarchies() {
		dir := filepath.Join(hier, cgroupRoot(h))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(hier, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s/%s: %w", dir, f, err)
				}
			}
		}
	}
	return nil
}

// startKubeletHost configures and starts a host's containerd and kubelet
// (a worker's, or a control-plane host's that runs its static pods) and
// imports the images into its containerd.
func (l *Lab) startKubeletHost(ctx context.Context, h Host, index int, images []string) error {
	files := map[string]string{
		"/etc/containerd/config.toml":         containerdConfig(),
		"/etc/cni/net.d/10-bglab.conflist":    cniConfig(index),
		"/etc/kubernetes/kubelet-config.yaml": kubeletConfig(h),
	}
	for p, content := range files {
		if err := writeFile(filepath.Join(h.Root, p), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(h.Root, "/etc/kubernetes/manifests"), 0o755); err != nil {
		return err
	}
	if err := createCgroupRoot(h); err != nil {
		return err
	}
	if err := l.startSupervised(h, "containerd", containerdSpec()); err != nil {
		return err
	}
	if err := waitFile(ctx, filepath.Join(h.Root, "/run/containerd/containerd.sock"), 30*time.Second); err != nil {
		return fmt.Errorf("%s: containerd did not start: %w\nhint: see %s", h.Name, err, filepath.Join(l.State.Dir, "logs", h.Name+"-containerd.log"))
	}
	for _, img := range images {
		if err := importImage(ctx, h, img); err != nil {
			return err
		}
	}
	return l.startSupervised(h, "kubelet", kubeletSpec(h, l.State.Binaries.Kubelet))
}

// importImage loads an OCI tarball into the worker's containerd, in the
// namespace the CRI plugin uses. containerd may still be starting its
// plugins, so a failure is retried for a few seconds.
func importImage(ctx context.Context, h Host, tarball string) error {
	var err error
	for i := 0; i < 20; i++ {
		if _, err = shIn(ctx, h, "ctr", "-n", "k8s.io", "images", "import", tarball); err == nil {
			return nil
		}
		if !sleepCtx(ctx, 500*time.Millisecond) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("%s: import %s: %w", h.Name, filepath.Base(tarball), err)
}

func waitFile(ctx context.Context, path string, timeout time.Duration) error {
	err := poll(ctx, 100*time.Millisecond, timeout, func(context.Context) bool {
		_, err := os.Stat(path)
		return err == nil
	})
	if err == errTimeout {
		return fmt.Errorf("%s did not appear within %s", path, timeout)
	}
	return err
}
