package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/journal"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdUndo(d, nil) }) }

type undoOptions struct {
	ID    string
	Force bool
}

func newCmdUndo(d *Deps, runF func(*undoOptions) error) *cobra.Command {
	o := &undoOptions{}
	cmd := &cobra.Command{
		Use:   "undo CHANGE-ID",
		Short: "Put back the exact value an etcd change replaced",
		Long: `Undo reads the change from the journal and restores, byte for byte, the value
it replaced: it recreates a deleted object, deletes a created one, and puts
back the previous bytes of an updated one. It refuses if the object changed
since the change (a controller updated its status, someone edited it), unless
--force. The undo is itself a journaled compare-and-swap write, and can be
undone in turn.

Exit codes: 0 ok, 1 error, 2 usage, 4 refused, 130 cancelled.`,
		Example: `  breakglass undo 20250301T101500-3fa2c1 --dry-run
  breakglass undo 20250301T101500-3fa2c1 --yes
  breakglass undo 20250301T101500-3fa2c1 --force --journal ./incident.jsonl`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ID = args[0]
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runUndo(cmd.Context(), d, o)
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "restore even if the object changed since the change")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func runUndo(ctx context.Context, d *Deps, o *undoOptions) error {
	recs, err := journal.Read(d.journalPath())
	if err != nil {
		return err
	}
	intent, _, err := journal.Applied(recs, o.ID)
	if err != nil {
		return err
	}
	s, err := d.Etcd(ctx)
	if err != nil {
		return err
	}
	var j *journal.Journal
	return runWrite(ctx, d, fmt.Sprintf("undo change %s (%s %s)", o.ID, intent.Op, intent.Target.Key), func(w etcd.WriteOptions) (*etcd.Change, error) {
		if !w.DryRun && j == nil {
			// runWrite opened the journal for this write; Undo records
			// through its own etcd journal so that the records say what
			// they undo.
			var err error
			if j, err = d.openJournal(); err != nil {
				return nil, err
			}
		}
		return journal.Undo(ctx, s, j, recs, journal.UndoOptions{ID: o.ID, NewID: w.ID, Force: o.Force, DryRun: w.DryRun})
	}, "undo", o.ID)
}
