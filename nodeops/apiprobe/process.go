package apiprobe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/breakglass/breakglass/nodeops"
)

// Liveness is what the node's own API server answered on /livez and
// /readyz (0: no answer).
type Liveness struct {
	Livez  int    `json:"livez"`
	Readyz int    `json:"readyz"`
	Detail string `json:"detail,omitempty"`
}

// OK reports whether both answered 200.
func (l Liveness) OK() bool { return l.Livez == 200 && l.Readyz == 200 }

func (l Liveness) String() string {
	s := fmt.Sprintf("/livez %s, /readyz %s", code(l.Livez), code(l.Readyz))
	if l.Detail != "" {
		s += " (" + l.Detail + ")"
	}
	return s
}

func code(c int) string {
	if c == 0 {
		return "no answer"
	}
	return strconv.Itoa(c)
}

// LiveScript asks the node's API server for /livez and /readyz, on the
// node's loopback address with the node's admin kubeconfig.
func LiveScript(o Options) string {
	return credentials(o) + fmt.Sprintf(`for p in livez readyz; do
  c=$(curl "$@" --max-time %s -o /dev/null -w '%%{http_code}' "$u/$p" 2>"$d/err")
  echo "L $p ${c:-0}"
  if [ -s "$d/err" ]; then echo "X $p $(head -c 200 "$d/err" | tr -s '\r\n' '  ')"; fi
done
exit 0
`, secs(o.ReadyzTimeout, 2*time.Second))
}

// Live runs LiveScript on the node.
func Live(ctx context.Context, r nodeops.Runner, t nodeops.Target, o Options) (Liveness, error) {
	out, err := r.Run(ctx, t, nodeops.Command{Line: LiveScript(o)})
	if err != nil {
		return Liveness{}, err
	}
	return ParseLive(out.Stdout), nil
}

// ParseLive reads LiveScript's output.
func ParseLive(out []byte) Liveness {
	var l Liveness
	var detail []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		switch {
		case len(f) == 3 && f[0] == "L":
			c, _ := strconv.Atoi(f[2])
			if f[1] == "livez" {
				l.Livez = c
			} else {
				l.Readyz = c
			}
		case len(f) >= 2 && (f[0] == "E" || f[0] == "X"):
			detail = append(detail, strings.Join(f[1:], " "))
		}
	}
	l.Detail = strings.Join(detail, "; ")
	return l
}

// Instance is one run of the API server process on a node, as /proc shows
// it.
type Instance struct {
	// ID names this run: pid and start time (clock ticks since boot), so
	// that a restart is a new ID even if the pid is reused. "" when no
	// kube-apiserver process runs.
	ID string `json:"id"`
	// Args is its command line.
	Args []string `json:"args,omitempty"`
	// PodUID is the pod uid in its cgroup path, when kubelet runs it (a
	// static pod's uid is a hash of its manifest: a new uid is a new
	// spec).
	PodUID string `json:"podUid,omitempty"`
	// Running counts the kube-apiserver processes on the node.
	Running int `json:"running"`
}

// findProcess sets $best to the pid of the newest kube-apiserver process
// of the node's network namespace (ProcessScript), $bt to its start time
// and $n to how many run.
const findProcess = `n=0; best=; bt=0
me=$(readlink /proc/self/ns/net 2>/dev/null)
for s in /proc/[0-9]*/comm; do
  [ "$(cat "$s" 2>/dev/null)" = kube-apiserver ] || continue
  p=${s%/comm}; p=${p#/proc/}
  ns=$(readlink /proc/$p/ns/net 2>/dev/null)
  if [ -n "$me" ] && [ -n "$ns" ] && [ "$ns" != "$me" ]; then continue; fi
  f=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null) || continue
  set -- $f
  { [ "$#" -ge 20 ] && [ "$1" != Z ] && [ "$1" != X ]; } || continue
  st=${20}
  n=$((n+1))
  if [ -z "$best" ] || [ "$st" -gt "$bt" ]; then best=$p; bt=$st; fi
done
`

// ProcessScript finds the newest kube-apiserver process on the node (its
// comm, as the kernel keeps it) and prints its pid, start time, command
// line (base64 of the NUL-separated argv) and cgroup. Zombies are not
// counted: they run nothing; nor is a kube-apiserver in another network
// namespace than the node's own (where it can be told): a static pod's
// API server runs in the host's, and a container's own apiserver (a
// hosted control plane on a worker, a test cluster in a pod) is not the
// node's.
const ProcessScript = findProcess + `echo "N $n"
[ -n "$best" ] || exit 0
echo "P $best $bt"
echo "A $(base64 < /proc/$best/cmdline | tr -d '\n')"
echo "G $(tr '\n' ' ' < /proc/$best/cgroup)"
exit 0`

// Process runs ProcessScript on the node.
func Process(ctx context.Context, r nodeops.Runner, t nodeops.Target) (Instance, error) {
	out, err := r.Run(ctx, t, nodeops.Command{Line: ProcessScript})
	if err != nil {
		return Instance{}, err
	}
	return ParseProcess(out.Stdout)
}

// podUID finds a pod uid in a cgroup path: kubepods/burstable/pod<uid>/…
// (cgroupfs) or kubepods-burstable-pod<uid with _>.slice (systemd).
var podUID = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})`)

// ParseProcess reads ProcessScript's output.
func ParseProcess(out []byte) (Instance, error) {
	var in Instance
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rec, rest, _ := strings.Cut(sc.Text(), " ")
		switch rec {
		case "N":
			in.Running, _ = strconv.Atoi(rest)
		case "P":
			f := strings.Fields(rest)
			if len(f) != 2 {
				return in, fmt.Errorf("process: %q", rest)
			}
			in.ID = f[0] + "@" + f[1]
		case "A":
			b, err := base64.StdEncoding.DecodeString(rest)
			if err != nil {
				return in, fmt.Errorf("process command line: %w", err)
			}
			b = bytes.TrimSuffix(b, []byte{0})
			if len(b) > 0 {
				in.Args = strings.Split(string(b), "\x00")
			}
		case "G":
			if m := podUID.FindStringSubmatch(rest); m != nil {
				in.PodUID = strings.ReplaceAll(m[1], "_", "-")
			}
		}
	}
	return in, sc.Err()
}
