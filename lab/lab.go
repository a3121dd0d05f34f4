package lab

import (
	"context"
	"fmt"
	"io"
	"k8s.io/client-go/rest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Options configure lab up.
type Options struct {
	// Dir is the lab directory (default ./.lab).
	Dir string
	// Workers is the number of worker hosts (default 3).
	Workers int
	// NoStandby leaves out the standby control-plane host cp-2.
	NoStandby bool
	// SSHHosts is the number of extra hosts that run only sshd (role "ssh"),
	// for fan-out tests and benchmarks.
	SSHHosts int
	// Subnet is the lab bridge's IPv4 prefix (default 10.77.0.0/24).
	Subnet string
	// CacheDir keeps built binaries and images between runs.
	CacheDir string
	// Self is the breakglass binary, run inside hosts as the supervisor.
	Self string
	// Log receives progress lines.
	Log io.Writer
}

// Lab is a running lab.
type Lab struct {
	State *State
	opts  Options
	// workload is the ordinary workload's client config, made once
	// (refusals.go): its token is asked for while the API server answers.
	workload *rest.Config
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		o.Dir = ".lab"
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = abs
	if o.Workers == 0 {
		o.Workers = 3
	}
	if o.Subnet == "" {
		o.Subnet = "10.77.0.0/24"
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir()
	}
	if o.Self == "" {
		if o.Self, err = os.Executable(); err != nil {
			return err
		}
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return nil
}

// Up brings up a lab and returns it once every worker is Ready. On failure
// the partial lab is left for inspection; Down removes it.
func Up(ctx context.Context, opts Options) (*Lab, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("lab up needs root (network and mount namespaces, cgroups)\nhint: run it as root, e.g. sudo breakglass lab up")
	}
	if err := requireTools("ip", "nsenter", "unshare", "mount", "go", "/usr/sbin/sshd", "containerd", "runc", "ctr", "etcd", "nft"); err != nil {
		return nil, err
	}
	subnet, err := netip.ParsePrefix(opts.Subnet)
	if err != nil {
		return nil, fmt.Errorf("--subnet %q: %w", opts.Subnet, err)
	}
	if left := leftovers(ctx); len(left) > 0 {
		return nil, fmt.Errorf("a lab is already up or was left behind: %s\nhint: run breakglass lab down first", strings.Join(left, ", "))
	}
	start := time.Now()
	logf := func(format string, a ...any) { fmt.Fprintf(opts.Log, "lab: "+format+"\n", a...) }

	// Builds first: they are the slow part on a cold cache and need nothing
	// else of the lab.
	bins, err := EnsureBinaries(ctx, opts.CacheDir, opts.Log)
	if err != nil {
		return nil, err
	}
	images, err := buildImages(ctx, opts.CacheDir, opts.Log)
	if err != nil {
		return nil, err
	}
	apiserverImage, err := buildAPIServerImage(ctx, opts.CacheDir, bins.KubeAPIServer)
	if err != nil {
		return nil, err
	}
	cpImages, err := controlPlaneImages(ctx, opts.CacheDir, bins)
	if err != nil {
		return nil, err
	}
	corednsImage, err := EnsureCoreDNSImage(ctx, opts.CacheDir, opts.Log)
	if err != nil {
		return nil, err
	}
	buildTime := time.Since(start)

	hosts, err := planHosts(opts.Dir, subnet, opts.Workers, opts.SSHHosts, opts.NoStandby)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	cp := hosts[0]
	s := &State{
		Dir:              opts.Dir,
		Inventory:        filepath.Join(opts.Dir, "breakglass.yaml"),
		Kubeconfig:       filepath.Join(opts.Dir, "admin.kubeconfig"),
		OncallKubeconfig: filepath.Join(opts.Dir, "oncall.kubeconfig"),
		APIServer:        "https://" + cp.Address + ":6443",
		Etcd: EtcdState{
			Endpoints: []string{"https://" + cp.Address + ":2379"},
			CACert:    filepath.Join(opts.Dir, "pki", "etcd-ca.crt"),
			Cert:      filepath.Join(opts.Dir, "pki", "etcd-client.crt"),
			Key:       filepath.Join(opts.Dir, "pki", "etcd-client.key"),
		},
		Binaries:   bins,
		KnownHosts: filepath.Join(opts.Dir, "ssh", "known_hosts"),
		Hosts:      hosts,
		Bridge:     bridgeName,
		Subnet:     subnet.String(),
	}
	l := &Lab{State: s, opts: opts}
	// Saved before anything is made, so that lab down finds the directory
	// even if lab up crashes.
	if err := s.Save(); err != nil {
		return nil, err
	}

	logf("creating %d hosts on bridge %s (%s)", len(hosts), bridgeName, subnet)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, err
	}
	if err := setupNSDir(ctx); err != nil {
		return nil, err
	}
	if err := setupBridge(ctx, subnet); err != nil {
		return nil, err
	}
	for _, h := range hosts {
		if err := createHost(ctx, h, subnet); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
	}

	opKey, keyPath, err := newOperatorKey(opts.Dir)
	if err != nil {
		return nil, err
	}
	s.SSHKey = keyPath
	var known []string
	for _, h := range hosts {
		lines, err := setupSSHD(h, opKey)
		if err != nil {
			return nil, fmt.Errorf("host %s: sshd: %w", h.Name, err)
		}
		known = append(known, lines...)
	}
	if err := writeFile(s.KnownHosts, []byte(strings.Join(known, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	if err := l.writeControlPlanePKI(); err != nil {
		return nil, err
	}
	if err := writeInventory(s); err != nil {
		return nil, err
	}
	if err := s.Save(); err != nil {
		return nil, err
	}

	for _, h := range hosts {
		if err := l.startSupervised(h, "sshd", sshdSpec(h)); err != nil {
			return nil, err
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		logf("starting etcd and the control plane on %s: static pods of its kubelet", cp.Name)
		// etcd and the API server are cp-1's kubelet's static pods, as
		// kubeadm runs them: the manifests first, then the kubelet that
		// starts them.
		if err := writeStaticPod(cp, etcdPod(cp)); err != nil {
			return err
		}
		if err := writeAPIServerManifest(cp, apiserverSpec(cp, nil)); err != nil {
			return err
		}
		// images[0] is the pause image every sandbox needs.
		if err := l.startKubeletHost(gctx, cp, 0, append([]string{images[0], apiserverImage}, cpImages...)); err != nil {
			return err
		}
		if err := l.waitAPIServer(gctx, 2*time.Minute); err != nil {
			return err
		}
		logf("apiserver ready at %s (%s)", s.APIServer, time.Since(start).Round(time.Second))
		if err := l.bootstrapObjects(gctx); err != nil {
			return err
		}
		// The controller-manager and the scheduler once the objects they
		// rely on are there (kubeadm writes them at once; they retry).
		if err := writeStaticPod(cp, controllerManagerPod()); err != nil {
			return err
		}
		if err := writeStaticPod(cp, schedulerPod()); err != nil {
			return err
		}
		return l.waitStaticPods(gctx, cp, 2*time.Minute, etcdExe, apiserverExe, controllerManagerExe, schedulerExe)
	})
	for i, w := range s.HostsWithRole("worker") {
		g.Go(func() error { return l.startKubeletHost(gctx, w, i+1, append(slices.Clip(images), corednsImage)) })
	}
	// A standby control-plane host: containerd with the API server's
	// image, a kubelet, an empty manifests directory (pod subnets from
	// 10.244.200.0/24, apart from the workers').
	for i, h := range s.HostsWithRole(StandbyRole) {
		g.Go(func() error { return l.startKubeletHost(gctx, h, 200+i, []string{images[0], apiserverImage}) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	logf("waiting for %d nodes to be Ready (the control plane's, %d standby and %d workers)", len(s.KubeletHosts()), len(s.HostsWithRole(StandbyRole)), opts.Workers)
	if err := l.waitNodesReady(ctx, 120*time.Second); err != nil {
		return nil, err
	}
	if err := l.deployCoreDNS(ctx, logf); err != nil {
		return nil, err
	}
	logf("up in %s (%s building, %s starting)", time.Since(start).Round(100*time.Millisecond),
		buildTime.Round(100*time.Millisecond), (time.Since(start) - buildTime).Round(100*time.Millisecond))
	return l, nil
}

// Open returns the lab recorded in dir.
func Open(dir string) (*Lab, error) {
	s, err := LoadState(dir)
	if err != nil {
		return nil, err
	}
	l := &Lab{State: s}
	l.opts.Dir = s.Dir
	l.opts.Log = io.Discard
	return l, nil
}

// waitNodesReady waits until every host with a kubelet is a Ready node.
func (l *Lab) waitNodesReady(ctx context.Context, timeout time.Duration) error {
	c, err := l.client()
	if err != nil {
		return err
	}
	want := len(l.State.KubeletHosts())
	var status string
	err = poll(ctx, time.Second, timeout, func(ctx context.Context) bool {
		nodes, err := c.Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			status = err.Error()
			return false
		}
		ready := 0
		var parts []string
		for _, n := range nodes {
			r := nodeReady(&n)
			if r {
				ready++
			}
			parts = append(parts, fmt.Sprintf("%s=%v", n.Name, r))
		}
		status = strings.Join(parts, " ")
		return ready >= want
	})
	if err != errTimeout {
		return err
	}
	return fmt.Errorf("nodes not Ready after %s (%s)\nhint: see %s/logs/*-kubelet.log", timeout, status, l.State.Dir)
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// writeInventory writes the breakglass.yaml of the lab. Paths are relative
// to the lab directory.
func writeInventory(s *State) error {
	var b strings.Builder
	fmt.Fprintf(&b, `# The rehearsal lab's inventory, written by breakglass lab up.
# Use it with: breakglass --inventory %s ...
ssh:
  user: root
  identityFiles: [ssh/id_ed25519]
  knownHosts: ssh/known_hosts
  config: none
  agent: false
  connectTimeout: 5s
etcd:
  endpoints: [%s]
  cacert: pki/etcd-ca.crt
  cert: pki/etcd-client.crt
  key: pki/etcd-client.key
apiserver:
  url: %s
  port: 6443
nodes:
`, s.Inventory, strings.Join(s.Etcd.Endpoints, ", "), s.APIServer)
	for _, h := range s.Hosts {
		fmt.Fprintf(&b, "  - name: %s\n    address: %s\n    roles: [%s]\n    labels: {lab: breakglass}\n", h.Name, h.Address, strings.Join(h.Roles, ", "))
	}
	return writeFile(s.Inventory, []byte(b.String()), 0o644)
}
