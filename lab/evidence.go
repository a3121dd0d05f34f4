package lab

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

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
	cfg, err := clientcmd.BuildConfigFromFlags("", l.State.OncallKubeconfig)
	if err != nil {
		return Probe{Phase: phase, Requests: n}, err
	}
	p, err := probeAs(ctx, cfg, phase, n, timeout, servers, "/api/v1/pods?limit=500")
	if err != nil {
		return p, err
	}
	// Once: a saturated API server may not answer it in time, and the
	// count is only shown.
	if c, err := l.apfCounts(ctx, []string{l.State.APIServer}, 1); err == nil {
		p.Rejected429 = c.total429
	}
	return p, nil
}

func isTimeout(err error) bool {
	type timeout interface{ Timeout() bool }
	if t, ok := err.(timeout); ok && t.Timeout() {
		return true
	}
	return strings.Contains(err.Error(), "Client.Timeout") || strings.Contains(err.Error(), "deadline exceeded")
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
