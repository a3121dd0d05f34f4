package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// cp-1's control plane runs as kubeadm runs it: static pods of the
// host's kubelet, from /etc/kubernetes/manifests (etcd.yaml,
// kube-apiserver.yaml, kube-controller-manager.yaml, kube-scheduler.yaml),
// in images the lab builds from its own binaries. breakglass apiserver
// tune edits kube-apiserver.yaml on the node as it would on a kubeadm
// control plane, and the kubelet restarts the pod; kubelet stop moves
// kube-controller-manager.yaml aside, and the kubelet stops that pod.

// The images of cp-1's static pods.
const (
	APIServerImage         = "breakglass.lab/kube-apiserver:" + KubeVersion
	ControllerManagerImage = "breakglass.lab/kube-controller-manager:" + KubeVersion
	SchedulerImage         = "breakglass.lab/kube-scheduler:" + KubeVersion
	EtcdImage              = "breakglass.lab/etcd:debian"
)

// The commands of the static pods' containers: each is the argv[0] of its
// process on the machine, by which the lab finds it in /proc.
const (
	etcdExe              = "etcd"
	controllerManagerExe = "kube-controller-manager"
	schedulerExe         = "kube-scheduler"
)

const (
	// manifestsDir is the kubelet's staticPodPath on every lab host.
	manifestsDir = "/etc/kubernetes/manifests"
	// apiserverExe is the API server's command in its container, and
	// the argv[0] of its process on the machine.
	apiserverExe = "kube-apiserver"
	// ControlPlaneTaint keeps other pods off the control-plane hosts, as
	// kubeadm's does.
	ControlPlaneTaint = "node-role.kubernetes.io/control-plane"
)

// APIServerManifest is the API server's manifest on host h, as a path on
// the machine.
func APIServerManifest(h Host) string {
	return filepath.Join(h.Root, manifestsDir, "kube-apiserver.yaml")
}

// buildAPIServerImage writes the API server's image, once per binary.
func buildAPIServerImage(ctx context.Context, cacheDir, bin string) (string, error) {
	return buildComponentImage(ctx, cacheDir, bin, apiserverExe, APIServerImage)
}

// controlPlaneImages builds the images of cp-1's other static pods (etcd,
// the controller-manager, the scheduler), once per binary.
func controlPlaneImages(ctx context.Context, cacheDir string, bins Binaries) ([]string, error) {
	var out []string
	for _, c := range []struct{ bin, exe, ref string }{
		{bins.Etcd, etcdExe, EtcdImage},
		{bins.KubeControllerManager, controllerManagerExe, ControllerManagerImage},
		{bins.KubeScheduler, schedulerExe, SchedulerImage},
	} {
		p, err := buildComponentImage(ctx, cacheDir, c.bin, c.exe, c.ref)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// buildComponentImage writes the image ref of a control-plane binary,
// once per binary: the binary at /usr/local/bin/exe, its command, and the
// shared libraries it links (ldd), at their paths.
func buildComponentImage(ctx context.Context, cacheDir, bin, exe, ref string) (string, error) {
	fi, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%x", sha256.Sum256([]byte(fmt.Sprintf("%s %d %d %s v1", bin, fi.Size(), fi.ModTime().UnixNano(), ref))))[:16]
	path := filepath.Join(cacheDir, "images", exe+"-"+key+".tar")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	libs, err := sharedLibraries(ctx, bin)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	files := []imageFile{{Path: "usr/local/bin/" + exe, Mode: 0o755, Data: b}}
	for _, l := range libs {
		// The library's bytes at the path the binary asks for (ld.so
		// and libc are often links on the machine).
		lb, err := os.ReadFile(l)
		if err != nil {
			return "", err
		}
		files = append(files, imageFile{Path: strings.TrimPrefix(l, "/"), Mode: 0o755, Data: lb})
	}
	if err := writeOCIImage(path, ref, "/usr/local/bin/"+exe, files); err != nil {
		return "", fmt.Errorf("image %s: %w", ref, err)
	}
	return path, nil
}

// sharedLibraries lists the libraries bin loads, as ldd resolves them
// (none for a static binary).
func sharedLibraries(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", bin, err, out)
	}
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0]) // the dynamic loader
		}
	}
	return libs, nil
}

// apiserverPod is the API server's static pod for spec (its Argv is the
// container's command; CPUMillis is not in it: see setAPIServerCap).
// Like kubeadm's, it runs in the host's network namespace, with the
// host's PKI; unlike kubeadm's it has no liveness probe, so that an
// incident's starved API server is slow rather than restarted.
func apiserverPod(cp Host, spec Spec) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "kube-apiserver", Namespace: "kube-system",
			Labels:      map[string]string{"component": "kube-apiserver", "tier": "control-plane"},
			Annotations: map[string]string{"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": cp.Address + ":6443"},
		},
		Spec: corev1.PodSpec{
			HostNetwork:       true,
			PriorityClassName: "system-node-critical",
			Containers: []corev1.Container{{
				Name:            "kube-apiserver",
				Image:           APIServerImage,
				ImagePullPolicy: corev1.PullNever,
				Command:         spec.Argv,
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("250m"),
				}},
				VolumeMounts: []corev1.VolumeMount{{Name: "k8s-certs", MountPath: pkiDir, ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "k8s-certs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: pkiDir, Type: ptrTo(corev1.HostPathDirectoryOrCreate),
			}}}},
		},
	}
}

func ptrTo[T any](v T) *T { return &v }

// podMount is a host path a static pod mounts at the same path.
type podMount struct {
	name, path string
	// file: a file that must exist (else a directory, created if
	// missing); readOnly as kubeadm mounts it.
	file, readOnly bool
}

// guaranteed is a static pod's resources with requests equal to limits:
// Kubernetes' Guaranteed QoS class, whose pods are not under the host's
// burstable cgroup, which the overload incident caps (setHostCPUCap).
func guaranteed(cpu, memory string) corev1.ResourceRequirements {
	l := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)}
	return corev1.ResourceRequirements{Requests: l, Limits: l.DeepCopy()}
}

// controlPlanePod is a static pod of cp-1's control plane as kubeadm
// writes one: the host's network, system-node-critical, the host paths it
// needs. Unlike kubeadm's it has no probes: a starved component is slow
// rather than restarted.
func controlPlanePod(name, image string, argv []string, res corev1.ResourceRequirements, mounts []podMount) *corev1.Pod {
	c := corev1.Container{Name: name, Image: image, ImagePullPolicy: corev1.PullNever, Command: argv, Resources: res}
	var vols []corev1.Volume
	for _, m := range mounts {
		typ := corev1.HostPathDirectoryOrCreate
		if m.file {
			typ = corev1.HostPathFile
		}
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: m.name, MountPath: m.path, ReadOnly: m.readOnly})
		vols = append(vols, corev1.Volume{Name: m.name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: m.path, Type: ptrTo(typ)}}})
	}
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system",
			Labels: map[string]string{"component": name, "tier": "control-plane"}},
		Spec: corev1.PodSpec{HostNetwork: true, PriorityClassName: "system-node-critical", Containers: []corev1.Container{c}, Volumes: vols},
	}
}

// The resources of cp-1's other static pods: Guaranteed, so that the
// overload incident's CPU cap (on the host's burstable pods: the API
// server's) leaves them alone, as it left them alone when they ran under
// lab supervise. Their requests and the API server's fit in two CPUs.
func etcdPod(cp Host) *corev1.Pod {
	return controlPlanePod("etcd", EtcdImage, etcdSpec(cp, etcdExe).Argv, guaranteed("600m", "2Gi"), []podMount{
		{name: "etcd-data", path: "/var/lib/etcd"},
		{name: "etcd-certs", path: etcdPKIDir, readOnly: true},
	})
}

func controllerManagerPod() *corev1.Pod {
	return controlPlanePod(controllerManagerExe, ControllerManagerImage, controllerManagerSpec(controllerManagerExe).Argv, guaranteed("500m", "1Gi"), []podMount{
		{name: "k8s-certs", path: pkiDir, readOnly: true},
		{name: "kubeconfig", path: "/etc/kubernetes/controller-manager.conf", file: true, readOnly: true},
	})
}

func schedulerPod() *corev1.Pod {
	return controlPlanePod(schedulerExe, SchedulerImage, schedulerSpec(schedulerExe).Argv, guaranteed("250m", "512Mi"), []podMount{
		{name: "kubeconfig", path: "/etc/kubernetes/scheduler.conf", file: true, readOnly: true},
	})
}

// writeStaticPod writes pod into h's manifests directory as an operator
// would: a file outside the directory, renamed into it, so the kubelet
// never reads half a file.
func writeStaticPod(h Host, pod *corev1.Pod) error {
	b, err := yaml.Marshal(pod)
	if err != nil {
		return err
	}
	p := filepath.Join(h.Root, manifestsDir, pod.Name+".yaml")
	tmp := filepath.Join(filepath.Dir(filepath.Dir(p)), "."+pod.Name+".yaml.lab")
	if err := writeFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// writeAPIServerManifest writes the static pod of spec on cp, as an
// operator would: a file outside the manifests directory, renamed into
// it, so the kubelet never reads half a file.
func writeAPIServerManifest(cp Host, spec Spec) error {
	return writeStaticPod(cp, apiserverPod(cp, spec))
}

// apiserverCommand reads the kube-apiserver container's command from cp's
// manifest (what breakglass apiserver tune may have changed).
func apiserverCommand(cp Host) ([]string, error) {
	b, err := os.ReadFile(APIServerManifest(cp))
	if err != nil {
		return nil, err
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		return nil, fmt.Errorf("%s: %w", APIServerManifest(cp), err)
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == "kube-apiserver" {
			return c.Command, nil
		}
	}
	return nil, fmt.Errorf("%s: no kube-apiserver container", APIServerManifest(cp))
}

// burstableCgroup is where h's kubelet puts its Burstable pods (the API
// server's: it requests CPU and has no limit), under its cgroup root.
func burstableCgroup(h Host) string { return cgroupRoot(h) + "/kubepods/burstable" }

// setHostCPUCap caps the CPU of h's Burstable pods (the API server's; the
// other static pods are Guaranteed) at millis thousandths of a CPU, 0 for
// no cap: a control-plane machine that is small for its load. It holds
// across the pods' restarts (a tune restarts the API server's) and needs
// none: it is a quota on the QoS class's cgroup, which the kubelet keeps
// for as long as it runs, and whose quota it does not set.
func setHostCPUCap(h Host, millis int) error {
	hier, v2, err := cpuHierarchy()
	if err != nil {
		return err
	}
	dir := filepath.Join(hier, burstableCgroup(h))
	file, val := "cpu.cfs_quota_us", "-1"
	if millis > 0 {
		val = strconv.Itoa(millis * cpuPeriodUs / 1000)
	}
	if v2 {
		file = "cpu.max"
		q := "max"
		if millis > 0 {
			q = val
		}
		val = fmt.Sprintf("%s %d", q, cpuPeriodUs)
	} else if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(cpuPeriodUs)), 0o644); err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0o644); err != nil {
		return fmt.Errorf("cgroup %s/%s: %w", dir, file, err)
	}
	return nil
}

// hostCPUCap is h's pods' CPU cap (setHostCPUCap), 0 for none.
func hostCPUCap(h Host) (int, error) {
	hier, v2, err := cpuHierarchy()
	if err != nil {
		return 0, err
	}
	file := "cpu.cfs_quota_us"
	if v2 {
		file = "cpu.max"
	}
	b, err := os.ReadFile(filepath.Join(hier, burstableCgroup(h), file))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	quota, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil || quota <= 0 {
		return 0, nil // "max" or -1: no quota
	}
	return quota * 1000 / cpuPeriodUs, nil
}
