// Command bench compares breakglass's SSH fan-out with parallel-ssh,
// Ansible and a plain x/crypto/ssh loop on real sshd nodes, and measures
// the engine at scale on simulated nodes against the raw x/crypto/ssh
// handshake rate of the same machine. It prints tables; `make bench` runs it
// (as root: sshd needs it). Each simulated run's client is a fresh process,
// so that its memory, goroutines and CPU are its own.
//
//	go run ./nodeops/bench [-real 50] [-lab-inventory .lab/breakglass.yaml] [-sim 5000] [-inflight 512] [-tools breakglass,parallel-ssh,ansible] [-cpuprofile prefix]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

func main() {
	real := flag.Int("real", 50, "real sshd nodes (0 to skip)")
	sim := flag.Int("sim", 5000, "simulated nodes (0 to skip)")
	inflight := flag.Int("inflight", 512, "nodes in flight for the simulated runs")
	latency := flag.Duration("latency", 20*time.Millisecond, "added latency per write in the second simulated run (0 to skip it)")
	tools := flag.String("tools", "breakglass,parallel-ssh,ansible", "clients compared on the real sshd nodes")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of each simulated run's client to `prefix`-RUN.prof")
	// The simulated nodes and each simulated run's client are child
	// processes of the bench, so that each run's memory, goroutines and CPU
	// are its own.
	serve := flag.Int("serve-sim", 0, "internal: serve N simulated nodes")
	client := flag.String("sim-client", "", "internal: run one simulated scenario's client (raw, engine or engine-reuse) and print its result")
	labInventory := flag.String("lab-inventory", "", "compare on the sshd-only hosts (role ssh) of the lab whose inventory is `file` (breakglass lab up --ssh-hosts N) instead of sshd of the bench's own on loopback")
	plain := flag.String("plain-client", "", "internal: run the plain x/crypto/ssh loop on the real sshd nodes listed in `file`")
	plainTuned := flag.Bool("plain-tuned", false, "internal: with -plain-client, read ahead during the version exchange and run on one P")
	dirFlag := flag.String("dir", "", "internal: the bench's work directory")
	delay := flag.Duration("delay", 0, "internal: write delay of the simulated nodes")
	keyFile := flag.String("key", "", "internal: host key file of the simulated nodes")
	flag.Parse()
	switch {
	case *serve > 0:
		serveSim(*serve, *delay, *keyFile)
		return
	case *plain != "":
		plainClient(*plain, *plainTuned)
		return
	case *client != "":
		simClient(*client, *dirFlag, *sim, *inflight, *cpuprofile)
		return
	}
	dir, err := os.MkdirTemp("", "breakglass-bench-")
	check(err)
	defer os.RemoveAll(dir)
	if *real > 0 {
		benchReal(dir, *real, strings.Split(*tools, ","), *labInventory)
	}
	if *sim > 0 {
		benchSim(dir, *sim, *inflight, *latency, *cpuprofile)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// simAddr is the loopback address of simulated node i: 127.88.x.y.
func simAddr(i int) string { return fmt.Sprintf("127.88.%d.%d", 1+i/250, 1+i%250) }

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
}

// runTool runs a client command and measures its wall time and the CPU of
// its whole process tree (every process it waited for is in RUSAGE_CHILDREN
// once it is waited for itself).
func runTool(name string, nodes int, okCount func(out []byte) int, argv []string, env ...string) row {
	before := childUsage()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := cmd.Output()
	wall := time.Since(start)
	cpu := childUsage() - before
	ok := okCount(out)
	if err != nil && ok == 0 {
		fmt.Fprintf(os.Stderr, "%s: %v\n%s\n", name, err, out)
	}
	return row{tool: name, nodes: nodes, ok: ok, wall: wall, cpu: cpu}
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

func benchReal(dir string, n int, tools []string, labInventory string) {
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
	sshOpts := fmt.Sprintf("-i %s -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlMaster=no", rn.clientKey, rn.knownHosts)

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
	// breakglass and the plain loop take turns, so that a disturbance of
	// the machine falls on both; so do their start-up costs (the same
	// process reaching no node), which are the same at 50 nodes or 5,000.
	for round := 0; round < 5; round++ {
		rows = append(rows, runTool("breakglass exec", n, countLines(`"status":"ok"`),
			[]string{bin, "--inventory", invFile, "--concurrency", par, "-o", "json", "--yes", "exec", "--journal", filepath.Join(dir, "journal.jsonl"), "--", "true"}))
		rows = append(rows, runTool("plain x/crypto/ssh loop", n, countLines("ok\n"), []string{self, "-plain-client", plainFile}))
		rows = append(rows, runTool("plain loop, tuned", n, countLines("ok\n"), []string{self, "-plain-client", plainFile, "-plain-tuned"}))
		rows = append(rows, runTool("breakglass start-up", 0, func([]byte) int { return 0 }, []string{bin, "version"}))
		rows = append(rows, runTool("plain loop start-up", 0, func([]byte) int { return 0 }, []string{self, "-plain-client", noHosts}))
	}
	if !slices.Contains(tools, "parallel-ssh") {
	} else if _, err := exec.LookPath("parallel-ssh"); err == nil {
		for round := 0; round < 3; round++ {
			rows = append(rows, runTool("parallel-ssh", n, countLines("[SUCCESS]"),
				[]string{"parallel-ssh", "-h", psshFile, "-p", par, "-t", "60", "-x", sshOpts, "true"}))
		}
	} else {
		fmt.Fprintln(os.Stderr, "parallel-ssh not installed (apt-get install pssh): skipped")
	}
	if !slices.Contains(tools, "ansible") {
	} else if _, err := exec.LookPath("ansible"); err == nil {
		ansEnv := []string{"ANSIBLE_HOST_KEY_CHECKING=True", "ANSIBLE_SSH_ARGS=" + sshOpts, "ANSIBLE_LOCAL_TEMP=" + filepath.Join(dir, "ansible-tmp"),
			"ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3", "ANSIBLE_NOCOLOR=1", "ANSIBLE_GATHERING=explicit"}
		for _, mod := range []string{"raw", "command"} {
			rows = append(rows, runTool("ansible -m "+mod, n, ansibleOK,
				[]string{"ansible", "all", "-i", ansFile, "-u", "root", "-f", par, "-m", mod, "-a", "true"}, ansEnv...))
		}
	} else {
		fmt.Fprintln(os.Stderr, "ansible not installed (apt-get install ansible): skipped")
	}

	// Keep the best of the rounds of each tool (least disturbed by the
	// other work on the machine): the shortest wall time and, separately,
	// the least CPU.
	best := map[string]row{}
	var order []string
	for _, r := range rows {
		b, seen := best[r.tool]
		if !seen {
			order = append(order, r.tool)
			best[r.tool] = r
			continue
		}
		b.wall, b.cpu, b.ok = min(b.wall, r.wall), min(b.cpu, r.cpu), min(b.ok, r.ok)
		best[r.tool] = b
	}
	bg, pl := best["breakglass exec"], best["plain x/crypto/ssh loop"]
	startup := map[string]time.Duration{"breakglass exec": best["breakglass start-up"].cpu, "plain x/crypto/ssh loop": best["plain loop start-up"].cpu, "plain loop, tuned": best["plain loop start-up"].cpu}
	fmt.Printf("\nReal OpenSSH sshd nodes: %d %s, command `true`, parallelism %d (best of rounds: least wall, least CPU, fewest ok)\n\n", n, rn.where, n)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "client\tnodes ok\twall\tclient CPU\tCPU/node\tCPU/node after start-up\twall vs breakglass\tCPU/node vs breakglass\t")
	for _, t := range order {
		r := best[t]
		if r.nodes == 0 {
			fmt.Fprintf(tw, "%s (reaching no node)\t-\t-\t%s\t-\t-\t-\t-\t\n", r.tool, r.cpu.Round(10*time.Microsecond))
			continue
		}
		after := "-"
		if s, ok := startup[t]; ok {
			after = perNode(r.cpu-s, r.nodes)
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\t%s\t%.2fx\t%.1fx\t\n", r.tool, r.ok, r.nodes, r.wall.Round(time.Millisecond),
			r.cpu.Round(time.Millisecond), perNode(r.cpu, r.nodes), after, ratio(r.wall, bg.wall), ratio(r.cpu, bg.cpu))
	}
	tw.Flush()
	fmt.Printf("\ntargets: client CPU/node <= 1ms: %s (%s); the plain x/crypto/ssh loop, the floor, takes %s here (breakglass is %.2fx of it)\n",
		perNode(bg.cpu, bg.nodes), verdict(float64(bg.cpu)/float64(bg.nodes) <= float64(time.Millisecond)), perNode(pl.cpu, pl.nodes), ratio(bg.cpu, pl.cpu))
	tu := best["plain loop, tuned"]
	fmt.Printf("         after start-up (what each further node costs): breakglass %s, plain loop %s\n",
		perNode(bg.cpu-startup["breakglass exec"], bg.nodes), perNode(pl.cpu-startup["plain x/crypto/ssh loop"], pl.nodes))
	fmt.Printf("         the least any x/crypto/ssh client took here (tuned plain loop: read-ahead, one P): %s per node, %s after start-up\n",
		perNode(tu.cpu, tu.nodes), perNode(tu.cpu-startup["plain loop, tuned"], tu.nodes))
	if ps, ok := best["parallel-ssh"]; ok {
		fmt.Printf("         wall no worse than parallel-ssh: %.2fx of it (%s)\n", ratio(bg.wall, ps.wall), verdict(bg.wall <= ps.wall))
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
