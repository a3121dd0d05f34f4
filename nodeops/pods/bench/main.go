// Command bench measures `breakglass pods stop` on a lab's real kubelets
// and containerd: it runs a Deployment of -pods pause pods on the lab's
// workers, then, -rounds times, stops them all with the real binary (one
// process per round, as an operator runs it) and waits, from containerd,
// until kubelet has started them all again before the next round. It prints
// the median wall time, pods stopped per second and the client's CPU time
// per node and per pod (connection, CRI list, stop; plan and apply).
//
//	go run ./nodeops/pods/bench -lab .lab/lab.json -breakglass bin/breakglass
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/benchstat"
)

func main() {
	labJSON := flag.String("lab", ".lab/lab.json", "the lab's lab.json")
	bin := flag.String("breakglass", "bin/breakglass", "breakglass binary")
	pods := flag.Int("pods", 30, "pause pods to stop each round")
	rounds := flag.Int("rounds", 5, "rounds; the table prints medians")
	flag.Parse()
	st, err := lab.LoadState(*labJSON)
	check(err)
	b := &bench{st: st, bin: *bin, ns: "bgbench-stop"}
	b.setup(*pods)
	defer b.kubectl("", "delete", "namespace", b.ns, "--wait=false")
	workers := len(st.HostsWithRole("worker"))

	var walls, cpus []time.Duration
	for r := 1; r <= *rounds; r++ {
		b.waitRunning(*pods)
		wall, cpu, stopped := b.stop()
		if stopped != *pods {
			fail("round %d: %d pods stopped, want %d", r, stopped, *pods)
		}
		walls = append(walls, wall)
		cpus = append(cpus, cpu)
		fmt.Fprintf(os.Stderr, "round %d: %d pods on %d workers stopped in %s (client CPU %s)\n", r, stopped, workers, wall.Round(time.Millisecond), cpu.Round(time.Millisecond))
	}
	w, c := benchstat.Median(walls), benchstat.Median(cpus)
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tWORKERS\tPODS\tROUNDS\tWALL (median)\tWALL (min)\tPODS/S\tCLIENT CPU\tCPU/NODE\tCPU/POD")
	fmt.Fprintf(tw, "breakglass pods stop\t%d\t%d\t%d\t%s\t%s\t%.0f\t%s\t%s\t%s\n", workers, *pods, *rounds,
		w.Round(time.Millisecond), slices.Min(walls).Round(time.Millisecond), float64(*pods)/w.Seconds(),
		c.Round(time.Millisecond), (c / time.Duration(workers)).Round(10*time.Microsecond), (c / time.Duration(*pods)).Round(10*time.Microsecond))
	tw.Flush()
}

type bench struct {
	st  *lab.State
	bin string
	ns  string
}

func (b *bench) kubectl(stdin string, args ...string) string {
	cmd := exec.Command(b.st.Binaries.Kubectl, append([]string{"--kubeconfig", b.st.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		fail("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (b *bench) setup(n int) {
	b.kubectl(fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: pause, namespace: %[1]s}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: pause}}
  template:
    metadata: {labels: {app: pause}}
    spec:
      terminationGracePeriodSeconds: 0
      tolerations: [{operator: Exists}]
      containers: [{name: p, image: %[3]s, imagePullPolicy: Never, resources: {requests: {cpu: 1m}}}]
`, b.ns, n, lab.PauseImage), "apply", "-f", "-")
}

// running counts the pods whose sandbox is ready and container runs, from
// containerd (pods list), not from pod status.
func (b *bench) running() int {
	out, err := exec.Command(b.bin, "pods", "list", "--inventory", b.st.Inventory, "--nodes", "role=worker", "-n", b.ns, "-o", "json").Output()
	if err != nil {
		return -1
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var p struct {
			Type       string
			State      string
			Containers []struct{ State string }
		}
		if json.Unmarshal([]byte(line), &p) != nil || p.Type != "pod" || p.State != "ready" || len(p.Containers) == 0 {
			continue
		}
		if p.Containers[0].State == "running" {
			n++
		}
	}
	return n
}

func (b *bench) waitRunning(want int) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		n := b.running()
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			fail("only %d of %d pods running after 5 minutes", n, want)
		}
		time.Sleep(time.Second)
	}
}

// stop runs one `pods stop` and returns its wall time, CPU time and the
// number of pods it stopped (from its JSON output).
func (b *bench) stop() (time.Duration, time.Duration, int) {
	dir, err := os.MkdirTemp("", "bgbench-")
	check(err)
	defer os.RemoveAll(dir)
	cmd := exec.Command(b.bin, "pods", "stop", "--inventory", b.st.Inventory, "--nodes", "role=worker", "-n", b.ns,
		"--yes", "--grace", "0s", "--max-pods", "0", "--journal", dir+"/journal.jsonl", "-o", "json")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	if err := cmd.Run(); err != nil {
		fail("pods stop: %v\n%s", err, errOut.String())
	}
	wall := time.Since(start)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	stopped := 0
	for _, line := range strings.Split(out.String(), "\n") {
		var c struct {
			Type, Result string
		}
		if json.Unmarshal([]byte(line), &c) == nil && c.Type == "change" {
			// "3 pods stopped, 1 already gone"
			for _, part := range strings.Split(c.Result, ", ") {
				var n int
				if _, err := fmt.Sscanf(part, "%d pod", &n); err == nil && strings.Contains(part, "stopped") {
					stopped += n
				}
			}
		}
	}
	return wall, cpu, stopped
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	os.Exit(1)
}
