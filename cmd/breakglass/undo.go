package main

import (
	"context"

	"github.com/spf13/cobra"

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
	e, _, stream, err := d.changeEngine(ctx)
	if err != nil {
		return err
	}
	defer stream.Close()
	_, err = e.Undo(ctx, recs, o.ID, o.Force)
	return err
}
