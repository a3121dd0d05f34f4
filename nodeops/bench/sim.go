package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/lab/benchstat"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/simssh"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

// serveSim is a helper process: n simulated nodes from node from on, one
// loopback address each, port 2222, whose forwarded containerd socket
// reaches one fake CRI server.
func serveSim(from, n int, delay time.Duration, keyFile string) {
	// A listener per node, and the connections in flight.
	raiseNoFile(uint64(n + helperSlack))
	b, err := os.ReadFile(keyFile)
	check(err)
	key, err := ssh.ParsePrivateKey(b)
	check(err)
	srv := simssh.New(simssh.Normal, key)
	srv.WriteDelay = delay
	cri := newFakeCRI(from + n)
	defer cri.Close()
	srv.StreamLocal = cri.StreamLocal
	for i := from; i < from+n; i++ {
		if _, err := srv.Listen(net.JoinHostPort(simAddr(i), "2222")); err != nil {
			check(err)
		}
	}
	fmt.Println("ready")
	// Serve until stdin closes (the parent exits or is done). Each line
	// is answered when done: "reset" runs every node's pods again, so
	// that each round of a pods run stops running pods; "profile FILE"
	// starts a CPU profile, "profile" alone ends it.
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "reset":
			cri.Reset()
		case "profile":
			if arg == "" {
				pprof.StopCPUProfile()
				break
			}
			f, err := os.Create(arg)
			check(err)
			check(pprof.StartCPUProfile(f))
		}
		fmt.Println(cmd)
	}
}

// simResult is what one scenario's client process reports (as JSON on its
// stdout).
type simResult struct {
	Name         string        `json:"name"`
	Nodes        int           `json:"nodes"`
	OK           int           `json:"ok"`
	Wall         time.Duration `json:"wall"`
	CPU          time.Duration `json:"cpu"`
	PeakRSS      int64         `json:"peak_rss_kib"`       // above the baseline before the run
	PeakRSSTotal int64         `json:"peak_rss_total_kib"` // the process's own peak, baseline included
	PeakG        int           `json:"peak_goroutines"`
	PeakConns    int64         `json:"peak_conns"`
	ServerCPU    time.Duration `json:"server_cpu"` // of the simulated nodes' processes meanwhile
	FirstErr     string        `json:"first_error,omitempty"`
}

func (r simResult) rate() float64 { return float64(r.OK) / r.Wall.Seconds() }

// writeSimKeys writes the simulated nodes' host key, the clients' key and
// a known_hosts file for n nodes in dir, and returns the host key's path.
func writeSimKeys(dir string, n int) string {
	keyPath, _, err := sshdtest.WriteKey(filepath.Join(dir, "sim_host_key"))
	check(err)
	b, _ := os.ReadFile(keyPath)
	hostKey, err := ssh.ParsePrivateKey(b)
	check(err)
	_, _, err = sshdtest.WriteKey(filepath.Join(dir, "sim_client_key"))
	check(err)
	var kh strings.Builder
	for i := 0; i < n; i++ {
		addr := net.JoinHostPort(simAddr(i), "2222")
		fmt.Fprintln(&kh, knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostKey.PublicKey()))
	}
	check(os.WriteFile(filepath.Join(dir, "sim_known_hosts"), []byte(kh.String()), 0o600))
	return keyPath
}

func benchSim(dir string, n, inflight, rounds int, latency time.Duration, profile string) {
	keyPath := writeSimKeys(dir, n)

	type scenario struct {
		name        string
		engine, raw []simResult // one per round; raw: the handshakes at the same latency, the ceiling
	}
	var scenarios []scenario
	var reuse []simResult
	delays := []time.Duration{0}
	if latency > 0 {
		delays = append(delays, latency)
	}
	for _, d := range delays {
		h := startHelper(n, d, keyPath)
		sc := scenario{name: "breakglass engine"}
		if d > 0 {
			sc.name = fmt.Sprintf("breakglass engine, +%s/write", d)
		}
		// The raw handshakes (the ceiling) and the engine run the same
		// number of rounds, taking turns, and the first of them changes
		// every round, so that neither always follows the other; the
		// table compares their medians.
		for round := 0; round < rounds; round++ {
			fmt.Fprintf(os.Stderr, "simulated nodes, +%s/write: round %d of %d\n", d, round+1, rounds)
			raw := func() { sc.raw = append(sc.raw, runClient("raw", dir, n, inflight, "")) }
			eng := func() {
				prof := ""
				if profile != "" {
					prof = fmt.Sprintf("%s-%s-r%d.prof", profile, d, round+1)
				}
				sc.engine = append(sc.engine, runClient("engine", dir, n, inflight, prof))
			}
			if round%2 == 0 {
				raw()
				eng()
			} else {
				eng()
				raw()
			}
			if d == 0 {
				// What an open connection costs when it stays open: with
				// reuse on (a runbook's later steps), every node's
				// connection is still idle in the pool at the end.
				reuse = append(reuse, runClient("engine-reuse", dir, n, inflight, ""))
			}
		}
		h.stop()
		scenarios = append(scenarios, sc)
	}

	fmt.Printf("\nSimulated nodes: %d x/crypto/ssh servers in a helper process, one loopback address each, %d in flight, command `true`; each run in a fresh client process;\n"+
		"%d rounds of every run, taking turns; the median of the rounds, and the least wall time (%d CPUs)\n\n",
		n, inflight, rounds, runtime.NumCPU())
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tnodes ok\twall median\twall min\tnodes/s\tvs ceiling\tclient CPU/node\tpeak RSS\tpeak conns\tRSS/conn\tpeak goroutines\t")
	line := func(name string, rs []simResult, ceiling float64) {
		s := summarizeSim(rs)
		perConn := "-"
		if s.PeakConns > 0 {
			perConn = fmt.Sprintf("%.1f KiB", rssPerConn(rs))
		}
		rate := medianRate(rs)
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%.0f\t%.0f%%\t%s\t%.1f MiB\t%d\t%s\t%d\t\n", name, s.okMin, s.Nodes, s.Wall.Round(time.Millisecond),
			s.wallMin.Round(time.Millisecond), rate, 100*rate/ceiling, perNode(s.CPU, s.Nodes), float64(s.PeakRSS)/1024, s.PeakConns, perConn, s.PeakG)
	}
	for _, sc := range scenarios {
		c := medianRate(sc.raw)
		line(sc.name, sc.engine, c)
		raw := "raw x/crypto/ssh handshakes (ceiling)"
		if sc.name != "breakglass engine" {
			raw = "raw handshakes, " + strings.TrimPrefix(sc.name, "breakglass engine, ")
		}
		line(raw, sc.raw, c)
	}
	line("breakglass engine, reuse on (all kept open)", reuse, medianRate(scenarios[0].raw))
	tw.Flush()
	fmt.Println("\nnodes ok: the fewest of any round. nodes/s and RSS/conn: the median of the rounds' own; vs ceiling: of the medians of nodes/s.")
	e, c := scenarios[0].engine, scenarios[0].raw
	er, cr := medianRate(e), medianRate(c)
	idle := rssPerConn(reuse)
	fmt.Printf("\ntargets: >= 1500 nodes/s: %.0f (%s; the raw ceiling of this machine in this run is %.0f/s)\n"+
		"         within 80%% of the ceiling: %.0f%% (%s)\n"+
		"         RSS per open connection < 64 KiB: %.1f KiB (%s; %d kept open); a connection in flight, mid key exchange, takes %.1f KiB (raw x/crypto/ssh: %.1f KiB)\n",
		er, verdict(er >= 1500), cr, 100*er/cr, verdict(er >= 0.8*cr),
		idle, verdict(idle < 64), n, rssPerConn(e), rssPerConn(c))
}

// rssPerConn is the median over the rounds of peak RSS per peak open
// connection, in KiB.
func rssPerConn(rs []simResult) float64 {
	return benchstat.Median(collect(rs, func(r simResult) float64 { return float64(r.PeakRSS) / float64(max(r.PeakConns, 1)) }))
}

// helperSlack is the open files a helper needs beyond one listener per
// node: the connections in flight, and those closed but not reaped yet.
const helperSlack = 8192

// simHelper is the processes serving the simulated nodes: one, unless
// the nodes' listeners do not fit under the open file limit of one
// process (a container may not raise its hard limit, root or not); then
// the nodes are split evenly between as many as it takes.
type simHelper struct{ procs []*helperProc }

type helperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startHelper starts the simulated nodes in other processes.
func startHelper(n int, delay time.Duration, key string) *simHelper {
	self, err := os.Executable()
	check(err)
	// The helpers inherit the limit raised here.
	limit := raiseNoFile(uint64(n + helperSlack))
	per := max(int(min(limit, 1<<30))-helperSlack, 1000)
	procs := (n + per - 1) / per
	if procs > 1 {
		fmt.Fprintf(os.Stderr, "open file limit %d (not raised: no CAP_SYS_RESOURCE?): %d helper processes serve the %d simulated nodes\n", limit, procs, n)
	}
	h := &simHelper{}
	for p := 0; p < procs; p++ {
		from, to := n*p/procs, n*(p+1)/procs
		cmd := exec.Command(self, "-serve-sim", strconv.Itoa(to-from), "-serve-from", strconv.Itoa(from), "-delay", delay.String(), "-key", key)
		stdin, err := cmd.StdinPipe()
		check(err)
		stdout, err := cmd.StdoutPipe()
		check(err)
		cmd.Stderr = os.Stderr
		check(cmd.Start())
		h.procs = append(h.procs, &helperProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)})
	}
	h.expect("ready", "simulated nodes did not start")
	return h
}

// expect reads line want from every helper.
func (h *simHelper) expect(want, what string) {
	for _, p := range h.procs {
		line, err := p.out.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != want {
			check(fmt.Errorf("%s: %q %v", what, line, err))
		}
	}
}

// reset starts every simulated node's pods again.
func (h *simHelper) reset() {
	h.tell(func(int) string { return "reset" }, "simulated nodes did not reset their pods")
}

// profile starts a CPU profile of each helper, in prefix-nodes-P.prof;
// with "", it ends them.
func (h *simHelper) profile(prefix string) {
	h.tell(func(p int) string {
		if prefix == "" {
			return "profile"
		}
		return fmt.Sprintf("profile %s-nodes-%d.prof", prefix, p+1)
	}, "simulated nodes did not profile")
}

// tell sends each helper its line and waits for the answers.
func (h *simHelper) tell(line func(p int) string, what string) {
	for i, p := range h.procs {
		_, err := fmt.Fprintln(p.stdin, line(i))
		check(err)
	}
	h.expect(strings.Fields(line(0))[0], what)
}

// pids are the helpers' process IDs, separated by commas.
func (h *simHelper) pids() string {
	var s []string
	for _, p := range h.procs {
		s = append(s, strconv.Itoa(p.cmd.Process.Pid))
	}
	return strings.Join(s, ",")
}

// cpu is the CPU the helpers took so far.
func (h *simHelper) cpu() time.Duration {
	var d time.Duration
	for _, p := range h.procs {
		d += processCPU(p.cmd.Process.Pid)
	}
	return d
}

// processCPU is the user and system CPU process pid took so far, all its
// threads, from /proc/PID/stat (in ticks of 10ms: USER_HZ is 100 on
// Linux). procCPU is for the single-threaded ssh masters.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses and
	// may hold spaces: state is field 3, utime 14, stime 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// stop stops the helpers and waits for them.
func (h *simHelper) stop() {
	for _, p := range h.procs {
		p.stdin.Close()
	}
	for _, p := range h.procs {
		p.cmd.Wait()
	}
}

// runClient runs one scenario's client in a fresh process.
func runClient(mode, dir string, n, inflight int, profile string) simResult {
	self, err := os.Executable()
	check(err)
	cmd := exec.Command(self, "-sim-client", mode, "-dir", dir, "-sim", strconv.Itoa(n), "-inflight", strconv.Itoa(inflight), "-cpuprofile", profile)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	check(err)
	var r simResult
	check(json.Unmarshal(out, &r))
	if r.OK < r.Nodes {
		fmt.Fprintf(os.Stderr, "%s: %d of %d nodes not ok; first error: %s\n", mode, r.Nodes-r.OK, r.Nodes, r.FirstErr)
	}
	fmt.Fprintf(os.Stderr, "  %s: %d/%d ok in %s, %.0f nodes/s\n", mode, r.OK, r.Nodes, r.Wall.Round(time.Millisecond), r.rate())
	return r
}

// simClient is the client process of one scenario: "raw" (a plain
// x/crypto/ssh loop: the ceiling), "engine" (fanout and sshclient, as
// exec uses them) or "engine-reuse" (the same, keeping connections).
func simClient(mode, dir string, n, inflight int, profile string) {
	raiseNoFile(uint64(4*inflight + 4096))
	targets := simTargets(n)
	clientKey := filepath.Join(dir, "sim_client_key")
	var run func() (ok int, firstErr string)
	var conns func() int64
	switch mode {
	case "raw":
		run, conns = rawHandshakes(targets, inflight, clientKey, filepath.Join(dir, "sim_host_key.pub"))
	case "engine", "engine-reuse":
		c, err := sshclient.New(sshclient.Options{User: "root", IdentityFiles: []string{clientKey},
			KnownHosts: []string{filepath.Join(dir, "sim_known_hosts")}, ReuseConnections: mode == "engine-reuse"})
		check(err)
		defer c.Close()
		run = func() (int, string) {
			res := fanout.RunCommand(context.Background(), c, targets, nodeops.Command{Line: "true"},
				fanout.Options{Concurrency: inflight, Timeout: time.Minute})
			ok, first := 0, ""
			for _, r := range res {
				if r.Status == nodeops.StatusOK {
					ok++
				} else if first == "" {
					first = fmt.Sprintf("%s: %v", r.Target.Name, r.Err)
				}
			}
			return ok, first
		}
		conns = func() int64 { _, peak := c.OpenConnections(); return peak }
	default:
		check(fmt.Errorf("-sim-client %q: raw or engine", mode))
	}

	runtime.GC()
	baseRSS := procStatus("VmRSS")
	var peakG atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if g := int64(runtime.NumGoroutine()); g > peakG.Load() {
				peakG.Store(g)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	if profile != "" {
		f, err := os.Create(profile)
		check(err)
		check(pprof.StartCPUProfile(f))
	}
	cpu0 := selfUsage()
	start := time.Now()
	ok, firstErr := run()
	wall := time.Since(start)
	cpu := selfUsage() - cpu0
	if profile != "" {
		pprof.StopCPUProfile()
	}
	close(stop)
	wg.Wait()
	hwm := procStatus("VmHWM")
	r := simResult{Name: mode, Nodes: n, OK: ok, Wall: wall, CPU: cpu, PeakRSS: hwm - baseRSS, PeakRSSTotal: hwm,
		PeakG: int(peakG.Load()), PeakConns: conns(), FirstErr: firstErr}
	check(json.NewEncoder(os.Stdout).Encode(r))
}

// simTargets are the n simulated nodes.
func simTargets(n int) []nodeops.Target {
	targets := make([]nodeops.Target, n)
	for i := range targets {
		targets[i] = nodeops.Target{Name: simName(i), Address: simAddr(i), Port: 2222}
	}
	return targets
}

// rawHandshakes is the ceiling: plain x/crypto/ssh connection setups (dial,
// key exchange, auth, one session running `true`, close) with no engine
// around them, at the same parallelism and with the library's default
// algorithms, as the engine uses.
func rawHandshakes(targets []nodeops.Target, inflight int, keyFile, hostKeyFile string) (func() (int, string), func() int64) {
	b, err := os.ReadFile(keyFile)
	check(err)
	signer, err := ssh.ParsePrivateKey(b)
	check(err)
	b, err = os.ReadFile(hostKeyFile)
	check(err)
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(b)
	check(err)
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 10 * time.Second}
	var open, peak atomic.Int64
	run := func() (int, string) {
		var next, ok atomic.Int64
		var firstErr atomic.Value
		var wg sync.WaitGroup
		for w := 0; w < inflight; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= len(targets) {
						return
					}
					// ssh.Dial, with the connection counted from the TCP
					// connect as the engine counts its own.
					addr := net.JoinHostPort(targets[i].Address, "2222")
					nc, err := net.DialTimeout("tcp", addr, cfg.Timeout)
					if err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					if n := open.Add(1); n > peak.Load() {
						peak.Store(n) // racy max: close enough for a gauge
					}
					sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
					if err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
						nc.Close()
						open.Add(-1)
						continue
					}
					c := ssh.NewClient(sc, chans, reqs)
					if s, err := c.NewSession(); err == nil {
						if s.Run("true") == nil {
							ok.Add(1)
						}
					}
					c.Close()
					open.Add(-1)
				}
			}()
		}
		wg.Wait()
		first, _ := firstErr.Load().(string)
		return int(ok.Load()), first
	}
	return run, func() int64 { return peak.Load() }
}

// plainClient runs `true` on every real sshd node listed in file (the
// client key, the known_hosts file, then root@HOST lines), all at once,
// with x/crypto/ssh and nothing around it, and prints "ok" per node. It is
// the floor of the comparison: x/crypto/ssh as its documentation shows it,
// one goroutine per node. Tuned, it also reads ahead
// during the version exchange (as breakglass does) and runs on one P, which
// saves the runtime's thread wake-ups on a fan-out this small: the least CPU
// an x/crypto/ssh client can take here, not a setting breakglass uses.
func plainClient(file string, tuned bool) {
	if tuned {
		runtime.GOMAXPROCS(1)
	}
	b, err := os.ReadFile(file)
	check(err)
	lines := strings.Fields(string(b))
	kb, err := os.ReadFile(lines[0])
	check(err)
	signer, err := ssh.ParsePrivateKey(kb)
	check(err)
	hk, err := knownhosts.New(lines[1])
	check(err)
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hk, Timeout: 10 * time.Second}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range lines[2:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := net.JoinHostPort(strings.TrimPrefix(h, "root@"), "22")
			nc, err := net.DialTimeout("tcp", addr, cfg.Timeout)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return
			}
			if tuned {
				nc = &readAheadConn{Conn: nc, r: bufio.NewReaderSize(nc, 256)}
			}
			sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
			if err != nil {
				nc.Close()
				fmt.Fprintln(os.Stderr, err)
				return
			}
			c := ssh.NewClient(sc, chans, reqs)
			defer c.Close()
			s, err := c.NewSession()
			if err == nil && s.Run("true") == nil {
				mu.Lock()
				fmt.Println("ok")
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// readAheadConn serves the byte-at-a-time reads of the version exchange
// from a small buffer (bufio passes large reads straight through).
type readAheadConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *readAheadConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// procStatus returns a KiB field of /proc/self/status.
func procStatus(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}
