// Command bench compares breakglass's SSH fan-out with parallel-ssh,
// Ansible and a plain x/crypto/ssh loop on real sshd nodes, and measures
// the engine at scale on simulated nodes against the raw x/crypto/ssh
// handshake rate of the same machine. It prints tables; `make bench` runs it
// (as root: sshd needs it). Each simulated run's client is a fresh process,
// so that its memory, goroutines and CPU are its own.
//
// Every client of a table runs -rounds times, the clients taking turns
// round by round (a disturbance of the machine falls on all of them), and
// each table prints every client's median and min over the same number of
// rounds. Each peer runs with its own defaults but for the parallelism, the
// key and the known_hosts file (see ansibleRuns for what that means for
// Ansible's connection reuse).
//
// With -pods-sim, it also runs `pods stop` (the steps.Pods kind through
// the change engine) on simulated nodes that forward containerd's socket
// to a fake CRI server, against the handshake ceiling of the same run
// (podsim.go).
//
//	go run ./nodeops/bench [-rounds 5] [-real 50] [-lab-inventory .lab/breakglass.yaml] [-sim 5000] [-inflight 512] [-tools breakglass,parallel-ssh,ansible] [-pods-sim 5000,65000] [-cpuprofile prefix]
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds of every client; the tables print each client's median and min")
	real := flag.Int("real", 50, "real sshd nodes (0 to skip)")
	sim := flag.Int("sim", 5000, "simulated nodes (0 to skip)")
	inflight := flag.Int("inflight", 512, "nodes in flight for the simulated runs")
	latency := flag.Duration("latency", 20*time.Millisecond, "added latency per write in the second simulated run (0 to skip it)")
	tools := flag.String("tools", "breakglass,parallel-ssh,ansible", "clients compared on the real sshd nodes")
	podsSim := flag.String("pods-sim", "", "comma-separated node counts of the simulated `pods stop` runs, e.g. 5000,65000 (empty or 0 to skip)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of each simulated engine run's client to `prefix`-LATENCY-rROUND.prof; of each pods stop phase's client to prefix-pods-NODES-rROUND-PHASE.prof, and of the simulated nodes' processes during the run to prefix-pods-NODES-rROUND-nodes-P.prof; a pods stop client also writes heap profiles after each phase, prefix-pods-NODES-rROUND-PHASE.heap")
	// The simulated nodes and each simulated run's client are child
	// processes of the bench, so that each run's memory, goroutines and CPU
	// are its own.
	serve := flag.Int("serve-sim", 0, "internal: serve N simulated nodes")
	serveFrom := flag.Int("serve-from", 0, "internal: with -serve-sim, the first node served")
	client := flag.String("sim-client", "", "internal: run one simulated scenario's client (raw, engine, engine-reuse, pods-stop or pods-no-ssh) and print its result")
	helpers := flag.String("helpers", "", "internal: with -sim-client pods-stop, the `pids` of the simulated nodes' processes, whose CPU it reports")
	labInventory := flag.String("lab-inventory", "", "compare on the sshd-only hosts (role ssh) of the lab whose inventory is `file` (breakglass lab up --ssh-hosts N) instead of sshd of the bench's own on loopback")
	plain := flag.String("plain-client", "", "internal: run the plain x/crypto/ssh loop on the real sshd nodes listed in `file`")
	plainTuned := flag.Bool("plain-tuned", false, "internal: with -plain-client, read ahead during the version exchange and run on one P")
	dirFlag := flag.String("dir", "", "internal: the bench's work directory")
	delay := flag.Duration("delay", 0, "internal: write delay of the simulated nodes")
	keyFile := flag.String("key", "", "internal: host key file of the simulated nodes")
	flag.Parse()
	if *rounds < 1 {
		check(fmt.Errorf("-rounds %d: at least 1", *rounds))
	}
	podSizes, err := parseSizes(*podsSim)
	check(err)
	switch {
	case *serve > 0:
		serveSim(*serveFrom, *serve, *delay, *keyFile)
		return
	case *plain != "":
		plainClient(*plain, *plainTuned)
		return
	case *client == podsMode || *client == podsNoSSHMode:
		// The clients run with the collector breakglass sets for itself;
		// the raw handshakes too, so that the ceiling is the handshakes'
		// cost and not a collector the others do not have.
		fanout.TuneGC()
		podsClient(*dirFlag, *sim, *inflight, *cpuprofile, *helpers, *client == podsNoSSHMode)
		return
	case *client != "":
		fanout.TuneGC()
		simClient(*client, *dirFlag, *sim, *inflight, *cpuprofile)
		return
	}
	if *sim > maxSimNodes {
		check(fmt.Errorf("-sim %d: at most %d simulated nodes", *sim, maxSimNodes))
	}
	dir, err := os.MkdirTemp("", "breakglass-bench-")
	check(err)
	defer os.RemoveAll(dir)
	if *real > 0 {
		benchReal(dir, *real, *rounds, strings.Split(*tools, ","), *labInventory)
	}
	if *sim > 0 {
		benchSim(dir, *sim, *inflight, *rounds, *latency, *cpuprofile)
	}
	if len(podSizes) > 0 {
		benchPods(dir, podSizes, *inflight, *rounds, *cpuprofile)
	}
}

// parseSizes parses -pods-sim: node counts separated by commas; 0 and
// empty entries are skipped.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		switch {
		case err != nil || n < 0:
			return nil, fmt.Errorf("-pods-sim %q: %q is not a node count", s, f)
		case n > maxSimNodes:
			return nil, fmt.Errorf("-pods-sim %q: at most %d simulated nodes", s, maxSimNodes)
		case n > 0:
			out = append(out, n)
		}
	}
	return out, nil
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Simulated nodes live on 127.88.1.1 to 127.88.255.250, 250 a block, then
// on in 127.89.x.y: 127,500 in all.
const (
	simPerNet   = 255 * 250
	maxSimNodes = 2 * simPerNet
)

// simAddr is the loopback address of simulated node i: 127.88.x.y, and
// past the 63,750th node 127.89.x.y.
func simAddr(i int) string {
	return fmt.Sprintf("127.%d.%d.%d", 88+i/simPerNet, 1+i%simPerNet/250, 1+i%250)
}

// simIndex is the node whose address is ip, the inverse of simAddr.
func simIndex(ip net.IP) (int, bool) {
	v4 := ip.To4()
	if v4 == nil || v4[0] != 127 || v4[1] < 88 || v4[1] > 89 || v4[2] < 1 || v4[3] < 1 || v4[3] > 250 {
		return 0, false
	}
	return int(v4[1]-88)*simPerNet + int(v4[2]-1)*250 + int(v4[3]-1), true
}

// simName is the name of simulated node i.
func simName(i int) string { return fmt.Sprintf("sim%05d", i) }

// raiseNoFile raises this process's open file limit to at least want,
// within the kernel's fs.nr_open, and returns the limit it got: past the
// hard limit only where the process may raise that (root, unless a
// container withholds CAP_SYS_RESOURCE), else to the hard limit. Its
// child processes inherit it.
func raiseNoFile(want uint64) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur >= want {
		return rl.Cur
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if limit, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && want > limit {
			want = limit
		}
	}
	up := syscall.Rlimit{Cur: want, Max: max(rl.Max, want)}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) != nil {
		up = syscall.Rlimit{Cur: rl.Max, Max: rl.Max}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) != nil {
			return rl.Cur
		}
	}
	return up.Cur
}

// realAddr is the loopback address of real sshd node i.
func realAddr(i int) string { return fmt.Sprintf("127.77.%d.%d", 1+i/250, 1+i%250) }

// childUsage returns user+sys CPU of the waited-for descendants so far.
func childUsage() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func selfUsage() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type row struct {
	tool      string
	nodes, ok int
	wall, cpu time.Duration
	reused    bool // found SSH connections of an earlier run open (Ansible's ControlPersist)
}

// runTool runs a client command and measures its wall time and the CPU of
// its whole process tree: every process it waited for is in RUSAGE_CHILDREN
// once it is waited for itself, and the ssh masters it left running in the
// background (which the bench inherits) are added.
func runTool(name string, nodes int, okCount func(out []byte) int, argv []string, env ...string) row {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(peerEnviron(), env...)
	orphans := orphanSSH()
	before := childUsage()
	start := time.Now()
	out, err := cmd.Output()
	wall := time.Since(start)
	after := orphanSSH()
	bgCPU := orphanCPU(orphans, after)
	cpu := childUsage() - before + bgCPU
	if bgCPU > 0 {
		fmt.Fprintf(os.Stderr, "  %s: %d ssh processes in the background took %s of CPU during the run (counted as its own)\n",
			name, len(after), bgCPU.Round(100*time.Microsecond))
	}
	ok := okCount(out)
	if err != nil && ok == 0 {
		fmt.Fprintf(os.Stderr, "%s: %v\n%s\n", name, err, out)
	}
	return row{tool: name, nodes: nodes, ok: ok, wall: wall, cpu: cpu}
}

// peerEnviron is the bench's environment without the ANSIBLE_ settings of
// whoever runs it, so that Ansible runs with its defaults.
func peerEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ANSIBLE_") {
			env = append(env, kv)
		}
	}
	return env
}

// ansibleOK counts hosts ansible reports as CHANGED or SUCCESS.
func ansibleOK(out []byte) int {
	return strings.Count(string(out), " | CHANGED") + strings.Count(string(out), " | SUCCESS")
}

func countLines(sub string) func([]byte) int {
	return func(out []byte) int { return strings.Count(string(out), sub) }
}

// realNodes are the sshd nodes of the comparison and how to log in.
type realNodes struct {
	where                 string // for the table's title
	names, hosts          []string
	clientKey, knownHosts string
}

// loopbackNodes starts n sshd of its own on 127.77.x.y (the sshdtest
// fixture), for machines where no lab can come up.
func loopbackNodes(dir string, n int) (*realNodes, func()) {
	var hosts []string
	for i := 0; i < n; i++ {
		hosts = append(hosts, realAddr(i))
	}
	fmt.Fprintf(os.Stderr, "starting %d sshd on 127.77.x.y:22...\n", n)
	fx, err := sshdtest.StartDir(filepath.Join(dir, "sshd"), n, sshdtest.Options{Hosts: hosts})
	check(err)
	rn := &realNodes{where: "on loopback", clientKey: fx.ClientKey, knownHosts: fx.KnownHosts}
	for _, s := range fx.Servers {
		rn.names = append(rn.names, s.Name)
		rn.hosts = append(rn.hosts, s.Host)
	}
	return rn, fx.Stop
}

// labNodes takes the first n sshd-only hosts (role ssh) of a lab brought up
// with `breakglass lab up --ssh-hosts N`: each its own network namespace on
// the lab bridge, as the nodes of the lab tests are.
func labNodes(file string, n int) *realNodes {
	inv, err := inventory.Load(file)
	check(err)
	if len(inv.SSH.IdentityFiles) == 0 || inv.SSH.KnownHosts == "" {
		check(fmt.Errorf("%s: ssh.identityFiles and ssh.knownHosts are needed", file))
	}
	rn := &realNodes{where: "lab hosts", clientKey: inv.SSH.IdentityFiles[0], knownHosts: inv.SSH.KnownHosts}
	for _, node := range inv.Nodes {
		if node.HasRole("ssh") && len(rn.hosts) < n {
			rn.names = append(rn.names, node.Name)
			rn.hosts = append(rn.hosts, node.Address)
		}
	}
	if len(rn.hosts) < n {
		check(fmt.Errorf("%s has %d hosts of role ssh, the bench needs %d: breakglass lab up --ssh-hosts %d", file, len(rn.hosts), n, n))
	}
	return rn
}

func benchReal(dir string, n, rounds int, tools []string, labInventory string) {
	var rn *realNodes
	if labInventory != "" {
		rn = labNodes(labInventory, n)
	} else {
		var stop func()
		rn, stop = loopbackNodes(dir, n)
		defer stop()
	}

	// breakglass, built like a release.
	bin := filepath.Join(dir, "breakglass")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/breakglass").CombinedOutput()
	if err != nil {
		check(fmt.Errorf("build breakglass (run from the module root): %v\n%s", err, out))
	}
	var inv strings.Builder
	fmt.Fprintf(&inv, "ssh:\n  user: root\n  identityFiles: [%s]\n  knownHosts: %s\n  config: none\n  agent: false\nnodes:\n", rn.clientKey, rn.knownHosts)
	var pssh, ans strings.Builder
	ans.WriteString("[nodes]\n")
	for i, host := range rn.hosts {
		fmt.Fprintf(&inv, "  - {name: %s, address: %s}\n", rn.names[i], host)
		fmt.Fprintf(&pssh, "root@%s\n", host)
		fmt.Fprintf(&ans, "%s ansible_host=%s\n", rn.names[i], host)
	}
	invFile := filepath.Join(dir, "breakglass.yaml")
	psshFile := filepath.Join(dir, "pssh-hosts")
	ansFile := filepath.Join(dir, "ansible-hosts")
	check(os.WriteFile(invFile, []byte(inv.String()), 0o600))
	check(os.WriteFile(psshFile, []byte(pssh.String()), 0o600))
	check(os.WriteFile(ansFile, []byte(ans.String()), 0o600))
	par := strconv.Itoa(n)
	// parallel-ssh runs ssh with ssh's defaults (a new connection per node
	// and run, no ControlMaster) and with the key and known_hosts only.
	sshOpts := fmt.Sprintf("-i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes", rn.clientKey, rn.knownHosts)

	usePSSH := slices.Contains(tools, "parallel-ssh")
	if _, err := exec.LookPath("parallel-ssh"); usePSSH && err != nil {
		fmt.Fprintln(os.Stderr, "parallel-ssh not installed (apt-get install pssh): skipped")
		usePSSH = false
	}
	var ansible []ansibleRun
	if !slices.Contains(tools, "ansible") {
	} else if _, err := exec.LookPath("ansible"); err == nil {
		ansible = ansibleRuns(dir, rn)
		becomeSubreaper()
		defer stopOrphans() // before the loopback sshd stop (defers run last first)
	} else {
		fmt.Fprintln(os.Stderr, "ansible not installed (apt-get install ansible-core): skipped")
	}

	var rows []row
	// Warm up sshd (first exec of each binary) and the page cache.
	exec.Command(bin, "--inventory", invFile, "-o", "json", "--yes", "exec", "--journal", filepath.Join(dir, "journal.jsonl"), "--", "true").Run()
	// The floor: a plain x/crypto/ssh loop in a small program of its own
	// (this one, which does not link what breakglass links).
	self, err := os.Executable()
	check(err)
	plainFile := filepath.Join(dir, "plain-hosts")
	check(os.WriteFile(plainFile, []byte(fmt.Sprintf("%s\n%s\n%s", rn.clientKey, rn.knownHosts, pssh.String())), 0o600))
	noHosts := filepath.Join(dir, "plain-nohosts")
	check(os.WriteFile(noHosts, []byte(fmt.Sprintf("%s\n%s\n", rn.clientKey, rn.knownHosts)), 0o600))
	// Every client runs once per round, the same number of rounds each,
	// so that a disturbance of the machine falls on all of them; so do the
	// start-up costs of breakglass and the plain loop (the same process
	// reaching no node), which are the same at 50 nodes or 5,000.
	for round := 0; round < rounds; round++ {
		fmt.Fprintf(os.Stderr, "real sshd nodes: round %d of %d\n", round+1, rounds)
		rows = append(rows, runTool("breakglass exec", n, countLines(`"status":"ok"`),
			[]string{bin, "--inventory", invFile, "--concurrency", par, "-o", "json", "--yes", "exec", "--journal", filepath.Join(dir, "journal.jsonl"), "--", "true"}))
		rows = append(rows, runTool("plain x/crypto/ssh loop", n, countLines("ok\n"), []string{self, "-plain-client", plainFile}))
		rows = append(rows, runTool("plain loop, tuned", n, countLines("ok\n"), []string{self, "-plain-client", plainFile, "-plain-tuned"}))
		rows = append(rows, runTool("breakglass start-up", 0, func([]byte) int { return 0 }, []string{bin, "version"}))
		rows = append(rows, runTool("plain loop start-up", 0, func([]byte) int { return 0 }, []string{self, "-plain-client", noHosts}))
		if usePSSH {
			rows = append(rows, runTool("parallel-ssh", n, countLines("[SUCCESS]"),
				[]string{"parallel-ssh", "-h", psshFile, "-p", par, "-t", "60", "-x", sshOpts, "true"}))
		}
		for _, a := range ansible {
			reused := controlSockets(a.cpDir) > 0
			r := runTool(a.name, n, ansibleOK,
				[]string{"ansible", "all", "-i", ansFile, "-u", "root", "-f", par, "-m", a.module, "-a", "true"}, a.env...)
			r.reused = reused
			rows = append(rows, r)
		}
	}

	order, st := summarize(rows)
	bg, pl, tu := st["breakglass exec"], st["plain x/crypto/ssh loop"], st["plain loop, tuned"]
	startup := map[string]time.Duration{"breakglass exec": st["breakglass start-up"].cpuMed,
		"plain x/crypto/ssh loop": st["plain loop start-up"].cpuMed, "plain loop, tuned": st["plain loop start-up"].cpuMed}
	ms := time.Millisecond
	fmt.Printf("\nReal OpenSSH sshd nodes: %d %s, command `true`, parallelism %d; %d rounds, every client once per round; median and min of the rounds\n\n",
		n, rn.where, n, rounds)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "client\tnodes ok\twall median\twall min\twall round 1\tclient CPU median\tCPU min\tCPU/node\tCPU/node after start-up\twall vs breakglass\tCPU/node vs breakglass\t")
	for _, t := range order {
		r := st[t]
		if r.nodes == 0 {
			fmt.Fprintf(tw, "%s (reaching no node)\t-\t-\t-\t-\t%s\t%s\t-\t-\t-\t-\t\n", r.tool, r.cpuMed.Round(10*time.Microsecond), r.cpuMin.Round(10*time.Microsecond))
			continue
		}
		after := "-"
		if s, ok := startup[t]; ok {
			after = perNode(r.cpuMed-s, r.nodes)
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%.1fx\t\n", r.tool, r.okMin, r.nodes,
			r.wallMed.Round(ms), r.wallMin.Round(ms), r.first.wall.Round(ms), r.cpuMed.Round(ms), r.cpuMin.Round(ms),
			perNode(r.cpuMed, r.nodes), after, ratio(r.wallMed, bg.wallMed), ratio(r.cpuMed, bg.cpuMed))
	}
	tw.Flush()
	fmt.Println("\nnodes ok: the fewest of any round. CPU/node, after start-up and the ratios: of the medians. Client CPU: the client's whole")
	fmt.Println("process tree, with the ssh master processes it leaves running in the background.")
	if len(ansible) > 0 {
		fmt.Println("Ansible runs as it ships (ssh_args `-C -o ControlMaster=auto -o ControlPersist=60s`, pipelining off but in the row that")
		fmt.Println("says so, Python interpreter discovery), given only the key and the known_hosts file; breakglass, parallel-ssh and the")
		fmt.Println("plain loops open new connections in every round.")
	}
	for _, t := range order {
		if r := st[t]; r.reused > 0 {
			fmt.Printf("%s: %d of %d rounds reused the SSH connections ControlPersist kept open since the round before; round 1 opened new ones (wall %s, CPU/node %s).\n",
				t, r.reused, r.rounds, r.first.wall.Round(ms), perNode(r.first.cpu, r.nodes))
		}
	}
	fmt.Printf("\ntargets: client CPU/node <= 1ms: %s (%s); the plain x/crypto/ssh loop, the floor, takes %s here (breakglass is %.2fx of it)\n",
		perNode(bg.cpuMed, bg.nodes), verdict(float64(bg.cpuMed)/float64(bg.nodes) <= float64(time.Millisecond)), perNode(pl.cpuMed, pl.nodes), ratio(bg.cpuMed, pl.cpuMed))
	fmt.Printf("         after start-up (what each further node costs): breakglass %s, plain loop %s\n",
		perNode(bg.cpuMed-startup["breakglass exec"], bg.nodes), perNode(pl.cpuMed-startup["plain x/crypto/ssh loop"], pl.nodes))
	fmt.Printf("         the least any x/crypto/ssh client took here (tuned plain loop: read-ahead, one P): %s per node, %s after start-up\n",
		perNode(tu.cpuMed, tu.nodes), perNode(tu.cpuMed-startup["plain loop, tuned"], tu.nodes))
	if ps, ok := st["parallel-ssh"]; ok {
		fmt.Printf("         wall no worse than parallel-ssh: %.2fx of it (%s)\n", ratio(bg.wallMed, ps.wallMed), verdict(bg.wallMed <= ps.wallMed))
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func perNode(d time.Duration, n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(n)/1e6)
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
