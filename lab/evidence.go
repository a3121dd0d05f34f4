package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Probe is what an ordinary kubectl user saw over a series of requests.
type Probe struct {
	Phase     string `json:"phase"`
	Requests  int    `json:"requests"`
	OK        int    `json:"ok"`
	Throttled int    `json:"throttled"` // HTTP 429
	TimedOut  int    `json:"timedOut"`
	Failed    int    `json:"failed"` // other errors
	// Slow counts the requests that answered but slower than the SLO.
	Slow  int           `json:"slow"`
	P50   time.Duration `json:"-"`
	Max   time.Duration `json:"-"`
	P50Ms int64         `json:"p50Ms"`
	MaxMs int64         `json:"maxMs"`
	// Rejected429 is the API server's own count of 429s so far
	// (apiserver_request_total{code="429"}).
	Rejected429 int64 `json:"rejected429"`
}

// probeAPI sends n GET /api/v1/pods requests as the oncall user, the way a
// plain `kubectl get pods -A` does, one at a time with a per-request timeout,
// and without client-go's automatic retries on 429 so that each refusal
// counts.
func (l *Lab) probeAPI(ctx context.Context, phase string, n int, timeout time.Duration) (Probe, error) {
	return l.probeServers(ctx, phase, n, timeout, []string{l.State.APIServer})
}

// ProbeServers is Probe spread over several API servers in turn, as an
// ordinary user behind a round-robin load balancer sees them (servers are
// URLs, https://10.77.0.11:6443).
func (l *Lab) ProbeServers(ctx context.Context, phase string, n int, servers []string) (Probe, error) {
	if len(servers) == 0 {
		return Probe{}, fmt.Errorf("no API server to probe")
	}
	return l.probeServers(ctx, phase, n, 5*time.Second, servers)
}

func (l *Lab) probeServers(ctx context.Context, phase string, n int, timeout time.Duration, servers []string) (Probe, error) {
	p := Probe{Phase: phase, Requests: n}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.State.OncallKubeconfig)
	if err != nil {
		return p, err
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return p, err
	}
	hc := &http.Client{Transport: rt, Timeout: timeout}
	var lat []time.Duration
	for i := 0; i < n; i++ {
		req, _ := http.NewRequestWithContext(ctx, "GET", servers[i%len(servers)]+"/api/v1/pods?limit=500", nil)
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
	p.Rejected429, _ = l.apiserver429s(ctx)
	return p, nil
}

func isTimeout(err error) bool {
	type timeout interface{ Timeout() bool }
	if t, ok := err.(timeout); ok && t.Timeout() {
		return true
	}
	return strings.Contains(err.Error(), "Client.Timeout") || strings.Contains(err.Error(), "deadline exceeded")
}

// apiserver429s reads apiserver_request_total{code="429"} from /metrics as
// the admin (system:masters is exempt from the inflight limits, so this
// answers during the incident).
func (l *Lab) apiserver429s(ctx context.Context) (int64, error) {
	c, err := l.client()
	if err != nil {
		return 0, err
	}
	body, err := c.raw(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	var total float64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "apiserver_request_total{") && strings.Contains(line, `code="429"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return int64(total), nil
}

// WriteProbes prints probes as a table.
func WriteProbes(w io.Writer, probes []Probe) {
	fmt.Fprintf(w, "%-8s %8s %4s %9s %5s %9s %7s %8s %8s %16s\n", "PHASE", "REQUESTS", "OK", "SLOW(>"+SLO.String()+")", "429", "TIMEOUTS", "ERRORS", "P50", "MAX", "APISERVER-429s")
	for _, p := range probes {
		fmt.Fprintf(w, "%-8s %8d %4d %9d %5d %9d %7d %8s %8s %16d\n", p.Phase, p.Requests, p.OK, p.Slow, p.Throttled, p.TimedOut, p.Failed, p.P50, p.Max, p.Rejected429)
	}
}

// Probe sends n requests as the oncall user (see probeAPI), 5 s each.
func (l *Lab) Probe(ctx context.Context, phase string, n int) (Probe, error) {
	return l.probeAPI(ctx, phase, n, 5*time.Second)
}

// Healthy reports whether every request of p answered within the SLO.
func (p Probe) Healthy() bool { return p.OK == p.Requests && p.Slow == 0 }

// WaitHealthy waits until five requests in a row of the oncall user answer
// within the SLO, and returns that probe; after timeout, the last probe
// and an error that says what it saw.
func (l *Lab) WaitHealthy(ctx context.Context, timeout time.Duration) (Probe, error) {
	var last Probe
	var perr error
	err := poll(ctx, time.Second, timeout, func(ctx context.Context) bool {
		last, perr = l.probeAPI(ctx, "healthy", 5, 5*time.Second)
		return perr == nil && last.Healthy()
	})
	if err == errTimeout {
		if perr != nil {
			return last, fmt.Errorf("waited %s for the apiserver to answer the oncall user within %s: %w", timeout, SLO, perr)
		}
		return last, fmt.Errorf("waited %s for the apiserver to answer the oncall user within %s: the last 5 requests: %d ok (%d slower), %d 429, %d timed out, p50 %s", timeout, SLO, last.OK, last.Slow, last.Throttled, last.TimedOut, last.P50)
	}
	return last, err
}
