// Package apiprobe asks a control-plane node's own API server how it is, on
// the node itself, over SSH: whether it answers /readyz on the node's
// loopback address, and its inflight, rejected and API Priority and Fairness
// figures from its /metrics. The requests are made by curl on the node with
// the node's admin kubeconfig (kubeadm's super-admin.conf, then admin.conf),
// so they pass neither a load balancer nor breakglass's own shed rules, and
// as system:masters they are exempt from the limits they measure. The
// credentials never leave the node: the script writes them to a private
// temporary directory that it removes, and prints none of them.
package apiprobe

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
)

// DefaultKubeconfigs are the admin kubeconfigs tried in order (kubeadm's).
var DefaultKubeconfigs = []string{"/etc/kubernetes/super-admin.conf", "/etc/kubernetes/admin.conf"}

// Options say where the API server listens on the node and how long each
// request may take.
type Options struct {
	Port        int
	Kubeconfigs []string
	// ReadyzTimeout bounds /readyz (default 2s), MetricsTimeout /metrics
	// (default 4s: a busy API server's metrics are megabytes, slow to
	// render when it is starved of CPU).
	ReadyzTimeout  time.Duration
	MetricsTimeout time.Duration
}

// metricNames are the families kept from /metrics (filtered on the node:
// a real API server's /metrics is megabytes).
var metricNames = []string{
	"apiserver_current_inflight_requests",
	"apiserver_current_inqueue_requests",
	"apiserver_flowcontrol_current_executing_requests",
	"apiserver_flowcontrol_current_inqueue_requests",
	"apiserver_flowcontrol_rejected_requests_total",
	"apiserver_flowcontrol_dispatched_requests_total",
	"apiserver_flowcontrol_nominal_limit_seats",
	"apiserver_request_terminations_total",
	"apiserver_request_total",
}

// Script is the command run on a control-plane node.
func Script(o Options) string {
	re := "^(" + strings.Join(metricNames, "|") + ")[{ ]"
	// apiserver_request_total is kept for 429s only.
	return credentials(o) + fmt.Sprintf(`code=$(curl "$@" --max-time %s -o "$d/body" -w '%%{http_code} %%{time_total}' "$u/readyz" 2>"$d/err")
echo "R $code $(head -c 200 "$d/body" | tr -s '\r\n' '  ')"
if [ -s "$d/err" ]; then echo "X readyz $(head -c 300 "$d/err" | tr -s '\r\n' '  ')"; fi
: > "$d/err"
curl "$@" --max-time %s -o "$d/m" "$u/metrics" 2>"$d/err"
if [ -f "$d/m" ]; then
	grep -E %s "$d/m" | grep -v -E '^apiserver_request_total\{' | sed 's/^/M /'
	grep -E '^apiserver_request_total\{.*code="429"' "$d/m" | sed 's/^/M /'
fi
if [ -s "$d/err" ]; then echo "X metrics $(head -c 300 "$d/err" | tr -s '\r\n' '  ')"; fi
exit 0
`, secs(o.ReadyzTimeout, 2*time.Second), secs(o.MetricsTimeout, 4*time.Second), nodeops.ShellQuote(re))
}

// credentials is the start of every script run against the node's own API
// server: it finds the admin kubeconfig, writes its credentials to a
// private temporary directory (removed on exit), and leaves curl's options
// in "$@" and the server's URL in $u.
func credentials(o Options) string {
	if o.Port == 0 {
		o.Port = 6443
	}
	if len(o.Kubeconfigs) == 0 {
		o.Kubeconfigs = DefaultKubeconfigs
	}
	var quoted []string
	for _, k := range o.Kubeconfigs {
		quoted = append(quoted, nodeops.ShellQuote(k))
	}
	return fmt.Sprintf(`kc=
for f in %s; do if [ -r "$f" ]; then kc=$f; break; fi; done
if [ -z "$kc" ]; then echo "E no-kubeconfig"; exit 0; fi
echo "K $kc"
command -v curl >/dev/null 2>&1 || { echo "E no-curl"; exit 0; }
umask 077
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
trap 'exit 130' INT TERM
field() { awk -v k="$1" '$1==k":" {print $2; exit}' "$kc"; }
caf=$(field certificate-authority); certf=$(field client-certificate); keyf=$(field client-key)
v=$(field certificate-authority-data); if [ -n "$v" ]; then printf '%%s' "$v" | base64 -d > "$d/ca" && caf=$d/ca; fi
v=$(field client-certificate-data); if [ -n "$v" ]; then printf '%%s' "$v" | base64 -d > "$d/cert" && certf=$d/cert; fi
v=$(field client-key-data); if [ -n "$v" ]; then printf '%%s' "$v" | base64 -d > "$d/key" && keyf=$d/key; fi
v=$(field token); if [ -n "$v" ]; then printf 'Authorization: Bearer %%s\n' "$v" > "$d/hdr"; fi
unset v
set -- --silent --show-error --compressed --connect-to kubernetes:%d:127.0.0.1:%d
if [ -n "$caf" ]; then set -- "$@" --cacert "$caf"; else set -- "$@" --insecure; fi
if [ -n "$certf" ] && [ -n "$keyf" ]; then set -- "$@" --cert "$certf" --key "$keyf"; fi
if [ -f "$d/hdr" ]; then set -- "$@" -H "@$d/hdr"; fi
u=https://kubernetes:%d
`, strings.Join(quoted, " "), o.Port, o.Port, o.Port)
}

// secs renders a timeout for curl's --max-time, def when d is not set.
func secs(d, def time.Duration) string {
	if d <= 0 {
		d = def
	}
	return strconv.FormatFloat(math.Max(0.5, d.Seconds()), 'f', 1, 64)
}

// Health is what one control-plane node's API server said about itself.
type Health struct {
	// Kubeconfig is the path of the credentials used (never their content).
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// Ready: /readyz answered 200. Code and Body are its answer (the body's
	// start), Latency how long it took.
	Ready   bool          `json:"ready"`
	Code    int           `json:"code"`
	Body    string        `json:"body,omitempty"`
	Latency time.Duration `json:"-"`
	// LatencyMs is Latency in JSON.
	LatencyMs int64 `json:"latencyMs"`
	// Inflight is apiserver_current_inflight_requests by request kind
	// (readOnly, mutating).
	Inflight map[string]float64 `json:"inflight,omitempty"`
	// Rejected429 sums apiserver_request_total{code="429"}.
	Rejected429 float64 `json:"rejected429"`
	// Terminations sums apiserver_request_terminations_total.
	Terminations float64 `json:"terminations,omitempty"`
	// Metrics: /metrics was read (at least one kept sample); the figures
	// below are zero otherwise.
	Metrics bool `json:"metrics"`
	// APF is on when its metrics are there.
	APF    bool       `json:"apf"`
	Levels []APFLevel `json:"levels,omitempty"`
	Flows  []APFFlow  `json:"flows,omitempty"`
	// Problem says why something could not be read ("no-curl",
	// "no-kubeconfig", curl's error).
	Problems []string `json:"problems,omitempty"`
}

// APFLevel is one priority level's figures.
type APFLevel struct {
	Name      string  `json:"name"`
	Executing float64 `json:"executing"`
	InQueue   float64 `json:"inQueue"`
	Rejected  float64 `json:"rejected"`
	Seats     float64 `json:"seats,omitempty"`
}

// APFFlow is one flow schema's figures (by the priority level it feeds).
type APFFlow struct {
	FlowSchema    string  `json:"flowSchema"`
	PriorityLevel string  `json:"priorityLevel"`
	Executing     float64 `json:"executing"`
	InQueue       float64 `json:"inQueue"`
	Dispatched    float64 `json:"dispatched"`
	Rejected      float64 `json:"rejected"`
}

// Sample is one line of the Prometheus text format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseSample parses `name{a="b",c="d"} 1.5` (an optional timestamp after
// the value is ignored).
func ParseSample(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i <= 0 {
		return s, fmt.Errorf("metric line %q: no name", line)
	}
	s.Name, line = line[:i], line[i:]
	if line[0] == '{' {
		line = line[1:]
		for {
			line = strings.TrimLeft(line, " ,")
			if strings.HasPrefix(line, "}") {
				line = line[1:]
				break
			}
			eq := strings.Index(line, "=\"")
			if eq <= 0 {
				return s, fmt.Errorf("metric %s: bad labels", s.Name)
			}
			k := line[:eq]
			line = line[eq+2:]
			var v strings.Builder
			j := 0
			for ; j < len(line) && line[j] != '"'; j++ {
				if line[j] == '\\' && j+1 < len(line) {
					j++
					switch line[j] {
					case 'n':
						v.WriteByte('\n')
					default:
						v.WriteByte(line[j])
					}
					continue
				}
				v.WriteByte(line[j])
			}
			if j >= len(line) {
				return s, fmt.Errorf("metric %s: unterminated label %s", s.Name, k)
			}
			s.Labels[k] = v.String()
			line = line[j+1:]
		}
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return s, fmt.Errorf("metric %s: no value", s.Name)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s, fmt.Errorf("metric %s: value: %v", s.Name, err)
	}
	s.Value = v
	return s, nil
}

// Parse reads the script's output.
func Parse(out []byte) (*Health, error) {
	h := &Health{Inflight: map[string]float64{}}
	levels := map[string]*APFLevel{}
	flows := map[[2]string]*APFFlow{}
	level := func(n string) *APFLevel {
		if levels[n] == nil {
			levels[n] = &APFLevel{Name: n}
		}
		return levels[n]
	}
	flow := func(s Sample) *APFFlow {
		k := [2]string{s.Labels["flow_schema"], s.Labels["priority_level"]}
		if flows[k] == nil {
			flows[k] = &APFFlow{FlowSchema: k[0], PriorityLevel: k[1]}
		}
		return flows[k]
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rec, rest, _ := strings.Cut(sc.Text(), " ")
		switch rec {
		case "K":
			h.Kubeconfig = rest
		case "E":
			h.Problems = append(h.Problems, rest)
		case "X":
			h.Problems = append(h.Problems, rest)
		case "R":
			f := strings.Fields(rest)
			if len(f) >= 2 {
				h.Code, _ = strconv.Atoi(f[0])
				if secs, err := strconv.ParseFloat(f[1], 64); err == nil {
					h.Latency = time.Duration(secs * float64(time.Second)).Round(time.Millisecond)
					h.LatencyMs = h.Latency.Milliseconds()
				}
				h.Body = strings.TrimSpace(strings.Join(f[2:], " "))
			}
			h.Ready = h.Code == 200
		case "M":
			s, err := ParseSample(rest)
			if err != nil {
				return nil, err
			}
			h.Metrics = true
			switch s.Name {
			case "apiserver_current_inflight_requests":
				h.Inflight[s.Labels["request_kind"]] += s.Value
			case "apiserver_request_total":
				if s.Labels["code"] == "429" {
					h.Rejected429 += s.Value
				}
			case "apiserver_request_terminations_total":
				h.Terminations += s.Value
			case "apiserver_flowcontrol_current_executing_requests":
				h.APF = true
				level(s.Labels["priority_level"]).Executing += s.Value
				flow(s).Executing += s.Value
			case "apiserver_flowcontrol_current_inqueue_requests":
				h.APF = true
				level(s.Labels["priority_level"]).InQueue += s.Value
				flow(s).InQueue += s.Value
			case "apiserver_flowcontrol_rejected_requests_total":
				h.APF = true
				level(s.Labels["priority_level"]).Rejected += s.Value
				flow(s).Rejected += s.Value
			case "apiserver_flowcontrol_dispatched_requests_total":
				h.APF = true
				flow(s).Dispatched += s.Value
			case "apiserver_flowcontrol_nominal_limit_seats":
				level(s.Labels["priority_level"]).Seats = s.Value
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, l := range levels {
		h.Levels = append(h.Levels, *l)
	}
	sort.Slice(h.Levels, func(i, j int) bool { return h.Levels[i].Name < h.Levels[j].Name })
	for _, f := range flows {
		if f.FlowSchema != "" {
			h.Flows = append(h.Flows, *f)
		}
	}
	sort.Slice(h.Flows, func(i, j int) bool {
		a, b := h.Flows[i], h.Flows[j]
		if a.Dispatched+a.Rejected != b.Dispatched+b.Rejected {
			return a.Dispatched+a.Rejected > b.Dispatched+b.Rejected
		}
		return a.FlowSchema < b.FlowSchema
	})
	return h, nil
}

// Probe runs the script on every target (the control-plane nodes).
func Probe(ctx context.Context, r nodeops.Runner, targets []nodeops.Target, o Options, fo fanout.OptionsOf[*Health]) []fanout.ResultOf[*Health] {
	cmd := nodeops.Command{Line: Script(o)}
	return fanout.RunOf(ctx, targets, fo, func(ctx context.Context, t nodeops.Target) (*Health, error) {
		out, err := r.Run(ctx, t, cmd)
		if err != nil {
			return nil, err
		}
		return Parse(out.Stdout)
	})
}
