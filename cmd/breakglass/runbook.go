package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/runbook"
)

func init() {
	register(newCmdRunbook)
	// How each runbook command treats --dry-run (see dryrun.go).
	for path, mode := range map[string]string{
		"breakglass runbook":          dryRunReadOnly,
		"breakglass runbook validate": dryRunReadOnly,
		"breakglass runbook list":     dryRunReadOnly,
		"breakglass runbook show":     dryRunReadOnly,
		"breakglass runbook types":    dryRunReadOnly,
		"breakglass runbook plan":     dryRunReadOnly, // a plan applies nothing
		"breakglass runbook run":      dryRunHonoured,
		"breakglass runbook apply":    dryRunHonoured,
		"breakglass runbook undo":     dryRunHonoured,
		"breakglass runbook resume":   dryRunHonoured,
	} {
		dryRunModes[path] = mode
	}
}

const runbookExitCodes = `Exit codes: 0 ok, 1 error, 2 usage (a runbook that does not validate, a
bad --param), 3 some nodes failed in a step (the others were changed), 4
refused (a safety check, a step not confirmed, a reviewed step whose state
moved), 130 cancelled (the run can be resumed).`

func newCmdRunbook(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "runbook",
		Short: "Run a recovery as a runbook: planned step by step, journaled, resumable and undoable",
		Long: `A runbook sequences the levers (shed, stop and hold the offender, scale,
verify, lift): each step is planned first (the exact changes per node and
per etcd key), shown, confirmed, applied through the same change engine as
the commands, and journaled with the run's ID, so that an interrupted run
resumes without redoing finished steps and a run can be undone. The format
and the built-in runbooks are described in docs/runbooks.md.

In a terminal (stdin and stdout), without --yes and -o json, "runbook run"
opens a TUI: the steps with their status, the current step's plan and
progress, the apiserver's health (its /readyz asked every 2s with the
client of the runbook's apiserver checks, and those checks' results), a
log, and the questions (y yes, n no, s skips a step whose onFailure is
continue, u undoes the last applied step, Ctrl-C twice aborts, ? help).
Otherwise a run
prints plain progress on stderr; with -o json JSON event lines on stdout
(docs/json-output.md).

` + runbookExitCodes,
	}
	cmd.AddCommand(newCmdRunbookValidate(d), newCmdRunbookList(d), newCmdRunbookShow(d), newCmdRunbookTypes(d),
		newCmdRunbookRun(d), newCmdRunbookPlan(d), newCmdRunbookApply(d), newCmdRunbookUndo(d), newCmdRunbookResume(d))
	return cmd
}

// openRunbook loads a built-in runbook by name or a runbook file.
func openRunbook(nameOrFile string) (*runbook.Runbook, error) {
	rb, err := runbook.Open(nameOrFile)
	if err != nil {
		if _, ok := err.(*runbook.LoadError); ok {
			return nil, err
		}
		return nil, &usageError{err}
	}
	return rb, nil
}

// --- validate, list, show, types

func newCmdRunbookValidate(d *Deps) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check runbook files: every problem with its file, line and field",
		Long: `Load and check each runbook file: its YAML, its fields, each step's type
(one this build has), its parameters and their types, the templates and
what they refer to. Every problem is printed as FILE:LINE: FIELD: what is
wrong.

` + runbookExitCodes,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bad := 0
			for _, f := range args {
				rb, err := runbook.LoadFile(f)
				if err != nil {
					bad++
					fmt.Fprintln(d.ErrOut, err)
					continue
				}
				fmt.Fprintf(d.Out, "%s: ok: runbook %s, %d step%s\n", f, rb.Name, len(rb.Steps), plural(len(rb.Steps)))
			}
			if bad > 0 {
				return usagef("%d of %d runbook files did not validate", bad, len(args))
			}
			return nil
		},
	}
}

type runbookWire struct {
	Type        string         `json:"type"` // runbook
	Name        string         `json:"name"`
	Source      string         `json:"source"`
	Description string         `json:"description,omitempty"`
	Parameters  []paramWire    `json:"parameters,omitempty"`
	Steps       []stepShowWire `json:"steps,omitempty"`
	StepCount   int            `json:"stepCount"`
}

type paramWire struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Default     string `json:"default,omitempty"`
	Required    bool   `json:"required,omitempty"`
	Description string `json:"description,omitempty"`
}

type stepShowWire struct {
	Index     int               `json:"index"`
	ID        string            `json:"id"`
	Type      string            `json:"type"`
	Title     string            `json:"title,omitempty"`
	When      string            `json:"when,omitempty"`
	Params    map[string]string `json:"params,omitempty"`
	Verify    string            `json:"verify,omitempty"`
	OnFailure string            `json:"onFailure"`
}

func runbookToWire(rb *runbook.Runbook, full bool) runbookWire {
	w := runbookWire{Type: "runbook", Name: rb.Name, Source: rb.Source, Description: strings.TrimSpace(rb.Description), StepCount: len(rb.Steps)}
	if !full {
		return w
	}
	for _, p := range rb.Parameters {
		w.Parameters = append(w.Parameters, paramWire{Name: p.Name, Type: p.Type, Default: p.Default, Required: p.Required, Description: p.Description})
	}
	for i, s := range rb.Steps {
		sw := stepShowWire{Index: i + 1, ID: s.ID, Type: s.Type, Title: s.Title, When: s.When, Params: s.Params, OnFailure: s.OnFailure}
		if s.Verify != nil {
			sw.Verify = s.Verify.Check + " " + sortedLabels(s.Verify.Params) + " within " + s.Verify.Timeout.String()
		}
		w.Steps = append(w.Steps, sw)
	}
	return w
}

func newCmdRunbookList(d *Deps) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the built-in runbooks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			p := newPrinter(d.Out, d.Global.Output)
			var rows [][]string
			for _, name := range runbook.Builtins() {
				rb, err := runbook.Builtin(name)
				if err != nil {
					return err
				}
				if !p.Text() {
					if err := p.Object(runbookToWire(rb, false)); err != nil {
						return err
					}
					continue
				}
				rows = append(rows, []string{rb.Name, strconv.Itoa(len(rb.Steps)), firstLineOf(strings.TrimSpace(rb.Description))})
			}
			return p.Table([]string{"NAME", "STEPS", "DESCRIPTION"}, rows)
		},
	}
}

func newCmdRunbookShow(d *Deps) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME|FILE",
		Short: "Show a runbook: its parameters and steps",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			rb, err := openRunbook(args[0])
			if err != nil {
				return err
			}
			w := runbookToWire(rb, true)
			p := newPrinter(d.Out, d.Global.Output)
			if !p.Text() {
				return p.Object(w)
			}
			fmt.Fprintf(d.Out, "runbook %s (%s)\n\n%s\n\n", rb.Name, rb.Source, strings.TrimSpace(rb.Description))
			if len(w.Parameters) > 0 {
				var rows [][]string
				for _, p := range w.Parameters {
					def := p.Default
					if p.Required {
						def = "(required)"
					}
					rows = append(rows, []string{p.Name, p.Type, dash(def), p.Description})
				}
				if err := p.Table([]string{"PARAMETER", "TYPE", "DEFAULT", "DESCRIPTION"}, rows); err != nil {
					return err
				}
				fmt.Fprintln(d.Out)
			}
			var rows [][]string
			for _, s := range w.Steps {
				title := s.Title
				if title == "" {
					title = s.ID
				}
				extra := sortedLabels(s.Params)
				if s.Verify != "" {
					extra += "; verify " + s.Verify
				}
				if s.When != "" {
					extra += "; when " + s.When
				}
				rows = append(rows, []string{strconv.Itoa(s.Index), s.ID, s.Type, title, s.OnFailure, extra})
			}
			return p.Table([]string{"#", "ID", "TYPE", "TITLE", "ON FAILURE", "PARAMS"}, rows)
		},
	}
}

type stepTypeWire struct {
	Type    string      `json:"type"` // stepType, check
	Name    string      `json:"name"`
	Summary string      `json:"summary"`
	Params  []paramWire `json:"params"`
}

func newCmdRunbookTypes(d *Deps) *cobra.Command {
	return &cobra.Command{
		Use:   "types",
		Short: "List the step types and checks this build has, with their parameters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			p := newPrinter(d.Out, d.Global.Output)
			var rows [][]string
			add := func(kind, name, summary string, specs []runbook.ParamSpec) error {
				w := stepTypeWire{Type: kind, Name: name, Summary: summary}
				var names []string
				for _, s := range specs {
					w.Params = append(w.Params, paramWire{Name: s.Name, Type: s.Type, Default: s.Default, Required: s.Required, Description: s.Doc})
					n := s.Name
					if s.Required {
						n += "*"
					}
					names = append(names, n)
				}
				if !p.Text() {
					return p.Object(w)
				}
				rows = append(rows, []string{kind, name, strings.Join(names, ","), summary})
				return nil
			}
			for _, t := range runbook.StepTypes() {
				if err := add("stepType", t.Name, t.Summary, t.Params); err != nil {
					return err
				}
			}
			for _, c := range runbook.CheckTypes() {
				if err := add("check", c.Name, c.Summary, c.Params); err != nil {
					return err
				}
			}
			return p.Table([]string{"KIND", "NAME", "PARAMS (* required)", "WHAT"}, rows)
		},
	}
}

// --- run, plan, apply, undo, resume

type runbookOptions struct {
	ssh    sshFlags
	params []string
}

func addRunbookFlags(cmd *cobra.Command, d *Deps, o *runbookOptions, params bool) {
	addSSHFlags(cmd, &o.ssh)
	if params {
		cmd.Flags().StringArrayVar(&o.params, "param", nil, "a runbook parameter, `NAME=VALUE` (repeatable)")
	}
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
}

func (o *runbookOptions) paramMap() (map[string]string, error) {
	m := map[string]string{}
	for _, p := range o.params {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usagef("--param %q: want NAME=VALUE", p)
		}
		m[k] = v
	}
	return m, nil
}

// runbookEngine is a runbook engine wired to this command's nodes, etcd,
// journal and prompts, printing through one event stream.
type runbookEngine struct {
	*runbook.Engine
	stream  *change.Stream
	printer *runbookPrinter
	closers []func() error
}

func (r *runbookEngine) Close() {
	r.stream.Close()
	for _, c := range r.closers {
		c()
	}
}

func newRunbookEngine(d *Deps, o *runbookOptions) (*runbookEngine, error) {
	if _, err := d.Inventory(); err != nil {
		return nil, err
	}
	opts, err := sshOptions(d, &o.ssh)
	if err != nil {
		return nil, err
	}
	cl, err := sshclient.New(opts)
	if err != nil {
		return nil, err
	}
	r := &runbookEngine{closers: []func() error{cl.Close}}
	env := d.stepsEnv(&o.ssh)
	env.SSH, env.Runner = cl, cl
	if d.NewRunner != nil {
		nr, err := d.NewRunner(opts)
		if err != nil {
			cl.Close()
			return nil, err
		}
		env.Runner = nr
		r.closers = append(r.closers, nr.Close)
	}
	r.printer = newRunbookPrinter(d)
	r.stream = change.NewStream(256, r.printer.print)
	emit := r.stream.Emit
	if tap := testEventTap; tap != nil {
		emit = func(ev change.Event) { tap(ev); r.stream.Emit(ev) }
	}
	sess := &runbook.Session{Env: env, Emit: emit, Interactive: !d.Global.Yes && d.InIsTTY,
		OpenStore: func(ctx context.Context) (*etcd.Store, error) { return d.Etcd(ctx) },
		Records:   func() ([]journal.Record, error) { return journal.Read(d.journalPath()) }}
	e := &runbook.Engine{Session: sess, DryRun: d.Global.DryRun, OpenJournal: d.openJournal, Now: d.Now, Emit: emit}
	if !d.Global.Yes {
		sess.Ask = func(ctx context.Context, q string) error {
			r.stream.Flush()
			return confirm(ctx, d, strings.TrimSuffix(q, "?")+"?")
		}
		e.Confirm = func(ctx context.Context, p *change.Plan) error {
			r.stream.Flush()
			return confirm(ctx, d, fmt.Sprintf("%s (%s)?", p.Title, shortSummary(p)))
		}
	}
	r.Engine = e
	return r, nil
}

func newCmdRunbookRun(d *Deps) *cobra.Command {
	o := &runbookOptions{}
	cmd := &cobra.Command{
		Use:   "run NAME|FILE [--param NAME=VALUE]...",
		Short: "Run a runbook: each step planned, confirmed, applied, verified and journaled",
		Long: `Run a built-in runbook (runbook list) or a runbook file. Each step is planned
first, its plan shown and confirmed (--yes confirms every step), applied
through the change engine, then verified when the step says so. The run's
ID is printed at the start and at the end: "runbook undo RUN-ID" reverses
the run, "runbook resume RUN-ID" goes on with an interrupted one. --dry-run
plans every step and applies none. At the end the run prints how long it
took, and how long until the apiserver answered within its SLO.

` + runbookExitCodes,
		Example: `  breakglass runbook run apiserver-overload --param daemonset=telemetry/telemetry-agent --dry-run
  breakglass runbook run apiserver-overload --param daemonset=telemetry/telemetry-agent --yes -o json
  breakglass runbook run ./my-runbook.yaml --param ttl=10m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			params, err := o.paramMap()
			if err != nil {
				return err
			}
			rb, err := openRunbook(args[0])
			if err != nil {
				return err
			}
			if _, err := rb.ResolveParams(params); err != nil {
				return &usageError{err}
			}
			_, err = runRunbook(cmd.Context(), d, o, rb, params)
			return err
		},
	}
	addRunbookFlags(cmd, d, o, true)
	return cmd
}

// runRunbook runs rb from its first step with params, as runbook run does
// (and rehearse, through it): in the TUI when useTUI(d), otherwise with
// plain progress on stderr or JSON events on stdout. Every event has been
// printed when it returns. The run is nil when it did not start, or when
// the TUI was left (Ctrl-C twice) before the engine returned it.
func runRunbook(ctx context.Context, d *Deps, o *runbookOptions, rb *runbook.Runbook, params map[string]string) (*runbook.Run, error) {
	r, err := newRunbookEngine(d, o)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	// The TUI starts the run in a goroutine of its own and may end before
	// it (an abort): the run is handed over atomically.
	var run atomic.Pointer[runbook.Run]
	start := func(ctx context.Context) error {
		rn, err := r.Start(ctx, rb, params)
		run.Store(rn)
		return err
	}
	if useTUI(d) {
		err = runTUI(ctx, d, r, rb, params, start)
	} else {
		err = start(ctx)
	}
	return run.Load(), err
}

func newCmdRunbookPlan(d *Deps) *cobra.Command {
	o := &runbookOptions{}
	var out string
	cmd := &cobra.Command{
		Use:   "plan NAME|FILE -o PLAN.json [--param NAME=VALUE]...",
		Short: "Plan every step of a runbook and write the whole plan, for review",
		Long: `Plan every step of a runbook, as --dry-run does, and write the whole plan
with the state each change was planned against (etcd revisions, the nft
table on each node, the pods on each node) to a file, for a second
engineer to review. "runbook apply PLAN.json" then applies exactly that
plan and refuses the steps whose state moved. Nothing is changed.

Here -o names the file the plan is written to (- for stdout); the progress
of planning goes to stderr.

` + runbookExitCodes,
		Example: `  breakglass runbook plan apiserver-overload --param daemonset=telemetry/telemetry-agent -o plan.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usagef("-o FILE is required: where the plan is written (- for stdout)")
			}
			params, err := o.paramMap()
			if err != nil {
				return err
			}
			rb, err := openRunbook(args[0])
			if err != nil {
				return err
			}
			if _, err := rb.ResolveParams(params); err != nil {
				return &usageError{err}
			}
			r, err := newRunbookEngine(d, o)
			if err != nil {
				return err
			}
			// stdout is the plan's alone (with -o -): the run's last line
			// is progress here.
			r.printer.end = d.ErrOut
			pf, err := r.Plan(cmd.Context(), rb, params)
			r.Close()
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(pf, "", "  ")
			if err != nil {
				return err
			}
			b = append(b, '\n')
			if out == "-" {
				_, err = d.Out.Write(b)
				return err
			}
			if err := os.WriteFile(out, b, 0o600); err != nil {
				return err
			}
			n := 0
			for _, s := range pf.Steps {
				if s.Plan != nil {
					n += len(s.Plan.Items)
				}
			}
			fmt.Fprintf(d.ErrOut, "plan of runbook %s written to %s: %d step%s, %d change%s\nhint: review it, then breakglass runbook apply %s\n", pf.Runbook, out, len(pf.Steps), plural(len(pf.Steps)), n, plural(n), out)
			return nil
		},
	}
	addRunbookFlags(cmd, d, o, true)
	// A local -o/--output shadows the global one: it names the file.
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the plan to this `file` (- for stdout)")
	return cmd
}

func newCmdRunbookApply(d *Deps) *cobra.Command {
	o := &runbookOptions{}
	cmd := &cobra.Command{
		Use:   "apply PLAN.json",
		Short: "Apply a reviewed runbook plan exactly, refusing the steps whose state moved",
		Long: `Apply the plan "runbook plan" wrote: each step's changes exactly as planned
(the same bytes to the same etcd revisions, the same nft transactions to
the same tables, the same pods). Where a target no longer has the state it
was planned against, nothing is written for it and the step is refused
(exit 4): make a new plan and have it reviewed again. Steps that change
nothing (notes, checks) run as in the runbook. --dry-run shows the plan.

` + runbookExitCodes,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var pf runbook.PlanFile
			if err := json.Unmarshal(b, &pf); err != nil {
				return usagef("%s: not a runbook plan: %v", args[0], err)
			}
			r, err := newRunbookEngine(d, o)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = r.ApplyPlan(cmd.Context(), &pf)
			return err
		},
	}
	addRunbookFlags(cmd, d, o, false)
	return cmd
}

func newCmdRunbookUndo(d *Deps) *cobra.Command {
	o := &runbookOptions{}
	var step int
	var force bool
	cmd := &cobra.Command{
		Use:   "undo RUN-ID [--step N]",
		Short: "Reverse a run: its steps' changes, the last first",
		Long: `Undo the changes a run made, in reverse order, each through the change
engine's undo (etcd objects back to their exact bytes, the nft table as it
was, a hold lifted), each planned, shown and confirmed. --step N undoes one
step only. A command run by an exec step cannot be undone and a stop has
nothing to put back: both are reported and passed over. An etcd object that
changed since the run wrote it (a controller updated its status) is refused
(exit 4) unless --force, as breakglass undo does.

` + runbookExitCodes,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			if step < 0 {
				return usagef("--step %d: must be a step number from 1", step)
			}
			records, err := journal.Read(d.journalPath())
			if err != nil {
				return err
			}
			r, err := newRunbookEngine(d, o)
			if err != nil {
				return err
			}
			defer r.Close()
			r.Force = force
			return r.Undo(cmd.Context(), records, args[0], step)
		},
	}
	addRunbookFlags(cmd, d, o, false)
	cmd.Flags().IntVar(&step, "step", 0, "undo only this step (its number, from 1)")
	cmd.Flags().BoolVar(&force, "force", false, "put back what the run replaced even where the target changed since")
	return cmd
}

func newCmdRunbookResume(d *Deps) *cobra.Command {
	o := &runbookOptions{}
	cmd := &cobra.Command{
		Use:   "resume RUN-ID",
		Short: "Go on with an interrupted or failed run, without redoing finished steps",
		Long: `Resume a run that was interrupted (Ctrl-C, a crash, a lost terminal) or
failed: the journal says which steps finished; they are not run again, and
their results are read back for the steps that refer to them. The runbook
and parameters are the ones the run started with (the journal keeps them).

` + runbookExitCodes,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			records, err := journal.Read(d.journalPath())
			if err != nil {
				return err
			}
			r, err := newRunbookEngine(d, o)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = r.Resume(cmd.Context(), records, args[0])
			return err
		},
	}
	addRunbookFlags(cmd, d, o, false)
	return cmd
}
