// Command bench measures breakglass's etcd reads on a big cluster's worth of
// pods: it starts its own etcd on 127.0.0.1 in a temporary directory, seeds
// it with pods encoded by the real codec, and runs side by side
// `breakglass count pods`, `breakglass get pods` with a label and with a
// field selector, `etcdctl get --prefix --keys-only`, and (when the
// kube-apiserver binary is there) the API server LISTs that match the
// breakglass reads: the same label and field selectors, asked for in
// protobuf as kubectl and informers ask, in one request and in pages of
// 500. It prints wall time, peak RSS and CPU of the client, of the API
// server, and etcd's CPU time for each.
//
// Every command runs -rounds times, the commands taking turns round by
// round so that a disturbance of the machine falls on all of them, and the
// table prints each one's median (and its least wall time). Every run is a
// process of its own, and every LIST has a kube-apiserver process of its
// own, started for it, so that each peak RSS is that run's alone.
//
//	go run ./etcd/bench                            # 150,000 pods on 5,000 nodes, 5 rounds
//	go run ./etcd/bench -pods 20000 -rounds 3      # quicker
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/breakglass/breakglass/lab/benchstat"
)

func main() {
	pods := flag.Int("pods", 150000, "pods to seed")
	perNode := flag.Int("per-node", 30, "pods per node")
	rounds := flag.Int("rounds", 5, "rounds of every command; the table prints each one's median and least wall time")
	etcdBin := flag.String("etcd", "/usr/bin/etcd", "etcd binary")
	etcdctl := flag.String("etcdctl", "/usr/bin/etcdctl", "etcdctl binary")
	apiserver := flag.String("kube-apiserver", "/root/.cache/breakglass/k8s/v1.31.4/bin/kube-apiserver", "kube-apiserver binary (skipped if missing)")
	bgBin := flag.String("breakglass", "", "breakglass binary (default: go build ./cmd/breakglass)")
	// Each API server LIST's client is this program again, so that its
	// memory and CPU are its own.
	listURL := flag.String("list-client", "", "internal: run one API server LIST against `url` and print its result")
	listToken := flag.String("list-token", "", "internal: with -list-client, the bearer token")
	listSelector := flag.String("list-selector", "", "internal: with -list-client, label:SELECTOR or field:SELECTOR")
	listLimit := flag.Int("list-limit", 0, "internal: with -list-client, the page size (0: one request)")
	flag.Parse()
	var err error
	switch {
	case *listURL != "":
		err = listClient(*listURL, *listToken, *listSelector, *listLimit)
	case *rounds < 1:
		err = fmt.Errorf("-rounds %d: at least 1", *rounds)
	default:
		err = run(*pods, *perNode, *rounds, *etcdBin, *etcdctl, *apiserver, *bgBin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// command is one row of the table: run measures one round of it.
type command struct {
	name string
	run  func() sample
}

func run(pods, perNode, rounds int, etcdBin, etcdctl, apiserverBin, bgBin string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base := os.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		base = "/dev/shm" // the seed is write-heavy; keep fsync off the disk
	}
	dir, err := os.MkdirTemp(base, "breakglass-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	if bgBin == "" {
		bgBin = filepath.Join(dir, "breakglass")
		logf("building breakglass")
		b := exec.Command("go", "build", "-o", bgBin, "./cmd/breakglass")
		b.Stdout, b.Stderr = os.Stderr, os.Stderr
		if err := b.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/breakglass (run from the repository root): %w", err)
		}
	}

	cport, pport := freePort(), freePort()
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", cport)
	ecmd := exec.CommandContext(ctx, etcdBin, "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", pport),
		"--quota-backend-bytes", strconv.Itoa(8<<30), "--log-level", "error", "--logger", "zap")
	elog, _ := os.Create(filepath.Join(dir, "etcd.log"))
	ecmd.Stdout, ecmd.Stderr = elog, elog
	if err := ecmd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer func() { ecmd.Process.Signal(syscall.SIGTERM); ecmd.Wait() }()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := waitEtcd(ctx, cli, endpoint); err != nil {
		return err
	}

	logf("seeding %d pods on %d nodes", pods, (pods+perNode-1)/perNode)
	t0 := time.Now()
	size, err := seed(ctx, cli, pods, perNode)
	if err != nil {
		return err
	}
	logf("seeded %d pods, %.1f KiB each on average, in %s", pods, float64(size)/float64(pods)/1024, time.Since(t0).Round(time.Second))

	etcdPID := ecmd.Process.Pid
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCDCTL_") && !strings.HasPrefix(kv, "BREAKGLASS_") {
			env = append(env, kv)
		}
	}
	env = append(env, "ETCDCTL_API=3")
	bg := []string{"--endpoints", endpoint, "--inventory", filepath.Join(dir, "none.yaml"), "--timeout", "5m"}
	os.WriteFile(filepath.Join(dir, "none.yaml"), []byte("{}\n"), 0o600)
	node := fmt.Sprintf("node-%04d", (pods/perNode)/2)
	exe := func(argv ...string) func() sample {
		return func() sample { return measure(ctx, argv, env, etcdPID, &countWriter{}) }
	}
	cmds := []command{
		{"breakglass count pods", exe(append([]string{bgBin, "count", "pods"}, bg...)...)},
		{"breakglass get pods -A -l app=app-7", exe(append([]string{bgBin, "get", "pods", "-A", "-l", "app=app-7"}, bg...)...)},
		{"breakglass get pods -A --field-selector spec.nodeName=" + node, exe(append([]string{bgBin, "get", "pods", "-A", "--field-selector", "spec.nodeName=" + node}, bg...)...)},
		{"etcdctl get --prefix /registry/pods --keys-only", exe(etcdctl, "--endpoints", endpoint, "get", "--prefix", "/registry/pods/", "--keys-only")},
	}
	if _, err := os.Stat(apiserverBin); err == nil {
		as, err := newAPIServer(dir, apiserverBin, endpoint)
		if err != nil {
			return err
		}
		for _, v := range []listVariant{
			{"kube-apiserver LIST pods -l app=app-7 (one request)", "label:app=app-7", 0},
			{"kube-apiserver LIST pods -l app=app-7, limit=500 (paged)", "label:app=app-7", 500},
			{"kube-apiserver LIST pods spec.nodeName=" + node + " (one request)", "field:spec.nodeName=" + node, 0},
			{"kube-apiserver LIST pods spec.nodeName=" + node + ", limit=500 (paged)", "field:spec.nodeName=" + node, 500},
		} {
			cmds = append(cmds, command{v.name, func() sample { return as.list(ctx, v, env, etcdPID) }})
		}
	} else {
		logf("no %s: apiserver comparison skipped", apiserverBin)
	}

	// Every command once per round, the same number of rounds each.
	samples := make([][]sample, len(cmds))
	for round := 0; round < rounds; round++ {
		for i, c := range cmds {
			logf("round %d of %d: %s", round+1, rounds, c.name)
			s := c.run()
			if s.err != nil {
				logf("%s: %v", c.name, s.err)
				if !strings.HasPrefix(c.name, "kube-apiserver") {
					return fmt.Errorf("%s: %w", c.name, s.err)
				}
			}
			samples[i] = append(samples[i], s)
		}
	}

	fmt.Printf("\n%d pods (%d per node, %.1f KiB average), etcd %s, %d CPUs; %d rounds, the commands taking turns; every column the median of the rounds but WALL MIN\n\n",
		pods, perNode, float64(size)/float64(pods)/1024, etcdVersion(etcdBin), runtime.NumCPU(), rounds)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMMAND\tWALL\tWALL MIN\tPEAK RSS\tCPU\tAPI SERVER RSS\tAPI SERVER CPU\tETCD CPU\tPODS/S/CORE\tOUTPUT")
	ms := time.Millisecond
	for i, c := range cmds {
		st := summarize(samples[i])
		if st.ok == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\tfailed: %s\n", c.name, firstLine(st.firstErr))
			continue
		}
		rate := "-"
		if strings.Contains(c.name, "spec.nodeName") {
			// Every pod is decoded in full to test spec.nodeName: by
			// breakglass, or by the API server for its client.
			if strings.HasPrefix(c.name, "kube-apiserver") {
				rate = podsPerSec(pods, st.serverCPU)
			} else {
				rate = podsPerSec(pods, st.cpu)
			}
		}
		srvRSS, srvCPU := "-", "-"
		if strings.HasPrefix(c.name, "kube-apiserver") {
			srvRSS, srvCPU = mib(st.serverRSS), st.serverCPU.Round(ms).String()
		}
		out := st.output
		if st.ok < len(samples[i]) {
			out += fmt.Sprintf(" (failed in %d of %d rounds: %s)", len(samples[i])-st.ok, len(samples[i]), firstLine(st.firstErr))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.name, st.wall.Round(ms), st.wallMin.Round(ms), mib(st.rss),
			st.cpu.Round(ms), srvRSS, srvCPU, st.etcdCPU.Round(ms), rate, out)
	}
	tw.Flush()
	fmt.Println("\nPEAK RSS and CPU are the client's: breakglass, etcdctl, or for the API server rows a client-go program asking for protobuf, as")
	fmt.Println("kubectl does. API SERVER RSS is the peak of a kube-apiserver started for that one LIST, what it holds after start-up included")
	fmt.Println("(watch cache off, so that it reads etcd);")
	fmt.Println("API SERVER CPU and ETCD CPU are those processes' CPU during the command.")
	fmt.Println("PODS/S/CORE: pods decoded per CPU-second by the field-selector reads, which decode every pod (breakglass; the API server).")
	return nil
}

// sample is one run of a command.
type sample struct {
	wall, cpu, etcdCPU, serverCPU time.Duration
	rss, serverRSS                int64 // peak RSS in KiB
	output                        string
	err                           error
}

// stats is a command's rounds: the median of each column of the runs that
// worked, and the least wall time.
type stats struct {
	ok                          int // runs that worked
	wall, wallMin, cpu, etcdCPU time.Duration
	serverCPU                   time.Duration
	rss, serverRSS              int64
	output                      string
	firstErr                    error
}

func summarize(ss []sample) stats {
	var good []sample
	var st stats
	for _, s := range ss {
		if s.err != nil {
			if st.firstErr == nil {
				st.firstErr = s.err
			}
			continue
		}
		good = append(good, s)
	}
	st.ok = len(good)
	if st.ok == 0 {
		return st
	}
	dur := func(f func(sample) time.Duration) []time.Duration {
		var out []time.Duration
		for _, s := range good {
			out = append(out, f(s))
		}
		return out
	}
	kib := func(f func(sample) int64) []int64 {
		var out []int64
		for _, s := range good {
			out = append(out, f(s))
		}
		return out
	}
	walls := dur(func(s sample) time.Duration { return s.wall })
	st.wall, st.wallMin = benchstat.Median(walls), slices.Min(walls)
	st.cpu = benchstat.Median(dur(func(s sample) time.Duration { return s.cpu }))
	st.etcdCPU = benchstat.Median(dur(func(s sample) time.Duration { return s.etcdCPU }))
	st.serverCPU = benchstat.Median(dur(func(s sample) time.Duration { return s.serverCPU }))
	st.rss = benchstat.Median(kib(func(s sample) int64 { return s.rss }))
	st.serverRSS = benchstat.Median(kib(func(s sample) int64 { return s.serverRSS }))
	st.output = good[0].output
	for _, s := range good[1:] {
		if s.output != st.output {
			st.output += " (not the same in every round)"
			break
		}
	}
	return st
}

func firstLine(err error) string {
	l, _, _ := strings.Cut(err.Error(), "\n")
	return l
}

func mib(kib int64) string { return fmt.Sprintf("%d MiB", kib/1024) }

func podsPerSec(pods int, cpu time.Duration) string {
	if cpu <= 0 {
		return "-"
	}
	return strconv.Itoa(int(float64(pods) / cpu.Seconds()))
}

// measure runs one command in a process of its own: its wall time, its
// peak RSS and CPU (from its rusage), and etcd's CPU meanwhile.
func measure(ctx context.Context, argv, env []string, etcdPID int, stdout io.Writer) sample {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout = stdout
	var stderr strings.Builder
	cmd.Stderr = &stderr
	e0 := procCPU(etcdPID)
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	e1 := procCPU(etcdPID)
	if err != nil {
		return sample{err: errors.New(strings.TrimSpace(fmt.Sprintf("%v\n%s", err, stderr.String())))}
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	s := sample{wall: wall, rss: ru.Maxrss, cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), etcdCPU: e1 - e0}
	if cw, ok := stdout.(*countWriter); ok {
		s.output = fmt.Sprintf("%d lines", cw.lines)
	}
	return s
}

type countWriter struct{ lines int }

func (c *countWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b == '\n' {
			c.lines++
		}
	}
	return len(p), nil
}

// procCPU returns user+system CPU time of a process from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // CLK_TCK is 100 on Linux
}

// procHWM returns the peak RSS (VmHWM) of a running process in KiB, or 0.
func procHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb
		}
	}
	return 0
}

func waitEtcd(ctx context.Context, cli *clientv3.Client, ep string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Status(c, ep)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("etcd at %s not up after 30s", ep)
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func etcdVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	return f[len(f)-1]
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}
