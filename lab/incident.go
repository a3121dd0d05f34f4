package lab

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The incidents the lab can start (see ../shared/INCIDENTS.md).
const (
	IncidentOverload   = "overload"
	IncidentPreemption = "preemption"
)

// Where the incidents put their objects.
const (
	TelemetryNamespace = "telemetry"
	TelemetryDaemonSet = "telemetry-agent"
	IngesterNamespace  = "cortex"
	NewClusterNS       = "cortex-new"
)

// The overload incident's load and the apiserver it meets. The telemetry
// agents LIST, from every node, the cluster's pods, nodes and ConfigMaps;
// the cluster holds fleetConfigMaps ConfigMaps of fleetConfigMapBytes each
// (about 1.2 MB of JSON per LIST), so the agents' cost grows with the
// cluster, as in December 2024. The apiserver keeps API Priority and
// Fairness in its default configuration and its default inflight limits
// (APF then puts the agents in workload-low and an ordinary user in
// global-default, and queues, rejects and fairly shares seats between
// them); what it lacks is CPU: it is capped at overloadCPUMillis, a
// control-plane machine that is small for that load. An ordinary user's
// kubectl then waits seconds or times out, while the exempt admin
// (system:masters) still gets through, slowly.
//
// The figures were chosen in the lab (2 cores): with 100m, or with LISTs
// paginated in 100s, APF and Go's scheduler kept an ordinary user's
// requests fast more often than not; a flow-control shed leaves one agent
// request running at a time (see docs/shed.md), which 50m absorbs and 25m
// did not.
const (
	FleetNamespace      = "fleet"
	fleetConfigMaps     = 500
	fleetConfigMapBytes = 2048
	// telemetryPaths are what every agent LISTs, in turn, telemetryLoops
	// at once; whole (telemetryPage 0), or in pages of telemetryPage.
	telemetryPaths = "/api/v1/pods,/api/v1/nodes,/api/v1/configmaps"
	telemetryPage  = 0
	telemetryLoops = 48
	// SLO is how fast an ordinary user's `kubectl get pods` must answer
	// for the apiserver to count as healthy.
	SLO = time.Second
)

// overloadCaps are the apiserver's CPU caps the overload incident tries,
// in turn, until an ordinary user's requests miss the SLO: the loosest
// cap that the load saturates. A cap is CPU time, and what a millicore
// does depends on the machine: on a faster one 50m left most requests
// within the SLO (p50 600 ms); on a slower one 50m and 100m were below
// what the idle API server itself used after the incident (100-125m,
// with the load gone, as its static pod on cp-1), so once the offender
// was held it never recovered (8 minutes at 100m; 3 seconds once the cap
// was lifted). Starting loose keeps it saturated under the load (200m:
// none of 20 requests answered) and able to recover without it. The same
// machine saturated at 32m one hour and at 70m the next; 20m and 16m are
// there for a machine faster still, where the incident would otherwise
// fail at 25m.
var overloadCaps = []int{200, 140, 100, 70, 50, 40, 32, 25, 20, 16}

// overloadCapFile holds the cap that saturated the apiserver in the last
// overload incident of this lab: the next one starts its search there, so
// a machine where the first caps are loose pays for them once per lab,
// not once per incident (a minute each). lab down removes it with the lab.
func (l *Lab) overloadCapFile() string { return filepath.Join(l.State.Dir, "overload-cpu-millis") }

// lastOverloadCap is the cap in overloadCapFile, 0 when there is none or
// it is not one of overloadCaps.
func (l *Lab) lastOverloadCap() int {
	b, err := os.ReadFile(l.overloadCapFile())
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !slices.Contains(overloadCaps, n) {
		return 0
	}
	return n
}

func (l *Lab) rememberOverloadCap(cpu int) error {
	return writeAtomic(l.overloadCapFile(), []byte(strconv.Itoa(cpu)+"\n"), 0o644)
}

// OverloadResult is the evidence of the overload incident.
type OverloadResult struct {
	Before Probe `json:"before"`
	After  Probe `json:"after"`
	// TelemetryPods is how many telemetry agents ran, one per worker, as
	// the workers' containerd reported them once the limits were tight.
	TelemetryPods int `json:"telemetryPods"`
	// Agents is the count per worker.
	Agents []NodeCount `json:"agents"`
	// CPUMillis is the apiserver's CPU cap that saturated it (the first of
	// overloadCaps under which most of an ordinary user's requests missed
	// the SLO).
	CPUMillis int `json:"cpuMillis"`
	// DNS is what each CoreDNS server answered for kubernetes.default
	// once restarted under the saturated API server (NOERROR: it synced;
	// SERVFAIL: it could not); DNSError why there is no such answer.
	DNS      map[string]string `json:"dns,omitempty"`
	DNSError string            `json:"dnsError,omitempty"`
}

// How long each step of an incident may take before it fails with what it
// saw. They bound waits on conditions; nothing here sleeps a fixed time to
// let something happen.
const (
	agentsTimeout    = 3 * time.Minute
	apiserverTimeout = 2 * time.Minute
	loadTimeout      = time.Minute
)

// Overload reproduces the December 2024 outage: a telemetry DaemonSet whose
// every pod LISTs the whole cluster in a tight loop, on an API server too
// small for that load, until ordinary kubectl requests wait seconds, time
// out or get 429s.
//
// The order matters. The cluster's ConfigMaps and the DaemonSet are
// created, and its agents are seen running on every worker (from each
// worker's containerd), while the apiserver still has all the machine's
// CPU; only then is it capped. Capping first would starve the very
// controllers, scheduler and kubelets that must start the agents, and the
// incident would start only sometimes.
func (l *Lab) Overload(ctx context.Context, log io.Writer) (*OverloadResult, error) {
	return l.OverloadWith(ctx, log, OverloadOptions{})
}

// OverloadOptions change how the overload incident meets the API server,
// for comparisons at one cap.
type OverloadOptions struct {
	// CPUMillis, when set, is the only cap tried, and the evidence is
	// taken under it whether it saturates the API server or not: no
	// search, and the cap is not kept for the next incident.
	CPUMillis int
	// KeepFlags keeps the command cp-1's API server runs with (a tune
	// made before the incident) instead of the lab's default.
	KeepFlags bool
}

// OverloadWith is Overload with opts.
func (l *Lab) OverloadWith(ctx context.Context, log io.Writer, opts OverloadOptions) (*OverloadResult, error) {
	logf := func(format string, a ...any) { fmt.Fprintf(log, "incident: "+format+"\n", a...) }
	c, err := l.client()
	if err != nil {
		return nil, err
	}
	if _, err := c.DaemonSets(TelemetryNamespace).Get(ctx, TelemetryDaemonSet, metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("the overload incident is already running (DaemonSet %s/%s exists)\nhint: run breakglass lab incident reset first", TelemetryNamespace, TelemetryDaemonSet)
	}
	spec := l.defaultAPIServerSpec()
	if opts.KeepFlags {
		if spec.Argv, err = apiserverCommand(l.State.Hosts[0]); err != nil {
			return nil, err
		}
		cpu, err := hostCPUCap(l.State.Hosts[0])
		if err != nil {
			return nil, fmt.Errorf("the apiserver on %s: its CPU cap: %w", l.State.Hosts[0].Name, err)
		}
		if cpu != 0 {
			return nil, fmt.Errorf("the apiserver on %s is capped at %dm CPU (an incident left it changed)\nhint: run breakglass lab incident reset first", l.State.Hosts[0].Name, cpu)
		}
	} else if !l.apiserverHasDefaultFlags() {
		return nil, fmt.Errorf("the apiserver on %s does not run with the lab's default spec (an incident left it changed)\nhint: run breakglass lab incident reset first", l.State.Hosts[0].Name)
	}
	res := &OverloadResult{}
	logf("measuring what kubectl sees before the incident")
	if res.Before, err = l.probeAPI(ctx, "before", 20, 5*time.Second); err != nil {
		return nil, err
	}

	logf("filling the cluster: %d ConfigMaps of %d KiB in namespace %s", fleetConfigMaps, fleetConfigMapBytes/1024, FleetNamespace)
	if err := l.createFleet(ctx); err != nil {
		return nil, err
	}
	logf("creating DaemonSet %s/%s: every pod LISTs pods, nodes and ConfigMaps in a loop", TelemetryNamespace, TelemetryDaemonSet)
	if err := createTelemetry(ctx, c, l.State.APIServer); err != nil {
		return nil, err
	}
	workers := len(l.State.HostsWithRole("worker"))
	logf("waiting for the agent to run on all %d workers (from each worker's containerd)", workers)
	if res.Agents, err = l.waitOnWorkers(ctx, TelemetryNamespace, 1, agentsTimeout); err != nil {
		return res, err
	}

	caps := overloadCaps
	// A search from the top gives calm caps up early, and caps whose
	// evidence is far from saturation; one from a cap that saturated this
	// lab before waits its whole minute and takes all three series at
	// each cap.
	giveUpEarly := opts.CPUMillis == 0
	if opts.CPUMillis > 0 {
		caps = []int{opts.CPUMillis}
	} else if last := l.lastOverloadCap(); last > 0 {
		giveUpEarly = false
		i := slices.Index(overloadCaps, last)
		caps = overloadCaps[i:]
		logf("the last overload incident in this lab saturated the apiserver at %dm: starting there (%s)", last, l.overloadCapFile())
	}
	for i, cpu := range caps {
		logf("capping the apiserver at %dm CPU (API Priority and Fairness stays on, in its default configuration)", cpu)
		spec.CPUMillis = cpu
		if err := l.setAPIServerSpec(ctx, spec); err != nil {
			return res, err
		}
		logf("letting the load build until an ordinary user's requests miss the %s SLO", SLO)
		err := l.waitSaturated(ctx, loadTimeout, giveUpEarly)
		if opts.CPUMillis > 0 {
			// One cap, saturated or not: the evidence is what it is.
			if err != nil {
				logf("%s at %dm: taking the evidence all the same", firstLine(err.Error()), cpu)
			}
			if res.After, err = l.probeAPI(ctx, "after", 20, 5*time.Second); err != nil {
				return res, err
			}
			res.CPUMillis = cpu
			break
		}
		if err == nil {
			res.After, err = l.saturatedEvidence(ctx, logf, cpu, giveUpEarly)
		}
		if err == nil {
			res.CPUMillis = cpu
			if err := l.rememberOverloadCap(cpu); err != nil {
				logf("could not keep the cap for the next incident (it will search from %dm again): %v", overloadCaps[0], err)
			}
			break
		}
		if i == len(caps)-1 || ctx.Err() != nil {
			return res, err
		}
		logf("%s at %dm: tightening the cap", firstLine(err.Error()), cpu)
	}
	// December 2024's blast radius: a CoreDNS that must resync with the
	// API server (restarted by a crash, an OOM kill or a rollout) fails
	// every cluster lookup while it cannot. Whether it can depends on what
	// the saturated API server lets through: in the lab, APF serves its
	// kube-system service account, and it resyncs (docs/lab.md).
	logf("restarting CoreDNS on the workers, as a crash or a rollout would while the apiserver is saturated")
	if res.DNS, err = l.RestartCoreDNS(ctx); err != nil {
		res.DNSError = err.Error()
		logf("cluster DNS: %v", err)
	} else {
		logf("cluster DNS after the restart: %s", describeDNS(res.DNS))
	}
	// The agents run on, whatever the apiserver lets their kubelets report.
	if res.Agents, err = l.countOnWorkers(ctx, TelemetryNamespace); err != nil {
		return res, err
	}
	for _, a := range res.Agents {
		res.TelemetryPods += min(a.Running, 1)
	}
	logf("%d of %d workers run the agent (%s)", res.TelemetryPods, workers, describeCounts(res.Agents))
	l.State.Incidents = appendUnique(l.State.Incidents, IncidentOverload)
	return res, l.State.Save()
}

// createFleet creates the ConfigMaps that make the cluster big: what every
// telemetry LIST costs. They are created concurrently, without client-side
// rate limits, while the apiserver has all its CPU.
func (l *Lab) createFleet(ctx context.Context) error {
	c, err := newKubeUnlimited(l.State.Kubeconfig, 30*time.Second)
	if err != nil {
		return err
	}
	if _, err := c.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: FleetNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("fleet: %w", err)
	}
	payload := strings.Repeat("x", fleetConfigMapBytes)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := 0; i < fleetConfigMaps; i++ {
		g.Go(func() error {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("inventory-%04d", i)}, Data: map[string]string{"payload": payload}}
			if _, err := c.ConfigMaps(FleetNamespace).Create(gctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("fleet: configmap %s: %w", cm.Name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// In the first search of a lab, from the loosest cap, a cap under which
// the load has had calmAfter to build, and every one of the oncall user's
// requests of the last calmFor answered within the SLO, is given up before
// waitSaturated's timeout: the agents already ran at full strength before
// the cap, which takes effect at once. On this kind of machine caps from
// 200m down to 100m left the oncall user's requests at a p50 of 74 ms to
// 420 ms for the whole minute each, in the first incident of a lab. A
// search from the cap that saturated the lab last time does not: there
// the load comes and goes (in one CI run, a calm 17 s at 50m followed 19 s
// of misses), and giving up its calm spells took that search down to 25m
// where 50m had saturated the incident before.
const (
	calmAfter = 20 * time.Second
	calmFor   = 15 * time.Second
)

// calmWatch tells when a cap is calm: since start (the cap), probes in a
// row with every request within the SLO.
type calmWatch struct {
	start time.Time
	since time.Time // when the first probe of the current calm run began; zero when the last probe was not calm
}

// observe records a probe begun at probed and answered at now, calm when
// every request answered within the SLO, and reports whether the cap is
// calm: calmAfter since start, and calm probes for calmFor.
func (w *calmWatch) observe(probed, now time.Time, calm bool) bool {
	if !calm {
		w.since = time.Time{}
		return false
	}
	if w.since.IsZero() {
		w.since = probed
	}
	return now.Sub(w.start) >= calmAfter && now.Sub(w.since) >= calmFor
}

// waitSaturated waits until an ordinary user's requests miss the SLO: of
// three in a row, at least two answer slower than the SLO, time out, or
// are refused. It asks as the oncall user, whom nothing exempts. With
// giveUpEarly it gives up a calm cap (calmWatch).
func (l *Lab) waitSaturated(ctx context.Context, timeout time.Duration, giveUpEarly bool) error {
	var last Probe
	var perr error
	cw := calmWatch{start: time.Now()}
	calm := false
	err := poll(ctx, time.Second, timeout, func(ctx context.Context) bool {
		probed := time.Now()
		p, err := l.probeAPI(ctx, "wait", 3, 5*time.Second)
		if ctx.Err() != nil {
			return false // the deadline, mid-probe: keep the last full probe
		}
		last, perr = p, err
		if calm = cw.observe(probed, time.Now(), perr == nil && last.Missed() == 0) && giveUpEarly; calm {
			return true
		}
		return perr == nil && last.Missed() >= 2
	})
	if err == nil && calm {
		return fmt.Errorf("calm: every request of the oncall user for %s answered within the %s SLO after %s under the cap: the last 3: p50 %s",
			time.Since(cw.since).Round(time.Second), SLO, time.Since(cw.start).Round(time.Second), last.P50.Round(time.Millisecond))
	}
	if err == errTimeout {
		if perr != nil {
			return fmt.Errorf("waited %s for the apiserver to saturate: %w", timeout, perr)
		}
		return fmt.Errorf("waited %s for the apiserver to saturate: the oncall user's last 3 requests: %d ok (%d slower than %s), p50 %s\nhint: see %s/logs/worker-*-containerd.log for the telemetry agents' own counts", timeout, last.OK, last.Slow, SLO, last.P50, l.State.Dir)
	}
	return err
}

// Missed counts the requests of p that missed the SLO: slower, timed out,
// refused or failed.
func (p Probe) Missed() int { return p.Requests - p.OK + p.Slow }

// saturatedEvidence takes the incident's "after" evidence: 20 requests
// of the oncall user, most of which miss the SLO. Near the edge of
// saturation one series of 20 can fall just short while the next does
// not, so a series that falls short is logged and taken again, up to
// three series (at 25m, on a fast machine two series in a row fell just
// short: 7 and 8 of 20); then the last series and an
// error that says what it saw. With giveUpEarly, a series in which fewer
// than a quarter missed ends it at once.
func (l *Lab) saturatedEvidence(ctx context.Context, logf func(string, ...any), cpu int, giveUpEarly bool) (Probe, error) {
	const series = 3
	var p Probe
	for i := 0; i < series; i++ {
		var err error
		if p, err = l.probeAPI(ctx, "after", 20, 5*time.Second); err != nil {
			return p, err
		}
		if 2*p.Missed() >= p.Requests {
			return p, nil
		}
		logf("only %d of %d requests missed the %s SLO at %dm (p50 %s)", p.Missed(), p.Requests, SLO, cpu, p.P50.Round(time.Millisecond))
		if giveUpEarly && 4*p.Missed() < p.Requests {
			// Far from the edge, where a series falls a request or
			// two short of half: the next series will not reach it.
			return p, fmt.Errorf("fewer than a quarter of 20 requests missed the %s SLO: %s", SLO, p)
		}
	}
	return p, fmt.Errorf("most of 20 requests did not miss the %s SLO in %d series: the last: %s\nhint: see %s/logs/worker-*-containerd.log for the telemetry agents' own counts", SLO, series, p, l.State.Dir)
}

// waitOnWorkers waits until every worker's containerd runs at least
// perNode containers of namespace ns, and returns the counts.
func (l *Lab) waitOnWorkers(ctx context.Context, ns string, perNode int, timeout time.Duration) ([]NodeCount, error) {
	var counts []NodeCount
	var last error
	err := poll(ctx, time.Second, timeout, func(ctx context.Context) bool {
		counts, last = l.countOnWorkers(ctx, ns)
		if last != nil {
			return false
		}
		for _, c := range counts {
			if c.Running < perNode {
				return false
			}
		}
		return true
	})
	if err == errTimeout {
		if last != nil {
			return counts, fmt.Errorf("%s: waited %s for %d running container(s) per worker: %w", ns, timeout, perNode, last)
		}
		return counts, fmt.Errorf("%s: waited %s for %d running container(s) per worker, containerd shows %s\nhint: see %s/logs/worker-*-kubelet.log and %s", ns, timeout, perNode, describeCounts(counts), l.State.Dir, staticPodLogs(l.State.Hosts[0], controllerManagerExe))
	}
	return counts, err
}

// waitGoneFromWorkers waits until no worker's containerd runs a container
// of any of the namespaces.
func (l *Lab) waitGoneFromWorkers(ctx context.Context, timeout time.Duration, namespaces ...string) error {
	var left string
	var last error
	err := poll(ctx, time.Second, timeout, func(ctx context.Context) bool {
		for _, ns := range namespaces {
			counts, err := l.countOnWorkers(ctx, ns)
			if last = err; err != nil {
				return false
			}
			for _, c := range counts {
				if c.Running > 0 {
					left = fmt.Sprintf("%s still runs %d container(s) of %s", c.Node, c.Running, ns)
					return false
				}
			}
		}
		return true
	})
	if err == errTimeout {
		if last != nil {
			return fmt.Errorf("waited %s for the incident's containers to stop: %w", timeout, last)
		}
		return fmt.Errorf("waited %s for the incident's containers to stop: %s\nhint: see %s/logs/worker-*-kubelet.log", timeout, left, l.State.Dir)
	}
	return err
}

// apiserverHasDefaultFlags reports whether cp-1's API server runs as lab
// up starts it: its manifest's command the lab's default, and no CPU cap
// on cp-1's pods.
func (l *Lab) apiserverHasDefaultFlags() bool {
	cp := l.State.Hosts[0]
	cmd, err := apiserverCommand(cp)
	if err != nil || !slices.Equal(cmd, l.defaultAPIServerSpec().Argv) {
		return false
	}
	cpu, err := hostCPUCap(cp)
	return err == nil && cpu == 0
}

// setAPIServerSpec gives cp-1's API server spec: its command is written
// to its static pod's manifest when it changed (the kubelet then restarts
// the pod), and its CPU cap is set on cp-1's pods in place. It returns
// once a process with the new command, and no other, runs under that cap
// (seen in /proc and the cgroup on the machine, not through the API) and,
// when restarted, answers /readyz. It needs no request through the limits
// it may be lifting, so it works while the apiserver is saturated.
func (l *Lab) setAPIServerSpec(ctx context.Context, spec Spec) error {
	cp := l.State.Hosts[0]
	cur, err := apiserverCommand(cp)
	restart := err != nil || !slices.Equal(cur, spec.Argv)
	old := processArgvs(cp, spec.Argv[0])
	if restart {
		if err := writeAPIServerManifest(cp, spec); err != nil {
			return err
		}
	}
	if err := setHostCPUCap(cp, spec.CPUMillis); err != nil {
		return err
	}
	var why string
	err = poll(ctx, 200*time.Millisecond, apiserverTimeout, func(context.Context) bool {
		var ok bool
		ok, why = onlyNewRunning(cp, spec, old, restart)
		return ok
	})
	if err == errTimeout {
		return fmt.Errorf("the apiserver was not restarted with its new spec within %s: %s\nhint: see %s", apiserverTimeout, why, l.apiserverLogs())
	}
	if err != nil || !restart {
		// Capped in place: the same process, ready before, and
		// perhaps too starved now to answer /readyz in time (that is the
		// point of a cap).
		return err
	}
	return l.waitAPIServer(ctx, apiserverTimeout)
}

// apiserverLogs is where cp-1's kubelet keeps the API server's logs.
func (l *Lab) apiserverLogs() string {
	return staticPodLogs(l.State.Hosts[0], apiserverExe)
}

// defaultAPIServerSpec is the apiserver's spec as lab up starts it.
func (l *Lab) defaultAPIServerSpec() Spec {
	return apiserverSpec(l.State.Hosts[0], nil)
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func createTelemetry(ctx context.Context, c *kube, apiserver string) error {
	ns := TelemetryNamespace
	labels := map[string]string{"app": TelemetryDaemonSet}
	objs := []func() error{
		func() error {
			_, err := c.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: TelemetryDaemonSet}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: "telemetry-agent"},
				Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "nodes", "endpoints", "services", "configmaps"}, Verbs: []string{"get", "list", "watch"}}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "telemetry-agent"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "telemetry-agent"},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: TelemetryDaemonSet, Namespace: ns}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
				ObjectMeta: metav1.ObjectMeta{Name: TelemetryDaemonSet, Labels: labels},
				Spec: appsv1.DaemonSetSpec{
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{
							ServiceAccountName: TelemetryDaemonSet,
							// No kube-proxy in the lab: the agent uses the
							// node's network and the apiserver's address.
							HostNetwork: true,
							DNSPolicy:   corev1.DNSClusterFirstWithHostNet,
							// No toleration of the control plane's taint:
							// the agent runs on the workers. On cp-1 it
							// would share the overload's CPU cap (a quota
							// on all of cp-1's pods) with the API server.
							Containers: []corev1.Container{{
								Name:            "agent",
								Image:           TelemetryImage,
								ImagePullPolicy: corev1.PullNever,
								Env: []corev1.EnvVar{
									{Name: "APISERVER", Value: apiserver},
									{Name: "CONCURRENCY", Value: strconv.Itoa(telemetryLoops)},
									{Name: "PAGE", Value: strconv.Itoa(telemetryPage)},
									{Name: "PATHS", Value: telemetryPaths},
								},
							}},
							TerminationGracePeriodSeconds: ptr.To[int64](2),
						},
					},
				},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, f := range objs {
		if err := f(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("telemetry: %w", err)
		}
	}
	return nil
}

// PreemptionResult is the evidence of the preemption incident.
type PreemptionResult struct {
	OriginalIngesters int `json:"originalIngesters"`
	// Evicted is how many of the original (priority 0) ingesters were
	// preempted.
	Evicted int `json:"evicted"`
	// Running and Pending count ingester pods at the end.
	Running int `json:"running"`
	Pending int `json:"pending"`
	// PreemptedEvents counts the scheduler's Preempted events.
	PreemptedEvents int `json:"preemptedEvents"`
}

// ingesterCPU is sized so that two ingesters fill a lab worker (each
// reports the machine's 2 CPUs as allocatable).
var ingesterCPU = resource.MustParse("900m")

// Preemption reproduces the July 2019 cascade: production ingesters run with
// no priority; PriorityClasses arrive with a globalDefault; a new workload
// gets that default and preempts an ingester, whose replacement now has the
// default priority too and preempts the next, until every original ingester
// has been evicted.
func (l *Lab) Preemption(ctx context.Context, log io.Writer) (*PreemptionResult, error) {
	logf := func(format string, a ...any) { fmt.Fprintf(log, "incident: "+format+"\n", a...) }
	c, err := l.client()
	if err != nil {
		return nil, err
	}
	if _, err := c.PriorityClasses().Get(ctx, "medium", metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("the preemption incident is already running (PriorityClass medium exists)\nhint: run breakglass lab incident reset first")
	}
	if _, err := c.Namespaces().Get(ctx, IngesterNamespace, metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("namespace %s exists: the preemption incident ran before and was not reset\nhint: run breakglass lab incident reset (it waits for the namespace to go)", IngesterNamespace)
	}
	workers := len(l.State.HostsWithRole("worker"))
	res := &PreemptionResult{OriginalIngesters: 2 * workers}
	for _, ns := range []string{IngesterNamespace, NewClusterNS} {
		if _, err := c.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	logf("starting %d production ingesters (no priority class) that fill every worker", res.OriginalIngesters)
	if _, err := c.Deployments(IngesterNamespace).Create(ctx, cpuDeployment("ingester", int32(res.OriginalIngesters)), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	original, err := waitRunning(ctx, c, IngesterNamespace, "app=ingester", res.OriginalIngesters, 120*time.Second)
	if err != nil {
		return nil, err
	}
	logf("adding PriorityClasses critical, high, medium (globalDefault) and low")
	for _, pc := range []struct {
		name  string
		value int32
		def   bool
	}{{"critical", 1000000, false}, {"high", 100000, false}, {"medium", 1000, true}, {"low", 100, false}} {
		_, err := c.PriorityClasses().Create(ctx, &schedulingv1.PriorityClass{
			ObjectMeta: metav1.ObjectMeta{Name: pc.name}, Value: pc.value, GlobalDefault: pc.def,
			Description: "added by breakglass lab incident preemption",
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	logf("launching a new cluster's workload: it gets the default (medium) priority")
	if _, err := c.Deployments(NewClusterNS).Create(ctx, cpuDeployment("new-cluster", int32(workers)), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	// The cascade is over when every original ingester is gone; if it
	// stalls, the result says how far it went.
	err = poll(ctx, 2*time.Second, 120*time.Second, func(ctx context.Context) bool {
		pods, err := c.Pods(IngesterNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ingester"})
		if err != nil {
			return false
		}
		left := 0
		res.Running, res.Pending = 0, 0
		for _, p := range pods {
			if original[p.Name] && p.DeletionTimestamp == nil {
				left++
			}
			switch p.Status.Phase {
			case corev1.PodRunning:
				res.Running++
			case corev1.PodPending:
				res.Pending++
			}
		}
		res.Evicted = len(original) - left
		return left == 0
	})
	if err != nil && err != errTimeout {
		return res, err
	}
	if evs, err := c.Events(IngesterNamespace).List(ctx, metav1.ListOptions{FieldSelector: "reason=Preempted"}); err == nil {
		res.PreemptedEvents = len(evs)
	}
	logf("%d of %d original ingesters preempted; %d ingesters running, %d pending", res.Evicted, res.OriginalIngesters, res.Running, res.Pending)
	l.State.Incidents = appendUnique(l.State.Incidents, IncidentPreemption)
	return res, l.State.Save()
}

func cpuDeployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: name, Image: PauseImage, ImagePullPolicy: corev1.PullNever,
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: ingesterCPU}},
					}},
					TerminationGracePeriodSeconds: ptr.To[int64](1),
				},
			},
		},
	}
}

// waitRunning waits for want Running pods matching selector and returns
// their names.
func waitRunning(ctx context.Context, c *kube, ns, selector string, want int, timeout time.Duration) (map[string]bool, error) {
	names := map[string]bool{}
	err := poll(ctx, time.Second, timeout, func(ctx context.Context) bool {
		pods, err := c.Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false
		}
		names = map[string]bool{}
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning {
				names[p.Name] = true
			}
		}
		return len(names) >= want
	})
	if err == errTimeout {
		return names, fmt.Errorf("%s: %d of %d pods Running (%s) after %s", ns, len(names), want, selector, timeout)
	}
	return names, err
}

// firstLine is s up to its first newline.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// describeDNS is each CoreDNS server's answer, in address order.
func describeDNS(m map[string]string) string {
	var parts []string
	for _, a := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, a+" "+m[a])
	}
	return strings.Join(parts, ", ")
}
