package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/recover/journal"
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
	if d.Global.DryRun {
		return printExecPlan(d, nodes, opts)
	}
	if len(nodes) > opts.confirmAbove {
		if err := confirm(ctx, d, fmt.Sprintf("run %q on %d nodes?", opts.command, len(nodes))); err != nil {
			return err
		}
	}
	r, err := newRunner(d, &opts.ssh)
	if err != nil {
		return err
	}
	defer r.Close()
	j, err := d.openJournal()
	if err != nil {
		return err
	}
	audit, err := steps.StartExec(j, journal.NewID(d.Now()), opts.command, nodes)
	if err != nil {
		return err
	}

	bar := startProgress(d, "exec", len(nodes))
	onEvent := bar.onEvent()
	// -o json streams each node's line as soon as the node ends (in the
	// order nodes end, each exactly once), so that a consumer sees the
	// first results of a long run without waiting for the slowest node.
	var stream *execStream
	if d.Global.Output == "json" {
		stream = &execStream{p: newPrinter(d.Out, "json"), next: onEvent}
		onEvent = stream.event
	}
	results := fanout.RunCommand(ctx, r, nodes, nodeops.Command{Line: opts.command}, fanoutOptions(d, &opts.ssh, onEvent))
	bar.clear()
	if err := audit.Finish(results); err != nil {
		fmt.Fprintf(d.ErrOut, "breakglass: journal: %v (the run itself is reported below)\n", err)
	}
	sum := fanout.Summarize(results, opts.slowest)
	if stream != nil {
		if stream.err != nil {
			return stream.err
		}
		if err := stream.p.Object(summaryOf(sum)); err != nil {
			return err
		}
	} else if err := printExecResults(d, results, sum); err != nil {
		return err
	}
	printHints(d.ErrOut, results)
	return finishRun(ctx, "exec", sum)
}

// execStream prints a nodeResult line for each node as it ends. Fan-out
// events are serialised, so it needs no lock.
type execStream struct {
	p    Printer
	next func(fanout.Event) // the progress bar, if any
	err  error              // the first write error
}

func (s *execStream) event(e fanout.Event) {
	if s.next != nil {
		s.next(e)
	}
	if e.Result != nil && s.err == nil {
		s.err = s.p.Object(execResultOf(*e.Result))
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

func printExecPlan(d *Deps, nodes []nodeops.Target, opts *execOptions) error {
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
