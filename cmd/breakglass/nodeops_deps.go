package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/selector"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

// NodeRunner is the runner a command gets from Deps.NewRunner.
type NodeRunner interface {
	nodeops.Runner
	Close() error
}

// nodeFlags are the node selection flags every node command shares.
type nodeFlags struct {
	sel    selector.Options
	source string // inventory | etcd
	// flags is the command's flag set: resolveNodes refuses flags that are
	// unsafe with the nodes it resolved (--accept-new-host-keys for
	// addresses read from etcd), whichever command registered them.
	flags *pflag.FlagSet
}

func addNodeFlags(cmd *cobra.Command, f *nodeFlags) {
	fl := cmd.Flags()
	f.flags = fl
	fl.StringArrayVar(&f.sel.Nodes, "nodes", nil, "nodes to work on: names, globs, role=ROLE, label=SELECTOR (as kubectl -l), comma separated (default: all)")
	fl.StringVar(&f.sel.NodesFile, "nodes-file", "", "read node selection terms from `file`, one per line (NAME ADDRESS adds a node)")
	fl.StringArrayVar(&f.sel.Exclude, "exclude", nil, "nodes to leave out, same syntax as --nodes")
	fl.StringVar(&f.source, "nodes-source", "inventory", "where nodes come from: inventory, or etcd (the inventory completed from the Node objects in etcd)")
}

// sshFlags are the SSH flags of commands that reach nodes.
type sshFlags struct {
	acceptNew bool
	retries   int
}

func addSSHFlags(cmd *cobra.Command, f *sshFlags) {
	cmd.Flags().BoolVar(&f.acceptNew, "accept-new-host-keys", false, "trust and record the host keys of nodes not yet in known_hosts (a changed key is still refused; refused for nodes whose address comes from etcd)")
	cmd.Flags().IntVar(&f.retries, "retries", 2, "retries per node for errors that are safe to retry (connection refused or reset before the command started)")
}

// resolveNodes returns the selected nodes, in inventory order.
func resolveNodes(ctx context.Context, d *Deps, f *nodeFlags) ([]nodeops.Target, error) {
	inv, err := d.Inventory()
	if err != nil {
		return nil, err
	}
	var src nodeops.NodeSource
	switch f.source {
	case "inventory":
	case "etcd":
		if d.NodeSource != nil {
			src, err = d.NodeSource(ctx)
		} else {
			var st *etcd.Store
			if st, err = d.Etcd(ctx); err == nil {
				src = newEtcdNodeSource(st)
			}
		}
		if err != nil {
			return nil, err
		}
	default:
		return nil, usagef("--nodes-source %q: must be inventory or etcd", f.source)
	}
	universe, warnings, err := selector.Universe(ctx, inv, src)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		fmt.Fprintf(d.ErrOut, "warning: %s\n", w)
	}
	nodes, err := selector.Select(universe, f.sel)
	if err != nil {
		return nil, &usageError{err}
	}
	if f.flags == nil {
		return nodes, nil
	}
	if accept, _ := f.flags.GetBool("accept-new-host-keys"); accept {
		if err := refuseAcceptNewFromEtcd(nodes); err != nil {
			return nil, err
		}
	}
	return nodes, nil
}

// sshOptions are the client options from the inventory and the flags.
func sshOptions(d *Deps, f *sshFlags) (sshclient.Options, error) {
	inv, err := d.Inventory()
	if err != nil {
		return sshclient.Options{}, err
	}
	o := sshclient.FromInventory(inv)
	o.AcceptNewHostKeys = f.acceptNew
	if d.Global.Verbose > 1 {
		o.Logf = func(format string, a ...any) { fmt.Fprintf(d.ErrOut, "ssh: "+format+"\n", a...) }
	}
	o.Warnf = func(format string, a ...any) { fmt.Fprintf(d.ErrOut, "warning: "+format+"\n", a...) }
	return o, nil
}

func newRunner(d *Deps, f *sshFlags) (NodeRunner, error) {
	o, err := sshOptions(d, f)
	if err != nil {
		return nil, err
	}
	if d.NewRunner != nil {
		return d.NewRunner(o)
	}
	return sshclient.New(o)
}

// fanoutOptions are the engine options from the global flags.
func fanoutOptions(d *Deps, f *sshFlags, onEvent func(fanout.Event)) fanout.Options {
	retries := f.retries
	if retries == 0 {
		retries = -1 // the engine's 0 means its default
	}
	return fanout.Options{Concurrency: d.Global.Concurrency, Timeout: d.Global.Timeout, Retries: retries, OnEvent: onEvent}
}

// nodesFailedError: some nodes did not end ok (exit code 3).
type nodesFailedError struct {
	summary fanout.Summary
	what    string
}

func (e *nodesFailedError) Error() string {
	return fmt.Sprintf("%s: %d of %d nodes not ok (%s)", e.what, e.summary.Total-e.summary.Counts[nodeops.StatusOK], e.summary.Total, countsLine(e.summary))
}
func (e *nodesFailedError) ExitCode() int { return exitNodesFail }

func countsLine(s fanout.Summary) string {
	var parts []string
	for _, st := range nodeops.Statuses {
		if n := s.Counts[st]; n > 0 || st != nodeops.StatusCancelled {
			parts = append(parts, fmt.Sprintf("%d %s", n, st))
		}
	}
	return strings.Join(parts, ", ")
}

// finishRun turns the results of a run into the command's error: the
// cancellation (130) first, then the failed nodes (3).
func finishRun(ctx context.Context, what string, s fanout.Summary) error {
	if ctx.Err() != nil {
		return context.Canceled
	}
	if !s.OK() {
		return &nodesFailedError{summary: s, what: what}
	}
	return nil
}

// printHints prints each distinct hint of the failed nodes once, with how
// many nodes it concerns.
func printHints(w io.Writer, results []fanout.Result) {
	count := map[string]int{}
	var order []string
	for _, r := range results {
		var ne *nodeops.Error
		if r.Err == nil || !asNodeError(r.Err, &ne) || ne.Hint == "" {
			continue
		}
		if count[ne.Hint] == 0 {
			order = append(order, ne.Hint)
		}
		count[ne.Hint]++
	}
	for _, h := range order {
		fmt.Fprintf(w, "hint: %s (%d node%s)\n", h, count[h], plural(count[h]))
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// progress draws a one-line progress bar on a terminal from fan-out
// events, at most ten times a second.
type progress struct {
	w     io.Writer
	what  string
	mu    sync.Mutex
	total int
	done  int
	count map[nodeops.Status]int
	last  time.Time
	drawn bool
}

func newProgress(w io.Writer, what string, total int) *progress {
	return &progress{w: w, what: what, total: total, count: map[nodeops.Status]int{}}
}

// startProgress returns a progress bar on stderr when it is a terminal, and
// nil otherwise; a nil bar's methods do nothing.
func startProgress(d *Deps, what string, total int) *progress {
	if !d.ErrIsTTY {
		return nil
	}
	return newProgress(d.ErrOut, what, total)
}

// onEvent returns the bar's event handler (nil for no bar).
func (p *progress) onEvent() func(fanout.Event) {
	if p == nil {
		return nil
	}
	return p.event
}

func (p *progress) event(e fanout.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Result != nil {
		p.done++
		p.count[e.Result.Status]++
	}
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond || p.done == p.total {
		p.last = now
		p.draw()
	}
}

func (p *progress) draw() {
	const width = 30
	filled := 0
	if p.total > 0 {
		filled = width * p.done / p.total
	}
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	fmt.Fprintf(p.w, "\r\033[K%s [%s] %d/%d  ok %d  failed %d  unreachable %d  refused %d",
		p.what, bar, p.done, p.total, p.count[nodeops.StatusOK], p.count[nodeops.StatusFailed],
		p.count[nodeops.StatusUnreachable], p.count[nodeops.StatusRefused])
	p.drawn = true
}

// clear removes the bar before results are printed.
func (p *progress) clear() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

func shortDuration(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func sortedLabels(m map[string]string) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// stepsEnv is what the levers are built from (recover/steps.Env): the
// inventory, the clock and the fan-out options of the flags. The caller
// adds the SSH client, the runner and etcd as the command needs them.
func (d *Deps) stepsEnv(f *sshFlags) *steps.Env {
	inv, _ := d.Inventory()
	return &steps.Env{Inventory: inv, Now: d.Now, Fanout: fanoutOptions(d, f, nil)}
}

// addNodeSSHFlags adds the node selection and SSH flags of a command that
// reaches nodes.
func addNodeSSHFlags(cmd *cobra.Command, n *nodeFlags, s *sshFlags) {
	addNodeFlags(cmd, n)
	addSSHFlags(cmd, s)
}

// addViaFlag adds --via, how containerd's socket is reached.
func addViaFlag(cmd *cobra.Command, via *string) {
	cmd.Flags().StringVar(via, "via", "", "how to reach containerd's socket: auto (forward, then sudo relay), forward or sudo (default: the inventory's containerd.via)")
}

// nodeReads counts the nodes a read-only command could not read: each is
// reported as it comes (on stderr, or as a JSON line by the caller), and
// err turns the count into the command's error.
type nodeReads struct {
	what          string
	failed, total int
}

// fail counts one node that did not answer and prints why on w (nil: the
// caller reported it otherwise).
func (r *nodeReads) fail(w io.Writer, node string, status nodeops.Status, err error) {
	r.failed++
	if w != nil {
		fmt.Fprintf(w, "%s: %s: %v\n", node, status, err)
	}
}

// err is the cancellation (130) first, then the failed nodes (a read-only
// PartialError, exit 3).
func (r *nodeReads) err(ctx context.Context) error {
	if ctx.Err() != nil {
		return context.Canceled
	}
	if r.failed > 0 {
		return &change.PartialError{What: r.what, Failed: r.failed, Total: r.total, ReadOnly: true}
	}
	return nil
}
