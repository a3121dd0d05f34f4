package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdExec(d, nil) }) }

type execOptions struct {
	nodes   nodeFlags
	ssh     sshFlags
	command string
	slowest int
	// confirmAbove is the node count above which exec asks first.
	confirmAbove int
}

func newCmdExec(d *Deps, runF func(*execOptions) error) *cobra.Command {
	opts := &execOptions{}
	cmd := &cobra.Command{
		Use:   "exec [--nodes SELECTION] -- COMMAND [ARG...]",
		Short: "Run a command on many nodes over SSH",
		Long: `Run a command on every selected node over SSH, at --concurrency nodes at
once, with --timeout per node. The command line is given to the remote shell
(as with ssh); it runs under sudo -n when the SSH user is not root (see
ssh.sudo in the inventory).

Every node gets a result: ok, failed (the command failed, was killed or timed
out), unreachable (no connection, or a timeout before the command started),
refused (host key changed or unknown, authentication or sudo refused) or
cancelled. A summary with the counts and the slowest nodes follows.

On more than --confirm-above nodes (default 10) it asks first, unless --yes;
with no terminal and no --yes it refuses (exit 4). Every run is journaled
for the incident review, before anything runs (the command, the nodes, the
operator) and when it ends (each node's status and exit code); an exec
cannot be undone. --dry-run lists the nodes and runs nothing.

Output: -o table (default) or wide prints one row per node; -o json prints
one JSON object per node ("type":"nodeResult") as soon as that node ends
(so in the order nodes end, each node exactly once), then a final
"summary"; -o yaml prints the nodes in selection order at the end.

Exit codes: 0 every node ok, 1 error, 2 usage, 3 some nodes not ok,
4 refused (not confirmed, or --accept-new-host-keys for addresses read
from etcd), 130 cancelled (every node is still reported).`,
		Example: `  breakglass exec -- uptime
  breakglass exec --nodes role=control-plane -- crictl ps
  breakglass exec --nodes 'web-*' --exclude web-3 -o json -- systemctl is-active kubelet`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "wide", "json", "yaml"); err != nil {
				return err
			}
			if cmd.ArgsLenAtDash() != 0 {
				return usagef("put the command after --: breakglass exec [flags] -- COMMAND")
			}
			opts.command = strings.Join(args, " ")
			opts.slowest = 5
			if runF != nil {
				return runF(opts)
			}
			return runExec(cmd.Context(), d, opts)
		},
	}
	addNodeFlags(cmd, &opts.nodes)
	addSSHFlags(cmd, &opts.ssh)
	addJournalFlag(cmd, d)
	cmd.Flags().IntVar(&opts.confirmAbove, "confirm-above", 10, "ask before running on more than this many nodes (0: always ask)")
	return cmd
}

// execResult is the JSON wire struct of one node.
type execResult struct {
	Type       string `json:"type"` // nodeResult
	Node       string `json:"node"`
	Address    string `json:"address"`
	Status     string `json:"status"`
	Reason     string `json:"reason,omitempty"`
	ExitCode   int    `json:"exitCode"`
	DurationMS int64  `json:"durationMs"`
	Attempts   int    `json:"attempts"`
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	Truncated  bool   `json:"truncated,omitempty"`
	Error      string `json:"error,omitempty"`
}

// summaryWire is the JSON wire struct of the summary of a run.
type summaryWire struct {
	Type        string        `json:"type"` // summary
	Total       int           `json:"total"`
	OK          int           `json:"ok"`
	Failed      int           `json:"failed"`
	Unreachable int           `json:"unreachable"`
	Refused     int           `json:"refused"`
	Cancelled   int           `json:"cancelled"`
	Slowest     []slowestWire `json:"slowest"`
}

type slowestWire struct {
	Node       string `json:"node"`
	DurationMS int64  `json:"durationMs"`
}

func runExec(ctx context.Context, d *Deps, opts *execOptions) error {
	nodes, err := resolveNodes(ctx, d, &opts.nodes)
	if err != nil {
		return err
	}
	k := &steps.Exec{}
	if !d.Global.DryRun {
		r, err := newRunner(d, &opts.ssh)
		if err != nil {
			return err
		}
		defer r.Close()
		k.Runner = r
		k.Options = fanoutOptions(d, &opts.ssh, nil)
	}
	x := &execPrinter{d: d, p: newPrinter(d.Out, d.Global.Output), opts: opts}
	if !d.Global.DryRun {
		x.bar = startProgress(d, "exec", len(nodes))
	}
	e, stream := d.newEngineWith(x.print)
	// exec asks only above --confirm-above nodes, and its question names
	// the command.
	e.Confirm = nil
	if !d.Global.Yes && len(nodes) > opts.confirmAbove {
		e.Confirm = func(ctx context.Context, p *change.Plan) error {
			stream.Flush()
			return confirm(ctx, d, p.Title+"?")
		}
	}
	e.Register(k)
	_, err = e.Run(ctx, steps.PlanExec(opts.command, nodes))
	stream.Close()
	x.bar.clear()
	var partial *change.PartialError
	switch {
	case x.err != nil:
		return x.err
	case d.Global.DryRun || k.Results == nil:
		return err // a dry run, or nothing ran (not confirmed, no journal)
	case err != nil && !errors.As(err, &partial) && ctx.Err() == nil:
		// The nodes ran; their results are reported below, then the error.
		defer fmt.Fprintf(d.ErrOut, "breakglass: %v\n", err)
	}
	sum := fanout.Summarize(k.Results, opts.slowest)
	if d.Global.Output == "json" {
		// Each node's line was printed as it ended.
		if err := x.p.Object(summaryOf(sum)); err != nil {
			return err
		}
	} else if err := printExecResults(d, k.Results, sum); err != nil {
		return err
	}
	printHints(d.ErrOut, k.Results)
	return finishRun(ctx, "exec", sum)
}

// execPrinter prints the events of an exec: the plan of a dry run; with
// -o json each node's line as soon as the node ends (in the order nodes
// end, each exactly once), so that a consumer sees the first results of a
// long run without waiting for the slowest node; the progress bar.
type execPrinter struct {
	d    *Deps
	p    Printer
	opts *execOptions
	bar  *progress
	err  error // the first write error
}

func (x *execPrinter) print(ev change.Event) {
	var it *change.Item
	switch ev := ev.(type) {
	case change.PlanReady:
		if ev.DryRun && x.err == nil {
			x.err = printExecPlan(x.d, ev.Plan, x.opts)
		}
		return
	case change.ItemApplied:
		it = ev.Item
	case change.ItemFailed:
		it = ev.Item
	default:
		return
	}
	c, ok := it.Payload.(*steps.ExecChange)
	if !ok || c.Outcome == nil {
		return
	}
	if x.bar != nil {
		x.bar.event(fanout.Event{Result: c.Outcome})
	}
	if x.d.Global.Output == "json" && x.err == nil {
		x.err = x.p.Object(execResultOf(*c.Outcome))
	}
}

func execResultOf(r fanout.Result) execResult {
	w := execResult{Type: "nodeResult", Node: r.Target.Name, Address: r.Target.Address, Status: string(r.Status),
		Reason: r.Reason, ExitCode: r.ExitCode, DurationMS: ms(r.Duration), Attempts: r.Attempts,
		Stdout: string(r.Output.Stdout), Stderr: string(r.Output.Stderr), Truncated: r.Output.Truncated}
	if r.Err != nil {
		w.Error = r.Err.Error()
	}
	return w
}

func printExecResults(d *Deps, results []fanout.Result, sum fanout.Summary) error {
	p := newPrinter(d.Out, d.Global.Output)
	if !p.Text() {
		for _, r := range results {
			if err := p.Object(execResultOf(r)); err != nil {
				return err
			}
		}
		return p.Object(summaryOf(sum))
	}
	wide := d.Global.Output == "wide"
	header := []string{"NODE", "STATUS", "EXIT", "TIME", "OUTPUT"}
	if wide {
		header = []string{"NODE", "ADDRESS", "STATUS", "REASON", "EXIT", "TIME", "TRIES", "STDOUT", "STDERR"}
	}
	var rows [][]string
	for _, r := range results {
		exit := "-"
		if r.ExitCode >= 0 {
			exit = fmt.Sprint(r.ExitCode)
		}
		if wide {
			rows = append(rows, []string{r.Target.Name, r.Target.Address, string(r.Status), dash(r.Reason), exit,
				shortDuration(r.Duration), fmt.Sprint(r.Attempts), lastLine(r.Output.Stdout), lastLine(r.Output.Stderr)})
			continue
		}
		rows = append(rows, []string{r.Target.Name, string(r.Status), exit, shortDuration(r.Duration), outputCell(r)})
	}
	if err := p.Table(header, rows); err != nil {
		return err
	}
	fmt.Fprintf(d.Out, "\n%d nodes: %s\n", sum.Total, countsLine(sum))
	if len(sum.Slowest) > 0 {
		var parts []string
		for _, r := range sum.Slowest {
			parts = append(parts, fmt.Sprintf("%s %s", r.Target.Name, shortDuration(r.Duration)))
		}
		fmt.Fprintf(d.Out, "slowest: %s\n", strings.Join(parts, ", "))
	}
	return nil
}

func summaryOf(s fanout.Summary) summaryWire {
	w := summaryWire{Type: "summary", Total: s.Total, OK: s.Counts[nodeops.StatusOK], Failed: s.Counts[nodeops.StatusFailed],
		Unreachable: s.Counts[nodeops.StatusUnreachable], Refused: s.Counts[nodeops.StatusRefused],
		Cancelled: s.Counts[nodeops.StatusCancelled], Slowest: []slowestWire{}}
	for _, r := range s.Slowest {
		w.Slowest = append(w.Slowest, slowestWire{Node: r.Target.Name, DurationMS: ms(r.Duration)})
	}
	return w
}

// outputCell is what the table shows of a node: the error for nodes that
// did not run, else the last line of stdout (or stderr).
func outputCell(r fanout.Result) string {
	if r.Err != nil && r.Reason != "exit" {
		msg := r.Err.Error()
		var ne *nodeops.Error
		if asNodeError(r.Err, &ne) {
			msg = fmt.Sprintf("%s: %v", ne.Phase, ne.Err)
		}
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		return msg
	}
	if s := lastLine(r.Output.Stdout); s != "-" {
		return s
	}
	return lastLine(r.Output.Stderr)
}

func asNodeError(err error, ne **nodeops.Error) bool { return errors.As(err, ne) }

func lastLine(b []byte) string {
	s := strings.TrimRight(string(b), "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "-"
	}
	const max = 120
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// execPlanWire is the JSON wire struct of one node in a dry run.
type execPlanWire struct {
	Type    string `json:"type"` // execPlan
	Node    string `json:"node"`
	Address string `json:"address"`
	Source  string `json:"source"`
	Command string `json:"command"`
}

func printExecPlan(d *Deps, plan *change.Plan, opts *execOptions) error {
	nodes := make([]nodeops.Target, len(plan.Items))
	for i, it := range plan.Items {
		nodes[i] = it.Payload.(*steps.ExecChange).Target
	}
	p := newPrinter(d.Out, d.Global.Output)
	if !p.Text() {
		for _, n := range nodes {
			if err := p.Object(execPlanWire{Type: "execPlan", Node: n.Name, Address: n.Address, Source: n.Source, Command: opts.command}); err != nil {
				return err
			}
		}
		return nil
	}
	var rows [][]string
	for _, n := range nodes {
		rows = append(rows, []string{n.Name, n.Address, n.Source})
	}
	fmt.Fprintf(d.ErrOut, "dry run: would run %q on %d nodes (sudo per ssh.sudo):\n", opts.command, len(nodes))
	return p.Table([]string{"NODE", "ADDRESS", "SOURCE"}, rows)
}
