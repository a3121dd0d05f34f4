package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(newCmdDaemonSet) }

type daemonSetOptions struct {
	Action    string // pause or resume
	Ref       string
	Namespace string
	Force     bool
}

func newCmdDaemonSet(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemonset",
		Short: "Pause or resume a DaemonSet in etcd",
		Long: `Pause pins a DaemonSet's pod template to a node selector no node matches
(` + etcd.PauseLabel + `=true), so that the DaemonSet controller removes its pods
from every node when it runs. Resume removes that selector again, which gives
back the exact previous spec. Both are compare-and-swap writes, journaled
before they happen, with --dry-run and confirmation like every write.

Exit codes: 0 ok, 1 error, 2 usage, 4 refused, 130 cancelled.`,
	}
	cmd.AddCommand(newCmdDaemonSetAction(d, "pause", nil), newCmdDaemonSetAction(d, "resume", nil))
	return cmd
}

func newCmdDaemonSetAction(d *Deps, action string, runF func(*daemonSetOptions) error) *cobra.Command {
	o := &daemonSetOptions{Action: action}
	short := "Remove a DaemonSet's pods from every node (node selector no node matches)"
	if action == "resume" {
		short = "Undo daemonset pause: restore the DaemonSet's previous node selector"
	}
	cmd := &cobra.Command{
		Use:     action + " NAMESPACE/NAME",
		Short:   short,
		Example: fmt.Sprintf("  breakglass daemonset %s kube-system/noisy-agent --dry-run\n  breakglass daemonset %s kube-system/noisy-agent --yes", action, action),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Ref = args[0]
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runDaemonSet(cmd.Context(), d, o)
		},
	}
	cmd.Flags().StringVarP(&o.Namespace, "namespace", "n", "", "namespace, when NAME has none")
	if action == "pause" {
		cmd.Flags().BoolVar(&o.Force, "force", false, "pause a control-plane or cluster-DNS DaemonSet in kube-system too")
	}
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func runDaemonSet(ctx context.Context, d *Deps, o *daemonSetOptions) error {
	r, _ := etcd.NewLayout("").Lookup("daemonsets")
	ns, name, err := objectRef(r, o.Ref, o.Namespace)
	if err != nil {
		return err
	}
	e, k, stream, err := d.changeEngine(ctx)
	if err != nil {
		return err
	}
	defer stream.Close()
	obj := steps.Object{Resource: r, Namespace: ns, Name: name}
	if o.Action == "pause" {
		_, err := e.Run(ctx, steps.PauseDaemonSet(k, obj, o.Force))
		return err
	}
	// The journal says whether the spec changed while paused; a journal
	// that cannot be read only loses that note.
	recs, _ := journal.Read(d.journalPath())
	_, err = e.Run(ctx, steps.ResumeDaemonSet(k, obj, recs))
	return err
}
