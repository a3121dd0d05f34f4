package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/runbook"
)

func init() {
	register(func(d *Deps) *cobra.Command { return newCmdRehearse(d, nil) })
	// A dry run still brings the lab up and starts the incident (the lab is
	// the rehearsal's own); the runbook is then planned against it and
	// nothing of it is applied.
	dryRunModes["breakglass rehearse"] = dryRunHonoured
}

// defaultRehearsal is the runbook rehearsed when none is named.
const defaultRehearsal = "apiserver-overload"

// rehearsal is what rehearsing one built-in runbook takes: the lab
// incident it recovers, how to start it, and the runbook parameters that
// name what the incident made in the lab.
type rehearsal struct {
	incident string
	// start starts the incident and prints its evidence as lab incident
	// does; it returns what the parameters need to know of it.
	start func(ctx context.Context, d *Deps, l *lab.Lab) (incidentFacts, error)
	// params are the runbook's parameters for this lab and incident.
	params func(st *lab.State, f incidentFacts) map[string]string
}

// incidentFacts are what a started incident made that a runbook's
// parameters depend on.
type incidentFacts struct {
	// ingesters is how many ingesters the preemption incident started.
	ingesters int
}

// rehearsals maps each built-in runbook to the lab incident it recovers.
// TestRehearsalsCoverBuiltins keeps every built-in in it.
var rehearsals = map[string]rehearsal{
	"apiserver-overload": {
		incident: lab.IncidentOverload,
		start: func(ctx context.Context, d *Deps, l *lab.Lab) (incidentFacts, error) {
			res, err := labOverload(l, ctx, d.ErrOut)
			if err != nil {
				return incidentFacts{}, fmt.Errorf("incident overload: %w", err)
			}
			return incidentFacts{}, printOverload(d, res)
		},
		params: func(st *lab.State, _ incidentFacts) map[string]string {
			// No daemonset: the runbook's diagnose step names the
			// offender, as it must for someone who did not deploy it.
			return map[string]string{
				// The health checks ask as the ordinary user the incident
				// locks out, not as the exempt admin.
				"kubeconfig": st.OncallKubeconfig,
			}
		},
	},
	"priority-preemption-cascade": {
		incident: lab.IncidentPreemption,
		start: func(ctx context.Context, d *Deps, l *lab.Lab) (incidentFacts, error) {
			res, err := labPreemption(l, ctx, d.ErrOut)
			if err != nil {
				return incidentFacts{}, fmt.Errorf("incident preemption: %w", err)
			}
			return incidentFacts{ingesters: res.OriginalIngesters}, printPreemption(d, res)
		},
		params: func(_ *lab.State, f incidentFacts) map[string]string {
			return map[string]string{
				"preemptor":      lab.NewClusterNS + "/new-cluster",
				"victims":        lab.IngesterNamespace,
				"victimSelector": "app=ingester",
				"victimCount":    fmt.Sprint(max(f.ingesters, 1)),
				"timeout":        "5m",
			}
		},
	},
}

// rehearsable lists the runbooks rehearse knows an incident for, as
// "NAME (lab incident INCIDENT)".
func rehearsable() string {
	var out []string
	for name, r := range rehearsals {
		out = append(out, fmt.Sprintf("%s (lab incident %s)", name, r.incident))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// The lab's entry points rehearse uses besides labUp (see lab.go): tests of
// the command line replace them, so that they never touch a live lab.
var (
	labOpen       = lab.Open
	labReset      = (*lab.Lab).Reset
	labOverload   = (*lab.Lab).Overload
	labPreemption = (*lab.Lab).Preemption
	labIsRoot     = func() bool { return os.Geteuid() == 0 }
)

type rehearseOptions struct {
	Runbook string
	Dir     string
	run     runbookOptions
}

func newCmdRehearse(d *Deps, runF func(*rehearseOptions) error) *cobra.Command {
	o := &rehearseOptions{}
	cmd := &cobra.Command{
		Use:   "rehearse [RUNBOOK]",
		Short: "Rehearse a built-in runbook against its incident in the lab",
		Long: `Rehearse a recovery before the real incident: bring the lab up (as lab up
does, unless it is up in --dir), end any incident already running in it
(lab incident reset), start the incident the runbook recovers, and run the
runbook against the lab, exactly as runbook run does:

  apiserver-overload (default)   lab incident overload
  priority-preemption-cascade    lab incident preemption

The runbook's parameters that name what the incident made (the DaemonSet,
the oncall user's kubeconfig, the preemptor and its victims) are filled
in; --param overrides them or sets the others. The run uses the lab's
inventory, etcd and nodes only (lab.json in --dir), whatever --inventory,
BREAKGLASS_INVENTORY or ETCDCTL_* say, so a rehearsal never reaches a real
cluster.

In a terminal (stdin and stdout), without --yes and -o json, the runbook
opens in the TUI, each step's plan asked about. Otherwise progress is
printed as plain lines on stderr (-o json: the incident's evidence and the
run's events as JSON lines on stdout); with no terminal on stdin, --yes is
required (make rehearse passes it then). --dry-run plans every step against
the incident and applies none (the lab and the incident are still
started: they are the rehearsal's own).

At the end it prints how long recovery took (from the runbook's start until
an ordinary user's request was answered within the SLO), every change the
run made with the command that undoes it, the command that writes the
whole timeline (breakglass report RUN-ID), and how to end the rehearsal:
runbook undo RUN-ID, lab incident reset, lab down. It needs root, as the
lab does.

Exit codes: 0 ok, 1 error (the lab or the incident did not start), 2 usage
(a runbook rehearse has no incident for, a bad --param, no terminal and no
--yes), 3 some nodes failed in a step, 4 refused (a step not confirmed, a
safety check), 130 cancelled (resume the run with runbook resume RUN-ID).`,
		Example: `  sudo breakglass rehearse                     # apiserver-overload, in the TUI
  sudo breakglass rehearse priority-preemption-cascade --yes
  sudo breakglass rehearse apiserver-overload --yes -o json --dir /srv/lab
  sudo breakglass rehearse --dry-run`,
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: rehearsableNames(),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Runbook = defaultRehearsal
			if len(args) == 1 {
				o.Runbook = args[0]
			}
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runRehearse(cmd.Context(), d, o)
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", ".lab", "lab `directory` (as the lab commands: holds lab.json; brought up here if it is not up)")
	addSSHFlags(cmd, &o.run.ssh)
	cmd.Flags().StringArrayVar(&o.run.params, "param", nil, "a runbook parameter, `NAME=VALUE` (repeatable; overrides what the lab fills in)")
	addJournalFlag(cmd, d)
	return cmd
}

func rehearsableNames() []string {
	var out []string
	for name := range rehearsals {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// rehearsalFor opens the runbook and its rehearsal: a usage error (exit
// 2) when it is not a built-in, or one with no lab incident.
func rehearsalFor(name string) (*runbook.Runbook, rehearsal, error) {
	rb, err := openRunbook(name)
	if err != nil {
		return nil, rehearsal{}, err
	}
	r, ok := rehearsals[strings.TrimPrefix(rb.Source, runbook.BuiltinPrefix)]
	if !ok || !strings.HasPrefix(rb.Source, runbook.BuiltinPrefix) {
		return nil, rehearsal{}, usagef("runbook %s (%s) has no lab incident to rehearse it against\nhint: rehearse one of: %s; or start an incident with breakglass lab incident and run the runbook with breakglass runbook run", rb.Name, rb.Source, rehearsable())
	}
	return rb, r, nil
}

// rehearsalParams are the lab's parameters for the runbook with the
// operator's --param on top.
func rehearsalParams(r rehearsal, st *lab.State, f incidentFacts, given map[string]string) map[string]string {
	params := r.params(st, f)
	for k, v := range given {
		params[k] = v
	}
	return params
}

func runRehearse(ctx context.Context, d *Deps, o *rehearseOptions) error {
	// Everything that can be refused is refused before the lab is touched:
	// bringing it up and starting an incident take minutes.
	rb, r, err := rehearsalFor(o.Runbook)
	if err != nil {
		return err
	}
	given, err := o.run.paramMap()
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	// The parameters are checked with what the lab will fill in (paths in
	// dir, an incident's counts at zero): an unknown or mistyped --param is
	// a usage error now, not after the incident started.
	if _, err := rb.ResolveParams(rehearsalParams(r, prospectiveState(dir), incidentFacts{}, given)); err != nil {
		return &usageError{err}
	}
	if !d.Global.Yes && !d.Global.DryRun && !d.InIsTTY {
		return usagef("rehearse %s: stdin is not a terminal, so nobody can confirm the runbook's steps\nhint: pass --yes to run them unattended (or --dry-run to plan them only)", rb.Name)
	}
	if !labIsRoot() {
		return fmt.Errorf("rehearse needs root: the lab uses network and mount namespaces and cgroups\nhint: run it as root, e.g. sudo breakglass rehearse")
	}

	l, err := rehearsalLab(ctx, d, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.ErrOut, "rehearse: starting lab incident %s in %s\n", r.incident, l.State.Dir)
	facts, err := r.start(ctx, d, l)
	if err != nil {
		if !strings.Contains(err.Error(), "hint:") {
			err = fmt.Errorf("%w\nhint: see %s/logs; end what it started with breakglass lab incident reset --dir %s", err, l.State.Dir, l.State.Dir)
		}
		return err
	}

	// The lab's inventory and etcd, and nothing else: flags win over
	// ETCDCTL_* and the inventory (etcd_deps.go), so a stray ETCDCTL_ENDPOINTS
	// cannot point a rehearsal at a real cluster.
	st := l.State
	d.Global.Inventory, d.Global.InventoryExplicit = st.Inventory, true
	d.EtcdFlags.Endpoints, d.EtcdFlags.CACert, d.EtcdFlags.Cert, d.EtcdFlags.Key = st.Etcd.Endpoints, st.Etcd.CACert, st.Etcd.Cert, st.Etcd.Key
	d.EtcdFlags.Prefix = ""
	params := rehearsalParams(r, st, facts, given)
	fmt.Fprintf(d.ErrOut, "rehearse: running runbook %s against the lab (inventory %s)\n", rb.Name, st.Inventory)
	run, runErr := runRunbook(ctx, d, &o.run, rb, params)
	summary := rehearsalSummary(d, rb, r, st, run, runErr)
	if err := printRehearsal(d, summary); err != nil && runErr == nil {
		return err
	}
	return runErr
}

// prospectiveState is the lab state lab up writes in dir, as far as the
// rehearsals' parameters use it: for checking them before the lab is up.
func prospectiveState(dir string) *lab.State {
	return &lab.State{Dir: dir, Inventory: filepath.Join(dir, "breakglass.yaml"), OncallKubeconfig: filepath.Join(dir, "oncall.kubeconfig")}
}

// rehearsalLab brings the lab in dir up through lab up's own code, or, when
// it is up, ends the incidents running in it.
func rehearsalLab(ctx context.Context, d *Deps, dir string) (*lab.Lab, error) {
	if _, err := os.Stat(filepath.Join(dir, lab.StateFile)); os.IsNotExist(err) {
		fmt.Fprintf(d.ErrOut, "rehearse: no lab in %s: bringing it up (breakglass lab up --dir %s)\n", dir, dir)
		return bringLabUp(ctx, d, &labOptions{Dir: dir})
	}
	l, err := labOpen(dir)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.ErrOut, "rehearse: the lab is up in %s; ending any incident in it (breakglass lab incident reset)\n", l.State.Dir)
	if err := labReset(l, ctx, d.ErrOut); err != nil {
		return nil, fmt.Errorf("incident reset: %w\nhint: if the lab is not running any more (breakglass lab status --dir %s), remove it with breakglass lab down --dir %s and rehearse again", err, dir, dir)
	}
	return l, nil
}

// rehearsalWire is rehearse -o json's last line (docs/json-output.md).
type rehearsalWire struct {
	Type     string `json:"type"` // rehearsal
	Runbook  string `json:"runbook"`
	Incident string `json:"incident"`
	Lab      string `json:"lab"`
	RunID    string `json:"runId,omitempty"`
	// Status is the run's end (runFinished.status), "not started" when it
	// did not start.
	Status string `json:"status"`
	DryRun bool   `json:"dryRun,omitempty"`
	// RecoveryMS is the time from the runbook's start to the first
	// passing apiserver check: absent when none passed.
	RecoveryMS int64                 `json:"recoveryMs,omitempty"`
	Changes    []rehearsalChangeWire `json:"changes"`
	Report     string                `json:"report,omitempty"`
	// End are the commands that end the rehearsal, in order.
	End []string `json:"end"`
}

type rehearsalChangeWire struct {
	Step    int    `json:"step"`
	StepID  string `json:"stepId"`
	ID      string `json:"id"`
	Summary string `json:"summary,omitempty"`
	Undo    string `json:"undo"`
}

// rehearsalSummary says what the rehearsal did: the recovery time from the
// run itself, the changes (and their undo commands) from the journal, as
// breakglass report reads them.
func rehearsalSummary(d *Deps, rb *runbook.Runbook, r rehearsal, st *lab.State, run *runbook.Run, runErr error) rehearsalWire {
	w := rehearsalWire{Type: "rehearsal", Runbook: rb.Name, Incident: r.incident, Lab: st.Dir, Status: "not started", DryRun: d.Global.DryRun, Changes: []rehearsalChangeWire{}}
	dirFlag := " --dir " + st.Dir
	// The commands below reach the lab as the run did.
	invFlag := " --inventory " + st.Inventory
	jflag := ""
	if d.EtcdFlags.Journal != "" {
		jflag = " --journal " + d.EtcdFlags.Journal
	}
	endIncident := []string{"breakglass lab incident reset" + dirFlag, "breakglass lab down" + dirFlag}
	w.End = endIncident
	if run == nil {
		return w
	}
	w.Status = "ok"
	if runErr != nil {
		w.Status = "failed"
	}
	w.RecoveryMS = ms(run.Healthy())
	if d.Global.DryRun {
		w.Status = "planned"
		return w
	}
	w.RunID = run.ID
	w.Report = "breakglass report " + run.ID + jflag
	w.End = append([]string{"breakglass runbook undo " + run.ID + jflag + invFlag}, endIncident...)
	records, err := journal.Read(d.journalPath())
	if err != nil {
		return w
	}
	rep, err := runbook.BuildReport(records, run.ID, runbook.ReportOptions{Journal: d.EtcdFlags.Journal})
	if err != nil {
		return w
	}
	if rep.Status != "" {
		w.Status = rep.Status
	}
	for _, s := range rep.Steps {
		for _, c := range s.Changes {
			undo := c.Undo
			// An undo command (not the reason there is none) needs the
			// lab's inventory, as the run had it.
			if strings.HasPrefix(undo, "breakglass ") {
				undo += invFlag
			}
			var sums []string
			for _, t := range c.Targets {
				if t.Summary != "" {
					sums = append(sums, t.Summary)
				}
			}
			w.Changes = append(w.Changes, rehearsalChangeWire{Step: s.Index, StepID: s.ID, ID: c.ID, Summary: strings.Join(sums, "; "), Undo: undo})
		}
	}
	return w
}

// printRehearsal prints the summary: one rehearsal line with -o json,
// otherwise lines for a person, on stdout.
func printRehearsal(d *Deps, w rehearsalWire) error {
	if d.Global.Output == "json" {
		return printJSON(d.Out, w)
	}
	out := d.Out
	fmt.Fprintf(out, "\nrehearsal of %s against lab incident %s (%s): %s\n", w.Runbook, w.Incident, w.Lab, w.Status)
	switch {
	case w.Status == "not started":
		fmt.Fprintln(out, "  the runbook did not start (see the error below)")
	case w.DryRun:
		fmt.Fprintln(out, "  dry run: every step was planned against the incident, nothing was changed")
	case w.RecoveryMS > 0:
		fmt.Fprintf(out, "  recovery: an ordinary user was answered within the SLO %s after the runbook started\n", shortDuration(time.Duration(w.RecoveryMS)*time.Millisecond))
	default:
		fmt.Fprintln(out, "  recovery: not measured: no apiserver check held during the run")
	}
	if w.RunID != "" {
		if len(w.Changes) == 0 {
			fmt.Fprintf(out, "  changes: none journaled for run %s\n", w.RunID)
		} else {
			fmt.Fprintf(out, "  changes (run %s):\n", w.RunID)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "    STEP\tCHANGE\tWHAT\tUNDO")
			for _, c := range w.Changes {
				fmt.Fprintf(tw, "    %d %s\t%s\t%s\t%s\n", c.Step, c.StepID, c.ID, dash(firstLineOf(c.Summary)), c.Undo)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		fmt.Fprintf(out, "  the whole timeline, for the postmortem: %s\n", w.Report)
	}
	fmt.Fprintln(out, "  to end the rehearsal:")
	for i, c := range w.End {
		fmt.Fprintf(out, "    %s%s\n", c, endNote(w, i))
	}
	return nil
}

// endNote says what each command that ends the rehearsal does.
func endNote(w rehearsalWire, i int) string {
	if w.RunID == "" {
		i++ // no undo command
	}
	switch i {
	case 0:
		return "   # put back what the run changed, the last step first"
	case 1:
		return "   # end the incident"
	case 2:
		return "   # remove the lab"
	}
	return ""
}
