// Command bench measures breakglass's etcd reads on a big cluster's worth of
// pods: it starts its own etcd on 127.0.0.1 in a temporary directory, seeds
// it with pods encoded by the real codec, and runs side by side
// `breakglass count pods`, `breakglass get pods` with a label and with a
// field selector, `etcdctl get --prefix --keys-only`, and (when the
// kube-apiserver binary is there) one API server LIST of the same pods,
// printing wall time, peak RSS and etcd's CPU time for each.
//
//	go run ./etcd/bench                 # 150,000 pods on 5,000 nodes
//	go run ./etcd/bench -pods 20000     # quicker
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/breakglass/breakglass/etcd"
)

func main() {
	pods := flag.Int("pods", 150000, "pods to seed")
	perNode := flag.Int("per-node", 30, "pods per node")
	etcdBin := flag.String("etcd", "/usr/bin/etcd", "etcd binary")
	etcdctl := flag.String("etcdctl", "/usr/bin/etcdctl", "etcdctl binary")
	apiserver := flag.String("kube-apiserver", "/root/.cache/breakglass/k8s/v1.31.4/bin/kube-apiserver", "kube-apiserver binary (skipped if missing)")
	bgBin := flag.String("breakglass", "", "breakglass binary (default: go build ./cmd/breakglass)")
	flag.Parse()
	if err := run(*pods, *perNode, *etcdBin, *etcdctl, *apiserver, *bgBin); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(pods, perNode int, etcdBin, etcdctl, apiserverBin, bgBin string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm" // the seed is write-heavy; keep fsync off the disk
	}
	dir, err := os.MkdirTemp(base, "breakglass-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if bgBin == "" {
		bgBin = filepath.Join(dir, "breakglass")
		logf("building breakglass")
		b := exec.Command("go", "build", "-o", bgBin, "./cmd/breakglass")
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/breakglass (run from the repository root): %w", err)
		}
	}

	cport, pport := freePort(), freePort()
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", cport)
	ecmd := exec.CommandContext(ctx, etcdBin, "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", pport),
		"--quota-backend-bytes", strconv.Itoa(8<<30), "--log-level", "error", "--logger", "zap")
	elog, _ := os.Create(filepath.Join(dir, "etcd.log"))
	ecmd.Stdout, ecmd.Stderr = elog, elog
	if err := ecmd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer func() { ecmd.Process.Signal(syscall.SIGTERM); ecmd.Wait() }()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := waitEtcd(ctx, cli, endpoint); err != nil {
		return err
	}

	logf("seeding %d pods on %d nodes", pods, (pods+perNode-1)/perNode)
	t0 := time.Now()
	size, err := seed(ctx, cli, pods, perNode)
	if err != nil {
		return err
	}
	logf("seeded %d pods, %.1f KiB each on average, in %s", pods, float64(size)/float64(pods)/1024, time.Since(t0).Round(time.Second))

	etcdPID := ecmd.Process.Pid
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCDCTL_") && !strings.HasPrefix(kv, "BREAKGLASS_") {
			env = append(env, kv)
		}
	}
	env = append(env, "ETCDCTL_API=3")
	bg := []string{"--endpoints", endpoint, "--inventory", filepath.Join(dir, "none.yaml"), "--timeout", "5m"}
	os.WriteFile(filepath.Join(dir, "none.yaml"), []byte("{}\n"), 0o600)
	node := fmt.Sprintf("node-%04d", (pods/perNode)/2)
	runs := []struct {
		name string
		argv []string
	}{
		{"breakglass count pods", append([]string{bgBin, "count", "pods"}, bg...)},
		{"breakglass get pods -A -l app=app-7", append([]string{bgBin, "get", "pods", "-A", "-l", "app=app-7"}, bg...)},
		{"breakglass get pods -A --field-selector spec.nodeName=" + node, append([]string{bgBin, "get", "pods", "-A", "--field-selector", "spec.nodeName=" + node}, bg...)},
		{"etcdctl get --prefix /registry/pods --keys-only", []string{etcdctl, "--endpoints", endpoint, "get", "--prefix", "/registry/pods/", "--keys-only"}},
	}
	var results []result
	for _, r := range runs {
		logf("running %s", r.name)
		res, err := measure(ctx, r.name, r.argv, env, etcdPID)
		if err != nil {
			return err
		}
		results = append(results, res)
	}
	if _, err := os.Stat(apiserverBin); err == nil {
		logf("starting kube-apiserver (watch cache off, so that a LIST reads etcd)")
		as, err := apiserverLists(ctx, dir, apiserverBin, endpoint, etcdPID, pods)
		if err != nil {
			logf("apiserver comparison skipped: %v", err)
		}
		results = append(results, as...)
	} else {
		logf("no %s: apiserver comparison skipped", apiserverBin)
	}

	fmt.Printf("\n%d pods (%d per node, %.1f KiB average), etcd %s, %d CPUs\n\n", pods, perNode, float64(size)/float64(pods)/1024, etcdVersion(etcdBin), runtime.NumCPU())
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMMAND\tWALL\tPEAK RSS\tCPU\tETCD CPU\tPODS/S/CORE\tOUTPUT")
	for _, r := range results {
		rate := "-"
		if r.cpu > 0 && strings.Contains(r.name, "field-selector") {
			// Every pod is decoded in full to test spec.nodeName.
			rate = strconv.Itoa(int(float64(pods) / r.cpu.Seconds()))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.name, r.wall.Round(time.Millisecond), r.rss, r.cpu.Round(time.Millisecond), r.etcdCPU.Round(time.Millisecond), rate, r.output)
	}
	tw.Flush()
	fmt.Println("\nPEAK RSS and CPU are the client's (for the API server rows: the API server's VmHWM and CPU during the LIST).")
	fmt.Println("PODS/S/CORE: pods decoded per CPU-second by the field-selector listing, which decodes every pod.")
	return nil
}

type result struct {
	name    string
	wall    time.Duration
	rss     string
	cpu     time.Duration
	etcdCPU time.Duration
	output  string
}

func measure(ctx context.Context, name string, argv, env []string, etcdPID int) (result, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cw := &countWriter{}
	cmd.Stdout = cw
	var stderr strings.Builder
	cmd.Stderr = &stderr
	e0 := procCPU(etcdPID)
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	e1 := procCPU(etcdPID)
	if err != nil {
		return result{}, fmt.Errorf("%s: %v\n%s", name, err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return result{name: name, wall: wall, rss: fmt.Sprintf("%d MiB", ru.Maxrss/1024), cpu: cpu, etcdCPU: e1 - e0,
		output: fmt.Sprintf("%d lines", cw.lines)}, nil
}

type countWriter struct{ lines int }

func (c *countWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b == '\n' {
			c.lines++
		}
	}
	return len(p), nil
}

// procCPU returns user+system CPU time of a process from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // CLK_TCK is 100 on Linux
}

func procHWM(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "-"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return fmt.Sprintf("%d MiB", kb/1024)
		}
	}
	return "-"
}

// seed writes pods of about 4.5 KB, encoded like the API server, in
// transactions of 100 on 4 connections.
func seed(ctx context.Context, cli *clientv3.Client, pods, perNode int) (int64, error) {
	codec := etcd.NewCodec()
	gvk := schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	var total int64
	var mu sync.Mutex
	var firstErr error
	work := make(chan int, 64)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := range work {
				var ops []clientv3.Op
				var sz int64
				for i := start; i < min(start+100, pods); i++ {
					p := benchPod(i, perNode)
					b, err := codec.Encode(p, gvk, etcd.EncodingProtobuf)
					if err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
					sz += int64(len(b))
					ops = append(ops, clientv3.OpPut("/registry/pods/"+p.Namespace+"/"+p.Name, string(b)))
				}
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				mu.Lock()
				total += sz
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < pods; i += 100 {
		if i%20000 == 0 && i > 0 {
			logf("  %d pods", i)
		}
		work <- i
	}
	close(work)
	wg.Wait()
	return total, firstErr
}

func benchPod(i, perNode int) *corev1.Pod {
	ns := fmt.Sprintf("team-%02d", i%50)
	app := fmt.Sprintf("app-%d", i%100)
	name := fmt.Sprintf("%s-%08d-x%04x", app, i, i%65536)
	created := metav1.NewTime(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second))
	env := make([]corev1.EnvVar, 12)
	for k := range env {
		env[k] = corev1.EnvVar{Name: fmt.Sprintf("SETTING_%02d", k), Value: fmt.Sprintf("value-%d-%d-abcdefghijklmnopqrstuvwxyz", i, k)}
	}
	container := func(n string) corev1.Container {
		return corev1.Container{
			Name: n, Image: "registry.example.com/team/" + app + ":v1.2.3", Env: env,
			Args:  []string{"--listen=:8080", "--log-level=info", "--config=/etc/app/config.yaml"},
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
			},
			VolumeMounts:             []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}, {Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
			TerminationMessagePath:   "/dev/termination-log",
			TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			ImagePullPolicy:          corev1.PullIfNotPresent,
		}
	}
	ready := metav1.NewTime(created.Add(10 * time.Second))
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, UID: types.UID(fmt.Sprintf("00000000-0000-4000-8000-%012d", i)), CreationTimestamp: created,
			GenerateName: app + "-",
			Labels:       map[string]string{"app": app, "pod-template-hash": "5d8f7c9b6", "team": ns, "tier": "backend"},
			Annotations:  map[string]string{"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z", "prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
			// What the kubelet's status updates leave, as on real pods.
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
				Time: &ready, FieldsType: "FieldsV1", Subresource: "status", FieldsV1: &metav1.FieldsV1{Raw: kubeletFields}}},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-5d8f7c9b6",
				UID: "11111111-0000-4000-8000-000000000000", Controller: ptr(true), BlockOwnerDeletion: ptr(true)}},
		},
		Spec: corev1.PodSpec{
			NodeName:           fmt.Sprintf("node-%04d", i/perNode),
			Containers:         []corev1.Container{container("app"), container("sidecar")},
			ServiceAccountName: "default", SchedulerName: "default-scheduler", RestartPolicy: corev1.RestartPolicyAlways,
			DNSPolicy: corev1.DNSClusterFirst, TerminationGracePeriodSeconds: ptr(int64(30)), EnableServiceLinks: ptr(true),
			Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: app + "-config"}}}},
				{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				}}}},
			},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr(int64(300))},
			},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, HostIP: fmt.Sprintf("10.%d.%d.%d", i/perNode/65536%256, i/perNode/256%256, i/perNode%256),
			PodIP: fmt.Sprintf("10.128.%d.%d", i/256%256, i%256), StartTime: &created, QOSClass: corev1.PodQOSBurstable,
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: created},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: ready},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: ready},
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: created},
			},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "app", Ready: true, Image: "registry.example.com/team/" + app + ":v1.2.3", ImageID: "registry.example.com/team/" + app + "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", ContainerID: fmt.Sprintf("containerd://%064d", i), Started: ptr(true), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: ready}}},
				{Name: "sidecar", Ready: true, Image: "registry.example.com/team/" + app + ":v1.2.3", ImageID: "registry.example.com/team/" + app + "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", ContainerID: fmt.Sprintf("containerd://%064d", i+1), Started: ptr(true), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: ready}}},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

var kubeletFields = []byte(`{"f:status":{"f:conditions":{"k:{\"type\":\"ContainersReady\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"Initialized\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"PodReadyToStartContainers\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}},"k:{\"type\":\"Ready\"}":{".":{},"f:lastProbeTime":{},"f:lastTransitionTime":{},"f:status":{},"f:type":{}}},"f:containerStatuses":{},"f:hostIP":{},"f:hostIPs":{},"f:phase":{},"f:podIP":{},"f:podIPs":{".":{},"k:{\"ip\":\"10.128.0.1\"}":{".":{},"f:ip":{}}},"f:startTime":{}}}`)

// apiserverLists starts kube-apiserver against the seeded etcd and measures
// one LIST of all pods (unpaginated) and the same LIST in pages of 500, as
// kubectl and informers ask for it.
func apiserverLists(ctx context.Context, dir, bin, etcdEndpoint string, etcdPID, pods int) ([]result, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	keyFile := filepath.Join(dir, "sa.key")
	os.WriteFile(keyFile, keyPEM, 0o600)
	token := "bench-token"
	tokFile := filepath.Join(dir, "tokens.csv")
	os.WriteFile(tokFile, []byte(token+`,bench,bench,"system:masters"`+"\n"), 0o600)
	port := freePort()
	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	cmd := exec.CommandContext(actx, bin,
		"--etcd-servers", etcdEndpoint, "--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(port),
		"--cert-dir", filepath.Join(dir, "apiserver-certs"), "--token-auth-file", tokFile, "--authorization-mode", "AlwaysAllow",
		"--service-account-issuer", "https://bench.invalid", "--service-account-key-file", keyFile, "--service-account-signing-key-file", keyFile,
		"--service-cluster-ip-range", "10.96.0.0/16", "--watch-cache=false", "--enable-priority-and-fairness=false",
		"--max-requests-inflight", "0", "--max-mutating-requests-inflight", "0",
		// A LIST of 150,000 pods in one request takes longer than the
		// default minute on 2 cores.
		"--request-timeout", "10m")
	alog, _ := os.Create(filepath.Join(dir, "apiserver.log"))
	cmd.Stdout, cmd.Stderr = alog, alog
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { acancel(); cmd.Wait() }()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Minute}
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	get := func(path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Accept", "application/json")
		return hc.Do(req)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := get("/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("kube-apiserver not ready after 2m (log: %s)", alog.Name())
		}
		time.Sleep(time.Second)
	}
	time.Sleep(3 * time.Second) // let its bootstrap controllers settle
	pid := cmd.Process.Pid
	var out []result
	for _, v := range []struct {
		name  string
		limit int
	}{{"kube-apiserver LIST /api/v1/pods (one request)", 0}, {"kube-apiserver LIST /api/v1/pods?limit=500 (paged)", 500}} {
		logf("running %s", v.name)
		e0, a0 := procCPU(etcdPID), procCPU(pid)
		t0 := time.Now()
		n, cont, reqs := 0, "", 0
		var listErr error
		for {
			path := "/api/v1/pods"
			if v.limit > 0 {
				path += "?limit=" + strconv.Itoa(v.limit)
				if cont != "" {
					path += "&continue=" + cont
				}
			}
			resp, err := get(path)
			if err != nil {
				return out, err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				listErr = fmt.Errorf("LIST: %d %v", resp.StatusCode, err)
				break
			}
			reqs++
			n += strings.Count(string(body), `"nodeName":"`)
			cont = continueToken(body)
			if v.limit == 0 || cont == "" {
				break
			}
		}
		wall := time.Since(t0)
		if listErr != nil {
			logf("%s: %v", v.name, listErr)
			out = append(out, result{name: v.name, wall: wall, rss: procHWM(pid), output: "failed: " + listErr.Error()})
			continue
		}
		out = append(out, result{name: v.name, wall: wall, rss: procHWM(pid), cpu: procCPU(pid) - a0, etcdCPU: procCPU(etcdPID) - e0,
			output: fmt.Sprintf("%d pods, %d requests", n, reqs)})
	}
	return out, nil
}

// continueToken finds metadata.continue in a list response without decoding
// the whole body.
func continueToken(body []byte) string {
	i := strings.Index(string(body[:min(len(body), 4096)]), `"continue":"`)
	if i < 0 {
		return ""
	}
	rest := string(body[i+len(`"continue":"`):])
	return rest[:strings.IndexByte(rest, '"')]
}

func waitEtcd(ctx context.Context, cli *clientv3.Client, ep string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Status(c, ep)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("etcd at %s not up after 30s", ep)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func etcdVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	return f[len(f)-1]
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}
