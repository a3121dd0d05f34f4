package lab

import (
	"strings"
	"testing"
	"time"
)

func TestParseAPFMetrics(t *testing.T) {
	text := `# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="LIST",version="v1"} 12
apiserver_request_total{code="429",component="apiserver",dry_run="",group="",resource="configmaps",scope="cluster",subresource="",verb="LIST",version="v1"} 734
apiserver_request_total{code="429",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="LIST",version="v1"} 2.28e+02
apiserver_flowcontrol_rejected_requests_total{flow_schema="service-accounts",priority_level="workload-low",reason="time-out"} 1326
apiserver_flowcontrol_rejected_requests_total{flow_schema="other",priority_level="workload-low",reason="time-out"} 4
apiserver_flowcontrol_rejected_requests_total{flow_schema="global-default",priority_level="global-default",reason="queue-full"} 1
apiserver_flowcontrol_nominal_limit_seats{priority_level="global-default"} 49
apiserver_flowcontrol_nominal_limit_seats{priority_level="workload-low"} 245
apiserver_flowcontrol_nominal_limit_seats_bogus{priority_level="workload-low"} 9
not a sample
apiserver_request_total{code="429"} notanumber
`
	c := apfCounts{rejected: map[string]int64{}, seats: map[string]int64{}}
	parseAPFMetrics(text, &c, true)
	parseAPFMetrics(text, &c, false) // a second server: counts add, seats are the first's
	if c.total429 != 2*(734+228) {
		t.Errorf("429s: %d, want %d", c.total429, 2*(734+228))
	}
	if got := c.rejected["workload-low time-out"]; got != 2*1330 {
		t.Errorf("workload-low time-out: %d, want %d", got, 2*1330)
	}
	if got := c.rejected["global-default queue-full"]; got != 2 {
		t.Errorf("global-default queue-full: %d, want 2", got)
	}
	if c.seats["global-default"] != 49 || c.seats["workload-low"] != 245 || len(c.seats) != 2 {
		t.Errorf("seats: %v", c.seats)
	}
	if got := DescribeRejected(c.rejected); got != "global-default queue-full 2, workload-low time-out 2660" {
		t.Errorf("DescribeRejected: %q", got)
	}
	if got := DescribeRejected(nil); got != "none" {
		t.Errorf("DescribeRejected(nil): %q", got)
	}
}

func TestRefusalsPerMinute(t *testing.T) {
	r := Refusals{Others429: 90, Window: 30 * time.Second}
	if got := r.OthersPerMinute(); got != 180 {
		t.Errorf("%v per minute, want 180", got)
	}
	if got := (Refusals{Others429: 5}).OthersPerMinute(); got != 0 {
		t.Errorf("no window: %v per minute, want 0", got)
	}
	unread := Refusals{Others429: -1, Window: time.Minute, MetricsError: "https://10.77.0.10:6443/metrics: TLS handshake timeout"}
	if got := unread.OthersPerMinute(); got != -1 {
		t.Errorf("counts unread: %v per minute, want -1", got)
	}
	if got := unread.RejectedLine(); got != "unknown (https://10.77.0.10:6443/metrics: TLS handshake timeout)" {
		t.Errorf("counts unread: RejectedLine %q", got)
	}
	var b strings.Builder
	WriteRefusals(&b, []Refusals{unread})
	if !strings.Contains(b.String(), "counts unread: https://10.77.0.10:6443/metrics: TLS handshake timeout") || !strings.Contains(b.String(), "(global-default, ?)") {
		t.Errorf("table with the counts unread:\n%s", b.String())
	}
}
