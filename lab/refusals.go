package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/breakglass/breakglass/nodeops/apiprobe"
)

// The ordinary in-cluster workload whose requests the refusal measurement
// sends beside the oncall user's: an application's ServiceAccount that
// reads its own namespace's pods, as any in-cluster client does. API
// Priority and Fairness puts it where it puts the telemetry agents
// (FlowSchema service-accounts, priority level workload-low), in a flow of
// its own; the oncall user is in global-default.
const (
	WorkloadNamespace = "default"
	WorkloadAccount   = "ordinary-app"
)

// refusalTimeout is the ordinary users' timeout in the refusal
// measurement: longer than the 15 s that APF lets a request without a
// deadline of its own wait in a queue before it answers 429, so that a
// request APF refuses counts as a 429 and not as a timeout.
const refusalTimeout = 20 * time.Second

// Refusals is who the API servers refused (429) over one window of
// requests: the ordinary users, by their own counts, and everyone else
// (the agents), from the API servers' counts.
type Refusals struct {
	Phase string `json:"phase"`
	// Servers are the API servers the ordinary users asked in turn, and
	// whose /metrics were read.
	Servers []string `json:"servers"`
	// Oncall is the oncall user's kubectl (global-default); Workload the
	// ordinary application's ServiceAccount (workload-low).
	Oncall   Probe `json:"oncall"`
	Workload Probe `json:"workload"`
	// Window is how long the ordinary users' requests took, over which
	// the counts below are taken.
	Window   time.Duration `json:"-"`
	WindowMs int64         `json:"windowMs"`
	// APIServer429 is the API servers' count of their 429 answers over
	// the window (apiserver_request_total{code="429"}); Others429 is
	// that less the ordinary users' own: the agents'. -1 when the
	// counts could not be read (MetricsError).
	APIServer429 int64  `json:"apiserver429"`
	Others429    int64  `json:"others429"`
	MetricsError string `json:"metricsError,omitempty"`
	// Rejected is API Priority and Fairness's rejections over the
	// window, by priority level and reason ("workload-low time-out").
	Rejected map[string]int64 `json:"rejected,omitempty"`
	// Seats is each priority level's nominal concurrency limit on the
	// first server (apiserver_flowcontrol_nominal_limit_seats): what the
	// inflight limits give it.
	Seats map[string]int64 `json:"seats,omitempty"`
}

// OthersPerMinute is the agents' 429s per minute of the window (-1 when
// unknown).
func (r Refusals) OthersPerMinute() float64 {
	if r.Others429 < 0 {
		return -1
	}
	if r.Window <= 0 {
		return 0
	}
	return float64(r.Others429) / r.Window.Minutes()
}

// MeasureRefusals takes n requests of the oncall user, then n of the
// ordinary workload, each with refusalTimeout, round-robin over servers
// (URLs; the lab's API server when none), and the API servers' counts of
// 429s and of APF's rejections before and after, read as the exempt
// admin. A saturated API server may not answer even the admin: the counts
// are then unknown (MetricsError says why) and the users' own are still
// measured. The workload's token must have been made while the API server
// answered: the first MeasureRefusals of a Lab makes it (PrepareWorkload).
func (l *Lab) MeasureRefusals(ctx context.Context, phase string, n int, servers []string) (Refusals, error) {
	if len(servers) == 0 {
		servers = []string{l.State.APIServer}
	}
	r := Refusals{Phase: phase, Servers: servers, Others429: -1}
	wcfg, err := l.PrepareWorkload(ctx)
	if err != nil {
		return r, err
	}
	ocfg, err := clientcmd.BuildConfigFromFlags("", l.State.OncallKubeconfig)
	if err != nil {
		return r, err
	}
	before, berr := l.apfCounts(ctx, servers, 3)
	start := time.Now()
	if r.Oncall, err = probeAs(ctx, ocfg, "oncall", n, refusalTimeout, servers, "/api/v1/pods?limit=500"); err != nil {
		return r, err
	}
	if r.Workload, err = probeAs(ctx, wcfg, "workload", n, refusalTimeout, servers, "/api/v1/namespaces/"+WorkloadNamespace+"/pods"); err != nil {
		return r, err
	}
	r.Window = time.Since(start).Round(time.Millisecond)
	r.WindowMs = r.Window.Milliseconds()
	after, aerr := l.apfCounts(ctx, servers, 3)
	if err := errors.Join(berr, aerr); err != nil {
		r.MetricsError = firstLine(err.Error())
		return r, nil
	}
	r.APIServer429 = after.total429 - before.total429
	r.Others429 = max(0, r.APIServer429-int64(r.Oncall.Throttled+r.Workload.Throttled))
	r.Rejected = map[string]int64{}
	for k, v := range after.rejected {
		if d := v - before.rejected[k]; d > 0 {
			r.Rejected[k] = d
		}
	}
	r.Seats = after.seats
	return r, nil
}

// NominalSeats is the nominal concurrency limit of each APF priority level
// of the lab's API server (apiserver_flowcontrol_nominal_limit_seats):
// what its inflight limits give each level.
func (l *Lab) NominalSeats(ctx context.Context) (map[string]int64, error) {
	c, err := l.apfCounts(ctx, []string{l.State.APIServer}, 3)
	return c.seats, err
}

// PrepareWorkload makes the ordinary workload's client config once per
// Lab: its ServiceAccount (created, with the view role in its namespace,
// when missing) and a token of two hours from the TokenRequest API, asked
// as the exempt admin while the API server answers.
func (l *Lab) PrepareWorkload(ctx context.Context) (*rest.Config, error) {
	if l.workload != nil {
		return l.workload, nil
	}
	c, err := l.client()
	if err != nil {
		return nil, err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: WorkloadAccount}}
	if _, err := c.ServiceAccounts(WorkloadNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("ordinary workload: %w", err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: WorkloadAccount + "-view"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: WorkloadAccount, Namespace: WorkloadNamespace}},
	}
	if _, err := c.RoleBindings(WorkloadNamespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("ordinary workload: %w", err)
	}
	tr := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "authentication.k8s.io/v1",
		"kind":       "TokenRequest",
		"metadata":   map[string]any{"name": WorkloadAccount},
		"spec":       map[string]any{"expirationSeconds": int64(7200)},
	}}
	out, err := c.dyn.Resource(coreGV.WithResource("serviceaccounts")).Namespace(WorkloadNamespace).Create(ctx, tr, metav1.CreateOptions{}, "token")
	if err != nil {
		return nil, fmt.Errorf("ordinary workload: token of %s/%s: %w", WorkloadNamespace, WorkloadAccount, err)
	}
	token, _, _ := unstructured.NestedString(out.Object, "status", "token")
	if token == "" {
		return nil, fmt.Errorf("ordinary workload: the TokenRequest of %s/%s returned no token", WorkloadNamespace, WorkloadAccount)
	}
	admin, err := clientcmd.BuildConfigFromFlags("", l.State.Kubeconfig)
	if err != nil {
		return nil, err
	}
	l.workload = &rest.Config{Host: admin.Host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: admin.CAData, CAFile: admin.CAFile}}
	return l.workload, nil
}

// probeAs sends n GETs of path as cfg's user, one at a time, round-robin
// over servers, each with timeout and without client-go's retries on 429,
// and counts what came back (see probeServers).
func probeAs(ctx context.Context, cfg *rest.Config, phase string, n int, timeout time.Duration, servers []string, path string) (Probe, error) {
	p := Probe{Phase: phase, Requests: n}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return p, err
	}
	hc := &http.Client{Transport: rt, Timeout: timeout}
	var lat []time.Duration
	for i := 0; i < n; i++ {
		req, _ := http.NewRequestWithContext(ctx, "GET", servers[i%len(servers)]+path, nil)
		start := time.Now()
		resp, err := hc.Do(req)
		d := time.Since(start)
		lat = append(lat, d)
		switch {
		case ctx.Err() != nil:
			return p, ctx.Err()
		case err != nil && isTimeout(err):
			p.TimedOut++
		case err != nil:
			p.Failed++
		default:
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusTooManyRequests:
				p.Throttled++
			case resp.StatusCode < 300:
				p.OK++
				if d >= SLO {
					p.Slow++
				}
			default:
				p.Failed++
			}
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p.P50 = lat[len(lat)/2].Round(time.Millisecond)
	p.Max = lat[len(lat)-1].Round(time.Millisecond)
	p.P50Ms, p.MaxMs = p.P50.Milliseconds(), p.Max.Milliseconds()
	return p, nil
}

// apfCounts is what the API servers' /metrics say of refusals: their
// 429s, APF's rejections by priority level and reason (summed over the
// servers), and the first server's nominal seats per priority level, each
// server asked up to tries times.
type apfCounts struct {
	total429 int64
	rejected map[string]int64
	seats    map[string]int64
}

func (l *Lab) apfCounts(ctx context.Context, servers []string, tries int) (apfCounts, error) {
	out := apfCounts{rejected: map[string]int64{}, seats: map[string]int64{}}
	for i, s := range servers {
		c, err := newKubeAt(l.State.Kubeconfig, s, 15*time.Second)
		if err != nil {
			return out, err
		}
		// A starved API server may not finish a TLS handshake in
		// client-go's 10 s: asked up to tries times.
		var body []byte
		for try := 0; try < max(tries, 1); try++ {
			if body, err = c.raw(ctx, "/metrics"); err == nil || ctx.Err() != nil {
				break
			}
		}
		if err != nil {
			return out, fmt.Errorf("%s/metrics: %w", s, err)
		}
		parseAPFMetrics(string(body), &out, i == 0)
	}
	return out, nil
}

// parseAPFMetrics adds the counts of one /metrics text to out; with seats,
// it takes its nominal seats too.
func parseAPFMetrics(text string, out *apfCounts, seats bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		m, err := apiprobe.ParseSample(line)
		if err != nil {
			continue
		}
		labels, v := m.Labels, m.Value
		switch m.Name {
		case "apiserver_request_total":
			if labels["code"] == "429" {
				out.total429 += int64(v)
			}
		case "apiserver_flowcontrol_rejected_requests_total":
			out.rejected[labels["priority_level"]+" "+labels["reason"]] += int64(v)
		case "apiserver_flowcontrol_nominal_limit_seats":
			if seats {
				out.seats[labels["priority_level"]] = int64(v)
			}
		}
	}
}

// WriteRefusals prints measurements as a table: each ordinary user's
// answers and the agents' refusals per minute, with the seats the inflight
// limits gave their priority levels.
func WriteRefusals(w io.Writer, rs []Refusals) {
	fmt.Fprintf(w, "%-10s %-34s %8s %4s %9s %5s %9s %8s\n", "PHASE", "WHO (PRIORITY LEVEL, NOMINAL SEATS)", "REQUESTS", "OK", "SLOW(>"+SLO.String()+")", "429", "TIMEOUTS", "P50")
	for _, r := range rs {
		row := func(who string, p Probe) {
			fmt.Fprintf(w, "%-10s %-34s %8d %4d %9d %5d %9d %8s\n", r.Phase, who, p.Requests, p.OK, p.Slow, p.Throttled, p.TimedOut, p.P50)
		}
		seats := func(level string) string {
			if n, ok := r.Seats[level]; ok {
				return strconv.FormatInt(n, 10)
			}
			return "?"
		}
		row(fmt.Sprintf("oncall (global-default, %s)", seats("global-default")), r.Oncall)
		row(fmt.Sprintf("%s (workload-low, %s)", WorkloadAccount, seats("workload-low")), r.Workload)
		if r.Others429 < 0 {
			fmt.Fprintf(w, "%-10s %-34s %8s %4s %9s %5s %9s %8s   (the API server's counts unread: %s)\n", r.Phase, "everyone else: the agents", "-", "-", "-", "?", "-", "-", r.MetricsError)
			continue
		}
		fmt.Fprintf(w, "%-10s %-34s %8s %4s %9s %5d %9s %8s   (%.0f/min over %s)\n", r.Phase, "everyone else: the agents", "-", "-", "-", r.Others429, "-", "-", r.OthersPerMinute(), r.Window.Round(time.Second))
	}
}

// RejectedLine is APF's rejections over r's window, or why they are
// unknown.
func (r Refusals) RejectedLine() string {
	if r.Others429 < 0 {
		return "unknown (" + r.MetricsError + ")"
	}
	return DescribeRejected(r.Rejected)
}

// DescribeRejected is APF's rejections, "workload-low time-out 120, ...".
func DescribeRejected(m map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
