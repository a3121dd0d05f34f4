package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/runbook"
)

func init() {
	register(newCmdReport)
	dryRunModes["breakglass report"] = dryRunReadOnly
}

type reportOptions struct {
	runID string
}

func newCmdReport(d *Deps) *cobra.Command {
	o := &reportOptions{}
	cmd := &cobra.Command{
		Use:   "report RUN-ID",
		Short: "Write the incident timeline of a runbook run from the journal, as Markdown for the postmortem",
		Long: `Read a runbook run from the journal and write its incident timeline as
Markdown on stdout: the runbook and its parameters, the operator, when it
started and ended and how, when it was resumed or undone, every step with
its status and what it observed (its results: a diagnosis's suspect, a
check's detail), every change with who made it, when, where (the node or
the etcd key), what it did, and the exact command that undoes it, and the
time to recovery (when an apiserver check first held). It reads the
journal only: etcd and the nodes are not contacted. The values changes
replaced are not printed.

-o json (or yaml) prints the same as one "report" object
(docs/json-output.md).

Exit codes: 0 ok, 1 error (the run is not in the journal, the journal
cannot be read), 2 usage.`,
		Example: `  breakglass report rb-20261203T073012-1a2b3c > postmortem-timeline.md
  breakglass report rb-20261203T073012-1a2b3c --journal /var/lib/breakglass/journal.jsonl -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			o.runID = args[0]
			return runReport(d, o)
		},
	}
	addJournalFlag(cmd, d)
	return cmd
}

func runReport(d *Deps, o *reportOptions) error {
	records, err := journal.Read(d.journalPath())
	if err != nil {
		return err
	}
	r, err := runbook.BuildReport(records, o.runID, runbook.ReportOptions{Journal: d.EtcdFlags.Journal})
	if err != nil {
		return err
	}
	p := newPrinter(d.Out, d.Global.Output)
	if p.Text() {
		return r.Markdown(d.Out)
	}
	return p.Object(reportToWire(r))
}

// The wire structs of report -o json (type "report").
type reportWire struct {
	Type     string            `json:"type"` // report
	RunID    string            `json:"runId"`
	Runbook  string            `json:"runbook"`
	Source   string            `json:"source"`
	Params   map[string]string `json:"params"`
	Operator string            `json:"operator"`
	Started  time.Time         `json:"started"`
	Ended    *time.Time        `json:"ended,omitempty"`
	// Status is the run's end (ok, failed, rolled-back), or interrupted.
	Status    string     `json:"status"`
	Error     string     `json:"error,omitempty"`
	HealthyAt *time.Time `json:"healthyAt,omitempty"`
	// HealthyMS is the time to recovery: from the start to HealthyAt.
	HealthyMS   int64             `json:"healthyMs,omitempty"`
	HealthyStep int               `json:"healthyStep,omitempty"`
	Resumes     []reportEventWire `json:"resumes,omitempty"`
	Undos       []reportUndoWire  `json:"undos,omitempty"`
	Steps       []reportStepWire  `json:"steps"`
	Undo        string            `json:"undo"`
}

type reportEventWire struct {
	Time     time.Time `json:"time"`
	Operator string    `json:"operator"`
}

type reportUndoWire struct {
	Time     time.Time `json:"time"`
	Operator string    `json:"operator"`
	Step     int       `json:"step,omitempty"`
}

type reportStepWire struct {
	Step      int                 `json:"step"`
	ID        string              `json:"id"`
	Kind      string              `json:"stepType"`
	Title     string              `json:"title"`
	Status    string              `json:"status,omitempty"`
	Error     string              `json:"error,omitempty"`
	Started   *time.Time          `json:"started,omitempty"`
	Finished  *time.Time          `json:"finished,omitempty"`
	SkippedBy string              `json:"skippedBy,omitempty"`
	Result    map[string]string   `json:"result,omitempty"`
	Outcomes  []reportOutcomeWire `json:"outcomes,omitempty"`
	Changes   []reportChangeWire  `json:"changes,omitempty"`
}

type reportOutcomeWire struct {
	Finished time.Time `json:"finished"`
	Status   string    `json:"status"`
	Error    string    `json:"error,omitempty"`
	Operator string    `json:"operator"`
}

type reportChangeWire struct {
	ID       string             `json:"id"`
	Op       string             `json:"op,omitempty"`
	Undo     string             `json:"undo"`
	UndoneBy []string           `json:"undoneBy,omitempty"`
	Targets  []reportTargetWire `json:"targets"`
}

type reportTargetWire struct {
	Time     time.Time `json:"time"`
	Operator string    `json:"operator"`
	Where    string    `json:"where"`
	Kind     string    `json:"kind"`
	Summary  string    `json:"summary"`
	Status   string    `json:"status"`
	Error    string    `json:"error,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func reportToWire(r *runbook.Report) reportWire {
	w := reportWire{Type: "report", RunID: r.RunID, Runbook: r.Runbook, Source: r.Source, Params: r.Params, Operator: r.Operator,
		Started: r.Started.UTC(), Ended: timePtr(r.Ended), Status: r.Status, Error: r.Error, HealthyAt: timePtr(r.HealthyAt),
		HealthyMS: ms(r.TimeToRecovery()), HealthyStep: r.HealthyStep, Undo: r.Undo, Steps: []reportStepWire{}}
	for _, e := range r.Resumes {
		w.Resumes = append(w.Resumes, reportEventWire{Time: e.Time.UTC(), Operator: e.Operator})
	}
	for _, u := range r.Undos {
		w.Undos = append(w.Undos, reportUndoWire{Time: u.Time.UTC(), Operator: u.Operator, Step: u.Step})
	}
	for _, s := range r.Steps {
		sw := reportStepWire{Step: s.Index, ID: s.ID, Kind: s.Type, Title: s.Title, Status: s.Status, Error: s.Error,
			Started: timePtr(s.Started), Finished: timePtr(s.Finished), SkippedBy: s.SkippedBy, Result: s.Result}
		for _, o := range s.Outcomes {
			sw.Outcomes = append(sw.Outcomes, reportOutcomeWire{Finished: o.Finished.UTC(), Status: o.Status, Error: o.Error, Operator: o.Operator})
		}
		for _, c := range s.Changes {
			cw := reportChangeWire{ID: c.ID, Op: c.Op, Undo: c.Undo, UndoneBy: c.UndoneBy, Targets: []reportTargetWire{}}
			for _, t := range c.Targets {
				cw.Targets = append(cw.Targets, reportTargetWire{Time: t.Time.UTC(), Operator: t.Operator, Where: t.Where, Kind: t.Kind,
					Summary: t.Summary, Status: t.Status, Error: t.Error})
			}
			sw.Changes = append(sw.Changes, cw)
		}
		w.Steps = append(w.Steps, sw)
	}
	return w
}
