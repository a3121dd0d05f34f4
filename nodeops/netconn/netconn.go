// Package netconn reads a node's TCP connection table for one port (the API
// server's) over SSH, in one command per node: the established connections
// from /proc/net/tcp and tcp6 of the node's network namespace, the
// processes that hold them (socket inodes found under /proc/PID/fd), each
// process's command name and cgroup, and from the cgroup the pod uid and
// container ID kubelet gave it. It is how diagnose finds who talks to the
// API server when the API server cannot say.
package netconn

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
)

// Conn is one established connection involving the port.
type Conn struct {
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	// Inbound: the port is the local one (this node serves it); otherwise
	// a process of this node is a client of it.
	Inbound bool   `json:"inbound,omitempty"`
	Inode   uint64 `json:"inode"`
	// PID is the process holding the socket (0 when none was found, e.g.
	// a socket in the kernel's hands or of a process that just exited).
	PID int `json:"pid,omitempty"`
}

// Process is a process that holds client connections to the port.
type Process struct {
	PID    int    `json:"pid"`
	Comm   string `json:"comm"`
	Cgroup string `json:"cgroup,omitempty"`
	// PodUID and ContainerID come from the cgroup path kubelet made for
	// the container ("" for processes outside pods).
	PodUID      string `json:"podUid,omitempty"`
	ContainerID string `json:"containerId,omitempty"`
	Conns       int    `json:"conns"`
}

// Table is one node's connections involving the port.
type Table struct {
	Port      int       `json:"port"`
	Conns     []Conn    `json:"conns"`
	Processes []Process `json:"processes"`
}

// Outbound counts the node's client connections to the port.
func (t *Table) Outbound() int {
	n := 0
	for _, c := range t.Conns {
		if !c.Inbound {
			n++
		}
	}
	return n
}

// SourceCount is how many inbound connections come from one address.
type SourceCount struct {
	Address netip.Addr `json:"address"`
	Conns   int        `json:"conns"`
}

// BySource counts the inbound connections per remote address, most first.
func (t *Table) BySource() []SourceCount {
	m := map[netip.Addr]int{}
	for _, c := range t.Conns {
		if c.Inbound {
			m[c.Remote.Addr().Unmap()]++
		}
	}
	out := make([]SourceCount, 0, len(m))
	for a, n := range m {
		out = append(out, SourceCount{Address: a, Conns: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Conns != out[j].Conns {
			return out[i].Conns > out[j].Conns
		}
		return out[i].Address.Less(out[j].Address)
	})
	return out
}

// Script is the command run on a node: one shell, no temporary files,
// output bounded by the number of connections to the port. It needs root
// (or sudo -n, which the runner adds) to read other users' /proc/PID/fd.
func Script(port int) string {
	return fmt.Sprintf(`p=$(printf '%%04X' %d)
conns=$(awk -v p="$p" 'FNR>1 && $4=="01" { split($2,l,":"); split($3,r,":"); if (l[2]==p) print "L", $2, $3, $10; else if (r[2]==p) print "R", $2, $3, $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
[ -n "$conns" ] || exit 0
printf '%%s\n' "$conns"
want=$(printf '%%s\n' "$conns" | awk '$1=="R" {printf "%%s ", $4}')
[ -n "$want" ] || exit 0
if find /proc/self/fd -maxdepth 0 -printf '' >/dev/null 2>&1; then
	links=$(find /proc/[0-9]*/fd -lname 'socket:*' -printf '%%h %%l\n' 2>/dev/null)
else
	links=$(ls -l /proc/[0-9]*/fd 2>/dev/null | awk '/^\/proc\/[0-9]+\/fd:/ {d=$0; sub(/:$/,"",d)} /socket:\[/ {print d, $NF}')
fi
fds=$(printf '%%s\n' "$links" | awk -v want="$want" 'BEGIN {n=split(want,a," "); for (i=1;i<=n;i++) w["socket:[" a[i] "]"]=1} ($2 in w) {split($1,x,"/"); s=$2; gsub(/[^0-9]/,"",s); print "F", x[3], s}' | sort -u)
[ -n "$fds" ] || exit 0
printf '%%s\n' "$fds"
for pid in $(printf '%%s\n' "$fds" | awk '{print $2}' | sort -u); do
	printf 'P %%s %%s\n' "$pid" "$(cat /proc/$pid/comm 2>/dev/null | tr ' ' '_')"
	awk -v pid="$pid" '/kubepods|\/pod[0-9a-f]/ {print "C", pid, $0; f=1; exit} NR==1 {b=$0} END {if (!f && b!="") print "C", pid, b}' /proc/$pid/cgroup 2>/dev/null
done
`, port)
}

// Parse reads the script's output.
func Parse(out []byte, port int) (*Table, error) {
	t := &Table{Port: port}
	procs := map[int]*Process{}
	owner := map[uint64]int{}
	// /proc/net/tcp is read in chunks that resume by position, so a
	// socket table that changes during the read (any busy node) can list
	// one socket twice: each connection is kept once.
	seen := map[Conn]bool{}
	proc := func(pid int) *Process {
		p := procs[pid]
		if p == nil {
			p = &Process{PID: pid}
			procs[pid] = p
		}
		return p
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		bad := func(err error) error { return fmt.Errorf("connection table line %d %q: %v", n, line, err) }
		switch f[0] {
		case "L", "R":
			if len(f) != 4 {
				return nil, bad(fmt.Errorf("want 4 fields"))
			}
			local, err := ParseProcAddr(f[1])
			if err != nil {
				return nil, bad(err)
			}
			remote, err := ParseProcAddr(f[2])
			if err != nil {
				return nil, bad(err)
			}
			ino, err := strconv.ParseUint(f[3], 10, 64)
			if err != nil {
				return nil, bad(err)
			}
			c := Conn{Local: local, Remote: remote, Inbound: f[0] == "L", Inode: ino}
			if !seen[c] {
				seen[c] = true
				t.Conns = append(t.Conns, c)
			}
		case "F":
			if len(f) != 3 {
				return nil, bad(fmt.Errorf("want 3 fields"))
			}
			pid, err1 := strconv.Atoi(f[1])
			ino, err2 := strconv.ParseUint(f[2], 10, 64)
			if err1 != nil || err2 != nil {
				return nil, bad(fmt.Errorf("bad pid or inode"))
			}
			// A socket shared by several processes (a fork) goes to
			// the first one listed.
			if _, ok := owner[ino]; !ok {
				owner[ino] = pid
			}
			proc(pid)
		case "P":
			if len(f) < 2 {
				return nil, bad(fmt.Errorf("want a pid"))
			}
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				return nil, bad(err)
			}
			if len(f) > 2 {
				proc(pid).Comm = f[2]
			}
		case "C":
			if len(f) < 3 {
				continue
			}
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				return nil, bad(err)
			}
			p := proc(pid)
			p.Cgroup = cgroupPath(f[2])
			p.PodUID, p.ContainerID = PodOfCgroup(p.Cgroup)
		default:
			return nil, bad(fmt.Errorf("unknown record %q", f[0]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for i := range t.Conns {
		c := &t.Conns[i]
		if c.Inbound {
			continue
		}
		if pid, ok := owner[c.Inode]; ok {
			c.PID = pid
			proc(pid).Conns++
		}
	}
	for _, p := range procs {
		if p.Conns > 0 {
			t.Processes = append(t.Processes, *p)
		}
	}
	sort.Slice(t.Processes, func(i, j int) bool {
		if t.Processes[i].Conns != t.Processes[j].Conns {
			return t.Processes[i].Conns > t.Processes[j].Conns
		}
		return t.Processes[i].PID < t.Processes[j].PID
	})
	return t, nil
}

// cgroupPath is the path of a /proc/PID/cgroup line
// ("12:pids:/kubepods/..." or "0::/...").
func cgroupPath(line string) string {
	if i := strings.Index(line, ":"); i >= 0 {
		if j := strings.Index(line[i+1:], ":"); j >= 0 {
			return line[i+1+j+1:]
		}
	}
	return line
}

var (
	podSegment  = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)
	containerID = regexp.MustCompile(`^(?:cri-containerd-|docker-|crio-)?([0-9a-f]{64})(?:\.scope)?$`)
)

// PodOfCgroup returns the pod uid and container ID of a cgroup path that
// kubelet made: /kubepods/QOS/podUID/CONTAINER with the cgroupfs driver,
// kubepods-QOS-podUID_WITH_UNDERSCORES.slice/cri-containerd-CONTAINER.scope
// with systemd's.
func PodOfCgroup(path string) (podUID, container string) {
	m := podSegment.FindStringSubmatch(path)
	if m == nil {
		return "", ""
	}
	podUID = strings.ReplaceAll(m[1], "_", "-")
	last := path[strings.LastIndex(path, "/")+1:]
	if c := containerID.FindStringSubmatch(last); c != nil {
		container = c[1]
	}
	return podUID, container
}

// ParseProcAddr parses an address of /proc/net/tcp ("0100007F:1F90") or
// tcp6 (32 hex digits): each 32-bit word is in the host's byte order, which
// is little-endian on every machine breakglass reaches.
func ParseProcAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q: no port", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: port: %v", s, err)
	}
	b, err := hex.DecodeString(h)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q: not 4 or 16 bytes of hex", s)
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}

// Scan reads the connection table of every target in one command each,
// through the fan-out: every node gets a result, in order.
func Scan(ctx context.Context, r nodeops.Runner, targets []nodeops.Target, port int, opts fanout.OptionsOf[*Table]) []fanout.ResultOf[*Table] {
	cmd := nodeops.Command{Line: Script(port)}
	return fanout.RunOf(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (*Table, error) {
		out, err := r.Run(ctx, t, cmd)
		if err != nil {
			return nil, err
		}
		if out.Truncated {
			return nil, fmt.Errorf("node %s: connection table: output truncated", t.Name)
		}
		return Parse(out.Stdout, port)
	})
}
