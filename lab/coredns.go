package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/nodeops/dnsprobe"
)

// The lab's cluster DNS: CoreDNS, as kubeadm deploys it, built from the Go
// module proxy like the Kubernetes binaries. It watches Services and
// EndpointSlices through the API server, so that the overload incident
// shows what December 2024 showed: a CoreDNS that restarts while the API
// server is saturated cannot sync and answers SERVFAIL for every cluster
// name.
const (
	// CoreDNSVersion is kubeadm 1.31's CoreDNS.
	CoreDNSVersion = "v1.11.3"
	CoreDNSImage   = "breakglass.lab/coredns:" + CoreDNSVersion
	// CoreDNSExe is CoreDNS's executable in its image.
	CoreDNSExe = "coredns"
	// ClusterDNS is kube-dns's cluster IP, kubelet's clusterDNS.
	ClusterDNS = "10.96.0.10"
	// DNSService is the cluster DNS Service (kubeadm keeps kube-dns's
	// name); CoreDNSDeployment its Deployment.
	DNSService        = "kube-dns"
	CoreDNSDeployment = "coredns"
	// coreDNSReplicas is kubeadm's replica count (fewer on a lab with
	// fewer workers: one per worker at most).
	coreDNSReplicas = 2
	// dnsTable is the nft table that stands in for kube-proxy's rules
	// for the DNS Service on each lab host.
	dnsTable = "breakglass-lab-dns"
)

// coreDNSMain is the lab's CoreDNS: the plugins of kubeadm's Corefile that
// need no network beyond the lab (no forward: no upstream resolver is
// reachable), registered by import, as CoreDNS's own main does for all.
const coreDNSMain = `package main

import (
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
`

// corefile is kubeadm's Corefile less forward and prometheus.
const corefile = `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    cache 30
    loadbalance
}
`

// EnsureCoreDNSImage builds CoreDNS from the Go module proxy into an image
// tarball in the cache (about 3 minutes cold on 2 cores, nothing warm).
func EnsureCoreDNSImage(ctx context.Context, cacheDir string, log io.Writer) (string, error) {
	dir := filepath.Join(cacheDir, "coredns", CoreDNSVersion)
	tar := filepath.Join(dir, "coredns.tar")
	if _, err := os.Stat(tar); err == nil {
		return tar, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// One build at a time per cache, as for the Kubernetes binaries; the
	// one that waited finds the image built.
	unlock, err := lockDir(dir)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(tar); err == nil {
		return tar, nil
	}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	gomod := fmt.Sprintf("module breakglass.local/corednsbuild\n\ngo 1.22\n\nrequire github.com/coredns/coredns %s\n", CoreDNSVersion)
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(gomod), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(coreDNSMain), 0o644); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "lab: building CoreDNS %s from the Go module proxy (first run only)\n", CoreDNSVersion)
	start := time.Now()
	if err := goCmd(ctx, src, log, "mod", "tidy"); err != nil {
		return "", err
	}
	exe := filepath.Join(dir, CoreDNSExe)
	if err := goCmdEnv(ctx, src, log, []string{"CGO_ENABLED=0"}, "build", "-trimpath", "-ldflags=-s -w", "-o", exe, "."); err != nil {
		return "", err
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		return "", err
	}
	tmp := tar + ".tmp"
	if err := writeOCIImage(tmp, CoreDNSImage, "/"+CoreDNSExe, []imageFile{{Path: CoreDNSExe, Mode: 0o755, Data: bin}}); err != nil {
		return "", fmt.Errorf("image %s: %w", CoreDNSImage, err)
	}
	fmt.Fprintf(log, "lab: built CoreDNS in %s\n", time.Since(start).Round(time.Second))
	return tar, os.Rename(tmp, tar)
}

var coreDNSLabels = map[string]string{"k8s-app": DNSService}

// deployCoreDNS creates CoreDNS's objects as kubeadm does (ServiceAccount,
// ClusterRole system:coredns and its binding, the Corefile's ConfigMap,
// the Deployment and the kube-dns Service at ClusterDNS), waits for its
// pods, routes the Service's address to them on every lab host, and waits
// until each pod answers.
func (l *Lab) deployCoreDNS(ctx context.Context, logf func(string, ...any)) error {
	c, err := l.client()
	if err != nil {
		return err
	}
	const ns = "kube-system"
	cp := l.State.Hosts[0]
	replicas := min(coreDNSReplicas, len(l.State.HostsWithRole("worker")))
	if replicas == 0 {
		logf("no workers: no cluster DNS")
		return nil
	}
	objs := []func() error{
		func() error {
			_, err := c.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: CoreDNSDeployment}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
				Rules: []rbacv1.PolicyRule{
					{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
					{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
				},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:coredns"},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: CoreDNSDeployment, Namespace: ns}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: CoreDNSDeployment}, Data: map[string]string{"Corefile": corefile}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.Deployments(ns).Create(ctx, coreDNSDeployment(cp.Address, replicas), metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: DNSService, Labels: coreDNSLabels},
				Spec: corev1.ServiceSpec{
					ClusterIP: ClusterDNS,
					Selector:  coreDNSLabels,
					Ports: []corev1.ServicePort{
						{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
						{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
					},
				},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, f := range objs {
		if err := f(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("coredns: %w", err)
		}
	}
	logf("waiting for CoreDNS (%d replicas on the workers' host network)", replicas)
	var addrs []string
	var last error
	err = poll(ctx, time.Second, 2*time.Minute, func(ctx context.Context) bool {
		addrs, last = coreDNSAddresses(ctx, c)
		return last == nil && len(addrs) == replicas
	})
	if err == errTimeout {
		return fmt.Errorf("coredns: %d of %d pods running after 2m (last error: %v)\nhint: see %s/logs/worker-*-kubelet.log", len(addrs), replicas, last, l.State.Dir)
	}
	if err != nil {
		return err
	}
	if err := l.routeClusterDNS(ctx, addrs); err != nil {
		return err
	}
	for _, a := range addrs {
		if err := waitDNSAnswers(ctx, net.JoinHostPort(a, "53"), time.Minute); err != nil {
			return fmt.Errorf("coredns on %s: %w", a, err)
		}
	}
	return nil
}

// coreDNSDeployment is kubeadm's CoreDNS Deployment, on the host network
// (the lab has no kube-proxy and no route between the nodes' pod networks)
// and outside cp-1 (the overload's CPU cap is on cp-1's pods). It reaches
// the API server at cp-1's address with its service account, as the
// in-cluster config does.
func coreDNSDeployment(apiserverHost string, replicas int) *appsv1.Deployment {
	res := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("70Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("170Mi")},
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: CoreDNSDeployment, Labels: coreDNSLabels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(replicas)),
			Selector: &metav1.LabelSelector{MatchLabels: coreDNSLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: coreDNSLabels},
				Spec: corev1.PodSpec{
					ServiceAccountName: CoreDNSDeployment,
					PriorityClassName:  "system-cluster-critical",
					HostNetwork:        true,
					DNSPolicy:          corev1.DNSDefault,
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
							LabelSelector: &metav1.LabelSelector{MatchLabels: coreDNSLabels},
							TopologyKey:   "kubernetes.io/hostname",
						}},
					}},
					Containers: []corev1.Container{{
						Name:            CoreDNSDeployment,
						Image:           CoreDNSImage,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"-conf", "/etc/coredns/Corefile"},
						Env: []corev1.EnvVar{
							{Name: "KUBERNETES_SERVICE_HOST", Value: apiserverHost},
							{Name: "KUBERNETES_SERVICE_PORT", Value: "6443"},
						},
						Resources: res,
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "config-volume", MountPath: "/etc/coredns", ReadOnly: true}},
						LivenessProbe: &corev1.Probe{
							ProbeHandler:        corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8080)}},
							InitialDelaySeconds: 60, TimeoutSeconds: 5, SuccessThreshold: 1, FailureThreshold: 5,
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8181)}},
						},
					}},
					Volumes: []corev1.Volume{{Name: "config-volume", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: CoreDNSDeployment},
					}}}},
				},
			},
		},
	}
}

// coreDNSAddresses are the addresses of CoreDNS's running pods (their
// hosts', on the host network), sorted.
func coreDNSAddresses(ctx context.Context, c *kube) ([]string, error) {
	pods, err := c.Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=" + DNSService})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range pods {
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			out = append(out, p.Status.PodIP)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// routeClusterDNS stands in for kube-proxy's rules for the DNS Service on
// every lab host: connections the host makes to ClusterDNS port 53 are
// sent to the CoreDNS pods in turn. Any other address of the service
// range is refused on the host, so that nothing of the lab ever leaves it
// for an address that is not the lab's.
func (l *Lab) routeClusterDNS(ctx context.Context, addrs []string) error {
	var m []string
	for i, a := range addrs {
		m = append(m, fmt.Sprintf("%d : %s", i, a))
	}
	lb := fmt.Sprintf("numgen inc mod %d map { %s }", len(addrs), strings.Join(m, ", "))
	rules := fmt.Sprintf(`table ip %[1]s
delete table ip %[1]s
table ip %[1]s {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr %[2]s tcp dport 53 dnat to %[3]s
		ip daddr %[2]s udp dport 53 dnat to %[3]s
	}
	chain refuse {
		type filter hook output priority 0; policy accept;
		ip daddr 10.96.0.0/12 reject
	}
	chain refuse-pods {
		type filter hook forward priority 0; policy accept;
		ip daddr 10.96.0.0/12 reject
	}
}
`, dnsTable, ClusterDNS, lb)
	path := filepath.Join(l.State.Dir, "cluster-dns.nft")
	if err := writeFile(path, []byte(rules), 0o644); err != nil {
		return err
	}
	for _, h := range l.State.Hosts {
		if _, err := shIn(ctx, h, "nft", "-f", path); err != nil {
			return fmt.Errorf("%s: route the DNS service: %w", h.Name, err)
		}
	}
	return nil
}

// waitDNSAnswers waits until the DNS server at addr answers
// kubernetes.default with an address (CoreDNS synced with the API server).
func waitDNSAnswers(ctx context.Context, addr string, timeout time.Duration) error {
	var last string
	err := poll(ctx, 500*time.Millisecond, timeout, func(ctx context.Context) bool {
		a, err := askDNS(ctx, addr)
		if err != nil {
			last = err.Error()
			return false
		}
		last = a.Rcode
		return a.OK("")
	})
	if err == errTimeout {
		return fmt.Errorf("no answer for kubernetes.default within %s (last: %s)", timeout, last)
	}
	return err
}

// askDNS asks the DNS server at addr (from this machine, over TCP) for
// kubernetes.default.svc.cluster.local, within 2 seconds.
func askDNS(ctx context.Context, addr string) (dnsprobe.Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return dnsprobe.Answer{}, err
	}
	defer conn.Close()
	return dnsprobe.Query(ctx, conn, "kubernetes.default.svc.cluster.local.")
}

// RestartCoreDNS kills CoreDNS's processes on the workers with SIGKILL, as
// a crash, an OOM kill or a rollout would, and waits until their kubelets
// run them again and each answers (whatever it answers). It returns each
// server's answer to kubernetes.default then: NOERROR once CoreDNS has
// synced with the API server, SERVFAIL while it cannot.
func (l *Lab) RestartCoreDNS(ctx context.Context) (map[string]string, error) {
	hosts, err := l.coreDNSHosts()
	if err != nil {
		return nil, err
	}
	old := map[int]bool{}
	for _, h := range l.State.HostsWithRole("worker") {
		for pid := range processArgvs(h, "/"+CoreDNSExe) {
			old[pid] = true
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				return nil, fmt.Errorf("%s: kill coredns (%d): %w", h.Name, pid, err)
			}
		}
	}
	if len(old) == 0 {
		return nil, fmt.Errorf("no CoreDNS process on the workers")
	}
	out := map[string]string{}
	for _, h := range hosts {
		addr := net.JoinHostPort(h.Address, "53")
		var last string
		err := poll(ctx, 200*time.Millisecond, 90*time.Second, func(ctx context.Context) bool {
			for pid := range processArgvs(h, "/"+CoreDNSExe) {
				if old[pid] {
					return false
				}
			}
			a, err := askDNS(ctx, addr)
			if err != nil {
				last = err.Error()
				return false
			}
			out[addr] = a.Rcode
			return true
		})
		if err == errTimeout {
			return out, fmt.Errorf("%s: CoreDNS did not answer within 90s of being killed (last: %s)\nhint: see %s", h.Name, last, filepath.Join(l.State.Dir, "logs", h.Name+"-kubelet.log"))
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// WaitDNS waits until every CoreDNS server answers kubernetes.default
// with its address (synced with the API server again).
func (l *Lab) WaitDNS(ctx context.Context, timeout time.Duration) error {
	hosts, err := l.coreDNSHosts()
	if err != nil {
		return err
	}
	for _, h := range hosts {
		if err := waitDNSAnswers(ctx, net.JoinHostPort(h.Address, "53"), timeout); err != nil {
			return fmt.Errorf("%s: CoreDNS: %w", h.Name, err)
		}
	}
	return nil
}

// coreDNSHosts are the workers that run a CoreDNS process (found on the
// machine, not through the API server); CoreDNS answers on their address.
func (l *Lab) coreDNSHosts() ([]Host, error) {
	var out []Host
	for _, h := range l.State.HostsWithRole("worker") {
		if len(processArgvs(h, "/"+CoreDNSExe)) > 0 {
			out = append(out, h)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no CoreDNS process on the workers\nhint: lab up deploys it; see %s/logs/worker-*-kubelet.log", l.State.Dir)
	}
	return out, nil
}

// FreezeAPIServer stops cp-1's API server processes with SIGSTOP (an API
// server that answers nothing, the worst of an overload) and returns the
// function that thaws them. Keep it short: kubelets' leases lapse after 40s.
func (l *Lab) FreezeAPIServer() (thaw func() error, err error) {
	cp := l.State.Hosts[0]
	var pids []int
	for pid := range processArgvs(cp, apiserverExe) {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return nil, fmt.Errorf("%s: stop the API server (%d): %w", cp.Name, pid, err)
		}
		pids = append(pids, pid)
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("%s: no API server process", cp.Name)
	}
	return func() error {
		var errs []error
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}, nil
}
