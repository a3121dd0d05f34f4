package main

import (
	"context"
	"encoding/json"
	"fmt"
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
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/breakglass/breakglass/lab/benchstat"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// The pods benchmark (issue 9): `pods stop -n telemetry` on simulated
// nodes, the way the command runs it on a large fleet: the steps.Pods kind
// without kept connections (the plan connects, lists and closes; the apply
// connects again, lists and stops), through the change engine with its
// journal, each node's containerd reached by a direct-streamlocal forward
// over a verified SSH connection. The nodes' containerd is fakeCRI. The
// ceiling is the raw handshake client of sim.go on the same nodes in the
// same run.

// podsMode is the -sim-client mode of the pods stop client; podsNoSSHMode
// runs the same client without SSH, with the fake containerd in its own
// process (podsClient).
const (
	podsMode      = "pods-stop"
	podsNoSSHMode = "pods-no-ssh"
)

// podsNamespace is what the benchmark stops: each node's telemetry agent.
const podsNamespace = "telemetry"

// noSSHRun is the table's name of the runs without SSH.
const noSSHRun = "apply without SSH (containerd in-process)"

// podsResult is what a pods stop client reports: each phase as a
// simResult of its own (its wall time, CPU, and the peaks within it).
type podsResult struct {
	Plan  simResult `json:"plan"`
	Apply simResult `json:"apply"`
	// Stopped counts the nodes whose apply says it stopped one pod.
	Stopped int `json:"stopped"`
	// JournalBytes is the size of the journal the run wrote.
	JournalBytes int64 `json:"journal_bytes"`
	// Check says what was wrong with the plan (a pod other than the
	// node's telemetry agent) or with the sampled nodes after the apply.
	Check string `json:"check,omitempty"`
}

// podsClient is the client process of a pods stop run on n simulated
// nodes; it prints a podsResult.
//
// With noSSH, the nodes' containerd is a fakeCRI in this process, reached
// over a socket pair per connection instead of an SSH forward: the same
// stop (the change engine, the journal, the gRPC connection, the CRI calls
// and the fake's answers) without SSH. Its CPU is what a stop adds to a
// handshake, on both sides: the least the stop path can cost above the
// ceiling.
func podsClient(dir string, n, inflight int, profile, helpers string, noSSH bool) {
	// A forward's connection per node in flight, each plan and apply.
	raiseNoFile(uint64(4*inflight + 4096))
	ctx := context.Background()
	targets := simTargets(n)
	c, err := sshclient.New(sshclient.Options{User: "root", IdentityFiles: []string{filepath.Join(dir, "sim_client_key")},
		KnownHosts: []string{filepath.Join(dir, "sim_known_hosts")}})
	check(err)
	defer c.Close()
	// As newPodsRun wires it for a fleet past keepConnectionsUpTo.
	dial := func(ctx context.Context, t nodeops.Target) (net.Conn, error) {
		return c.DialUnix(ctx, t, pods.DefaultSocket, sshclient.UnixForward)
	}
	if noSSH {
		f := newFakeCRI(n)
		defer f.Close()
		dial = func(_ context.Context, t nodeops.Target) (net.Conn, error) { return noSSHDial(f, t) }
	}
	k := &steps.Pods{
		Connect: func(ctx context.Context, t nodeops.Target) (*pods.Node, string, error) {
			nd, err := pods.Connect(ctx, t.Name, func(ctx context.Context) (net.Conn, error) { return dial(ctx, t) })
			if err != nil {
				return nil, "", err
			}
			return nd, string(sshclient.UnixForward), nil
		},
		Keep:    false,
		Options: fanout.OptionsOf[steps.NodeResult]{Concurrency: inflight, Timeout: time.Minute},
		Targets: targets,
	}
	defer k.Close()
	sel := &steps.Selection{Targets: targets, Selector: pods.Selector{Namespace: podsNamespace}}
	check(sel.Resolve(ctx))

	jpath := filepath.Join(dir, "pods-journal.jsonl")
	os.Remove(jpath)
	var mu sync.Mutex
	var applied, stopped int
	var firstApplyErr string
	e := &change.Engine{
		Emit: func(ev change.Event) {
			mu.Lock()
			defer mu.Unlock()
			switch ev := ev.(type) {
			case change.ItemApplied:
				applied++
				// The kind's result line (steps.resultLine): the
				// events carry no more.
				if ev.Item.Result == "1 pod stopped" {
					stopped++
				}
			case change.ItemFailed:
				if firstApplyErr == "" {
					firstApplyErr = fmt.Sprintf("%s: %v", ev.Item.Target.Node, ev.Err)
				}
			}
		},
		OpenJournal: func() (*journal.Journal, error) { return journal.Open(jpath, nil) },
		NewID:       func() string { return journal.NewID(time.Now()) },
	}
	e.Register(k)

	conns := func() int64 { _, peak := c.OpenConnections(); return peak }
	m := startMeter(profile, helpers)
	var res podsResult
	planned := false
	plan := steps.PlanStop(k, sel)
	m.begin("plan")
	_, runErr := e.Run(ctx, func(ctx context.Context, id string) (*change.Plan, error) {
		p, err := plan(ctx, id)
		if planned {
			return p, err // planned again: part of the apply
		}
		planned = true
		ok, first := n, ""
		if err != nil {
			ok, first = 0, err.Error()
		} else {
			ok -= len(p.Skipped)
			if len(p.Skipped) > 0 {
				first = p.Skipped[0].Target + ": " + p.Skipped[0].Reason
			}
			res.Check = checkPlan(p, ok)
		}
		res.Plan = m.end("plan", n, ok, conns(), first)
		m.heap("plan")
		m.begin("apply")
		return p, err
	})
	mu.Lock()
	ok, first := applied, firstApplyErr
	res.Stopped = stopped
	mu.Unlock()
	if first == "" && runErr != nil {
		first = runErr.Error()
	}
	res.Apply = m.end("apply", n, ok, conns(), first)
	m.heap("apply")
	m.close()
	if fi, err := os.Stat(jpath); err == nil {
		res.JournalBytes = fi.Size()
	}
	if planned && runErr == nil {
		if msg := checkNodes(ctx, k, targets); msg != "" {
			res.Check = strings.TrimPrefix(res.Check+"; "+msg, "; ")
		}
	}
	check(json.NewEncoder(os.Stdout).Encode(res))
}

// noSSHConn is the fake containerd's end of a connection without SSH.
// Its local address is the simulated node's, as that of the SSH
// connection a forward comes through, so that fakeCRI tells the nodes
// apart.
type noSSHConn struct {
	net.Conn
	local net.Addr
}

func (c noSSHConn) LocalAddr() net.Addr { return c.local }

// noSSHDial connects to f as node t over a socket pair: kernel sockets,
// as the forward to containerd's socket is on a node.
func noSSHDial(f *fakeCRI, t nodeops.Target) (net.Conn, error) {
	ip := net.ParseIP(t.Address)
	if _, ok := simIndex(ip); !ok {
		return nil, fmt.Errorf("%s: %s is not a simulated node's address", t.Name, t.Address)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		file := os.NewFile(uintptr(fd), "no-ssh")
		conns[i], err = net.FileConn(file)
		file.Close()
		if err != nil {
			if i == 0 {
				syscall.Close(fds[1])
			} else {
				conns[0].Close()
			}
			return nil, err
		}
	}
	go f.StreamLocal(pods.DefaultSocket, noSSHConn{Conn: conns[1], local: &net.TCPAddr{IP: ip, Port: 2222}})
	return conns[0], nil
}

// checkPlan says what is wrong with a plan: each node that answered
// must have an item, which stops exactly its telemetry agent, never
// kube-proxy.
func checkPlan(p *change.Plan, answered int) string {
	if len(p.Items) != answered {
		return fmt.Sprintf("%d items planned for the %d nodes that answered", len(p.Items), answered)
	}
	bad := 0
	example := ""
	for _, it := range p.Items {
		c, ok := it.Payload.(*steps.NodeChange)
		if ok && len(c.Stop) == 1 && c.Stop[0].Namespace == podsNamespace && c.Stop[0].Name == "telemetry-agent-"+c.Node {
			continue
		}
		bad++
		if example == "" {
			example = it.Summary
		}
	}
	if bad == 0 {
		return ""
	}
	return fmt.Sprintf("%d of %d planned items are not the node's telemetry agent alone (%s)", bad, len(p.Items), example)
}

// checkNodes lists a few nodes after the stop (outside the timings): the
// telemetry agent must show stopped, kube-proxy still running.
func checkNodes(ctx context.Context, k *steps.Pods, targets []nodeops.Target) string {
	var wrong []string
	for _, i := range []int{0, len(targets) / 2, len(targets) - 1} {
		t := targets[i]
		err := k.Use(ctx, t, func(nd *pods.Node, _ string) error {
			list, err := nd.List(ctx)
			if err != nil {
				return err
			}
			var got []string
			for _, p := range list {
				state := p.State
				for _, ct := range p.Containers {
					state += "/" + ct.State
				}
				got = append(got, p.Ref()+"="+state)
			}
			want := []string{"kube-system/kube-proxy-" + t.Name + "=ready/running", podsNamespace + "/telemetry-agent-" + t.Name + "=notready/exited"}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				return fmt.Errorf("after the stop: %s; want %s", strings.Join(got, " "), strings.Join(want, " "))
			}
			return nil
		})
		if err != nil {
			wrong = append(wrong, fmt.Sprintf("%s: %v", t.Name, err))
		}
	}
	return strings.Join(wrong, "; ")
}

// meter measures the phases of one client process: wall time, CPU, peak
// RSS and peak goroutines within each phase, and a CPU profile of each.
type meter struct {
	profile string
	helpers []int // the simulated nodes' processes
	srv0    time.Duration
	baseRSS int64
	peakG   atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup

	start time.Time
	cpu0  time.Duration
}

func startMeter(profile, helpers string) *meter {
	runtime.GC()
	m := &meter{profile: profile, baseRSS: procStatus("VmRSS"), stop: make(chan struct{})}
	for _, f := range strings.Split(helpers, ",") {
		if pid, err := strconv.Atoi(f); err == nil {
			m.helpers = append(m.helpers, pid)
		}
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if g := int64(runtime.NumGoroutine()); g > m.peakG.Load() {
				m.peakG.Store(g)
			}
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

// begin starts a phase: the peaks start again from now (writing 5 to
// clear_refs sets the kernel's peak RSS to the current RSS).
func (m *meter) begin(phase string) {
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	m.peakG.Store(int64(runtime.NumGoroutine()))
	if m.profile != "" {
		f, err := os.Create(m.profile + "-" + phase + ".prof")
		check(err)
		check(pprof.StartCPUProfile(f))
	}
	m.srv0 = m.serverCPU()
	m.cpu0 = selfUsage()
	m.start = time.Now()
}

func (m *meter) serverCPU() time.Duration {
	var d time.Duration
	for _, pid := range m.helpers {
		d += processCPU(pid)
	}
	return d
}

// end ends the phase begun last and returns what it measured.
func (m *meter) end(name string, nodes, ok int, conns int64, firstErr string) simResult {
	wall := time.Since(m.start)
	cpu := selfUsage() - m.cpu0
	srv := m.serverCPU() - m.srv0
	if m.profile != "" {
		pprof.StopCPUProfile()
	}
	hwm := procStatus("VmHWM")
	return simResult{Name: name, Nodes: nodes, OK: ok, Wall: wall, CPU: cpu, PeakRSS: hwm - m.baseRSS, PeakRSSTotal: hwm,
		PeakG: int(m.peakG.Load()), PeakConns: conns, ServerCPU: srv, FirstErr: firstErr}
}

// heap writes a heap profile after a phase (outside its timings), for
// where its memory went: the live heap of the last GC, and what the
// process allocated since it started.
func (m *meter) heap(phase string) {
	if m.profile == "" {
		return
	}
	f, err := os.Create(m.profile + "-" + phase + ".heap")
	check(err)
	defer f.Close()
	check(pprof.WriteHeapProfile(f))
}

func (m *meter) close() {
	close(m.stop)
	m.wg.Wait()
}

// runPodsClient runs a pods stop client in a fresh process: mode is
// podsMode, or podsNoSSHMode (then h is nil).
func runPodsClient(mode string, h *simHelper, dir string, n, inflight int, profile string) podsResult {
	self, err := os.Executable()
	check(err)
	helpers := ""
	if h != nil {
		helpers = h.pids()
	}
	cmd := exec.Command(self, "-sim-client", mode, "-dir", dir, "-sim", strconv.Itoa(n), "-inflight", strconv.Itoa(inflight),
		"-cpuprofile", profile, "-helpers", helpers)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	check(err)
	var r podsResult
	check(json.Unmarshal(out, &r))
	for _, ph := range []simResult{r.Plan, r.Apply} {
		if ph.OK < ph.Nodes {
			fmt.Fprintf(os.Stderr, "%s %s: %d of %d nodes not ok; first error: %s\n", mode, ph.Name, ph.Nodes-ph.OK, ph.Nodes, ph.FirstErr)
		}
		fmt.Fprintf(os.Stderr, "  %s %s: %d/%d ok in %s, %.0f nodes/s, peak RSS %.0f MiB\n", mode, ph.Name, ph.OK, ph.Nodes,
			ph.Wall.Round(time.Millisecond), ph.rate(), float64(ph.PeakRSSTotal)/1024)
	}
	fmt.Fprintf(os.Stderr, "  %s: journal %.1f MiB\n", mode, float64(r.JournalBytes)/(1<<20))
	if r.Stopped != r.Apply.OK {
		fmt.Fprintf(os.Stderr, "%s: %d nodes applied, %d of them stopped their pod\n", mode, r.Apply.OK, r.Stopped)
	}
	if r.Check != "" {
		fmt.Fprintf(os.Stderr, "%s: check: %s\n", mode, r.Check)
	}
	return r
}

// podsRun is one size's rounds.
type podsRun struct {
	n     int
	raw   []simResult
	runs  []podsResult
	noSSH []podsResult
}

// whole is a round's plan and apply as one run: the command as the
// operator sees it.
func (r podsResult) whole() simResult {
	return simResult{Name: "plan + apply", Nodes: r.Apply.Nodes, OK: r.Apply.OK, Wall: r.Plan.Wall + r.Apply.Wall, CPU: r.Plan.CPU + r.Apply.CPU,
		PeakRSS: max(r.Plan.PeakRSS, r.Apply.PeakRSS), PeakRSSTotal: max(r.Plan.PeakRSSTotal, r.Apply.PeakRSSTotal),
		PeakG: max(r.Plan.PeakG, r.Apply.PeakG), PeakConns: max(r.Plan.PeakConns, r.Apply.PeakConns), ServerCPU: r.Plan.ServerCPU + r.Apply.ServerCPU}
}

// benchPods runs the pods stop benchmark at each size: the raw handshakes
// and the pods stop client take turns for rounds rounds on the same
// simulated nodes, whose pods run again before every pods run.
func benchPods(dir string, sizes []int, inflight, rounds int, profile string) {
	var all []podsRun
	for _, n := range sizes {
		keyPath := writeSimKeys(dir, n)
		fmt.Fprintf(os.Stderr, "starting %d simulated nodes with a fake containerd...\n", n)
		h := startHelper(n, 0, keyPath)
		pr := podsRun{n: n}
		for round := 0; round < rounds; round++ {
			fmt.Fprintf(os.Stderr, "pods stop on %d simulated nodes: round %d of %d\n", n, round+1, rounds)
			raw := func() {
				srv := h.cpu()
				r := runClient("raw", dir, n, inflight, "")
				r.ServerCPU = h.cpu() - srv
				pr.raw = append(pr.raw, r)
			}
			stop := func() {
				h.reset()
				prof := ""
				if profile != "" {
					prof = fmt.Sprintf("%s-pods-%d-r%d", profile, n, round+1)
				}
				if prof != "" {
					h.profile(prof)
				}
				pr.runs = append(pr.runs, runPodsClient(podsMode, h, dir, n, inflight, prof))
				if prof != "" {
					h.profile("")
				}
			}
			noSSH := func() {
				prof := ""
				if profile != "" {
					prof = fmt.Sprintf("%s-pods-%d-r%d-nossh", profile, n, round+1)
				}
				pr.noSSH = append(pr.noSSH, runPodsClient(podsNoSSHMode, nil, dir, n, inflight, prof))
			}
			if round%2 == 0 {
				raw()
				stop()
				noSSH()
			} else {
				noSSH()
				stop()
				raw()
			}
		}
		h.stop()
		all = append(all, pr)
	}

	fmt.Printf("\nPods stop on simulated nodes: x/crypto/ssh servers in a helper process, one loopback address each, whose forwarded\n"+
		"containerd socket reaches a fake CRI server; `pods stop -n %s` through the change engine (journal on, no prompt),\n"+
		"one pod of two stopped per node, connections not kept from plan to apply; %d in flight; each run in a fresh client\n"+
		"process; %d rounds, the runs taking turns; the median of the rounds, and the least wall time (%d CPUs)\n\n",
		podsNamespace, inflight, rounds, runtime.NumCPU())
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tnodes\tnodes ok\twall median\twall min\tnodes/s\tvs ceiling\tclient CPU/node\tpeak RSS\tpeak conns\tpeak goroutines\tnodes' CPU/node\t")
	line := func(name string, rs []simResult, ceiling float64) {
		s := summarizeSim(rs)
		rate := medianRate(rs)
		nodesCPU := perNode(benchstat.Median(collect(rs, func(r simResult) time.Duration { return r.ServerCPU })), s.Nodes)
		if name == noSSHRun {
			nodesCPU = "in the client's"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d/%d\t%s\t%s\t%.0f\t%.0f%%\t%s\t%.1f MiB\t%d\t%d\t%s\t\n", name, s.Nodes, s.okMin, s.Nodes,
			s.Wall.Round(time.Millisecond), s.wallMin.Round(time.Millisecond), rate, 100*rate/ceiling, perNode(s.CPU, s.Nodes),
			float64(benchstat.Median(collect(rs, func(r simResult) int64 { return r.PeakRSSTotal })))/1024, s.PeakConns, s.PeakG, nodesCPU)
	}
	for _, pr := range all {
		c := medianRate(pr.raw)
		line("raw x/crypto/ssh handshakes (ceiling)", pr.raw, c)
		line("pods stop: plan (connect, CRI list)", collect(pr.runs, func(r podsResult) simResult { return r.Plan }), c)
		line("pods stop: apply (connect, CRI list, stop)", collect(pr.runs, func(r podsResult) simResult { return r.Apply }), c)
		line("pods stop: plan + apply", collect(pr.runs, podsResult.whole), c)
		line(noSSHRun, collect(pr.noSSH, func(r podsResult) simResult { return r.Apply }), c)
	}
	tw.Flush()
	fmt.Println("\nnodes ok: the fewest of any round. nodes/s: the median of the rounds' own; vs ceiling: of the medians of nodes/s, against the")
	fmt.Println("raw handshakes at the same size. peak RSS: the client process's whole resident set at its highest in the phase (VmHWM),")
	fmt.Println("the median of the rounds. peak conns: SSH connections open at once, since the client started. nodes' CPU/node: the")
	fmt.Println("simulated nodes' processes (SSH server and fake containerd), which share the machine's CPUs with the client.")
	fmt.Println("apply without SSH: the apply again, its client reaching a fake containerd in its own process over a socket pair per")
	fmt.Println("connection; its client CPU/node is both sides' of what a stop adds to a handshake (engine, journal, gRPC, CRI calls).")

	fmt.Println("\ntargets (issue 9):")
	bigRun := false
	for _, pr := range all {
		apply := collect(pr.runs, func(r podsResult) simResult { return r.Apply })
		ar, cr := medianRate(apply), medianRate(pr.raw)
		fmt.Printf("  %6d nodes: apply at >= 75%% of the handshake ceiling: %.0f%% (%s; %.0f of %.0f nodes/s)\n",
			pr.n, 100*ar/cr, verdict(ar >= 0.75*cr), ar, cr)
		a, c := summarizeSim(apply), summarizeSim(pr.raw)
		srv := func(rs []simResult) time.Duration {
			return benchstat.Median(collect(rs, func(r simResult) time.Duration { return r.ServerCPU }))
		}
		fmt.Printf("                the CPU per node behind it: client %s (raw handshakes %s, %.2fx), simulated nodes %s (raw %s, %.2fx)\n",
			perNode(a.CPU, a.Nodes), perNode(c.CPU, c.Nodes), ratio(a.CPU, c.CPU), perNode(srv(apply), a.Nodes), perNode(srv(pr.raw), c.Nodes),
			ratio(srv(apply), srv(pr.raw)))
		if len(pr.noSSH) > 0 {
			fl := summarizeSim(collect(pr.noSSH, func(r podsResult) simResult { return r.Apply }))
			hs := (c.CPU + srv(pr.raw)) / time.Duration(max(c.Nodes, 1))
			add := fl.CPU / time.Duration(max(fl.Nodes, 1))
			fmt.Printf("                what a stop adds to a handshake (the apply without SSH): %s per node, client and containerd; with the raw handshakes' %s\n"+
				"                (client and nodes), a stop on CPUs its nodes share reaches at most about %.0f%% of the ceiling\n",
				perNode(fl.CPU, fl.Nodes), perNode(c.CPU+srv(pr.raw), c.Nodes), 100*float64(hs)/float64(hs+add))
		}
		okMin := pr.n
		var peak int64
		var checks []string
		for _, r := range pr.runs {
			okMin = min(okMin, r.Apply.OK, r.Stopped)
			peak = max(peak, r.whole().PeakRSSTotal)
			if r.Check != "" {
				checks = append(checks, r.Check)
			}
		}
		for _, r := range pr.noSSH {
			if r.Check != "" || r.Stopped != pr.n {
				checks = append(checks, fmt.Sprintf("without SSH: %d of %d stopped; %s", r.Stopped, pr.n, r.Check))
			}
		}
		if pr.n >= 65000 {
			bigRun = true
			fmt.Printf("  %6d nodes: finished, client peak RSS < 1 GiB: %d/%d pods stopped in the worst round, peak RSS %.0f MiB in the highest round (%s)\n",
				pr.n, okMin, pr.n, float64(peak)/1024, verdict(okMin == pr.n && peak < 1<<20))
		}
		if len(checks) > 0 {
			fmt.Printf("  %6d nodes: the checks of the plan and of the nodes after the stop FAILED: %s\n", pr.n, checks[0])
		} else {
			fmt.Printf("  %6d nodes: each plan stopped the telemetry agent alone on every node, and the nodes checked after it show it stopped and kube-proxy running\n", pr.n)
		}
	}
	if !bigRun {
		fmt.Println("  65,000 nodes with the client's peak RSS < 1 GiB: not run (-pods-sim 65000)")
	}
}
