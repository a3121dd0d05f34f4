package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/journal"
)

func init() { register(newCmdDaemonSet) }

type daemonSetOptions struct {
	Action    string // pause or resume
	Ref       string
	Namespace string
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
	s, err := d.Etcd(ctx)
	if err != nil {
		return err
	}
	op := "daemonset-" + o.Action
	var pausedBy string
	err = runWrite(ctx, d, fmt.Sprintf("%s daemonset %s/%s", o.Action, ns, name), func(w etcd.WriteOptions) (*etcd.Change, error) {
		w.Op = op
		m := etcd.ResumeDaemonSet()
		if o.Action == "pause" {
			// The real write's ID is in the annotation; a dry run has none.
			id := w.ID
			if id == "" {
				id = "<change-id>"
			}
			m = etcd.PauseDaemonSet(id)
		} else if obj, err := s.GetObject(ctx, r, ns, name, etcd.Linearizable); err == nil && obj.Decoded != nil {
			pausedBy = obj.Decoded.Meta().GetAnnotations()[etcd.PausedByAnnotation]
		}
		return s.Update(ctx, r, ns, name, m, w)
	}, op, "")
	if err != nil || o.Action != "resume" || pausedBy == "" || d.Global.DryRun {
		return err
	}
	checkResume(ctx, d, s, r, ns, name, pausedBy)
	return nil
}

// checkResume compares the resumed spec with the one the journal recorded
// before the pause, and says so if they differ (someone changed the spec
// while the DaemonSet was paused: their change is kept).
func checkResume(ctx context.Context, d *Deps, s *etcd.Store, r etcd.Resource, ns, name, pausedBy string) {
	recs, err := journal.Read(d.journalPath())
	if err != nil {
		return
	}
	intent, _, err := journal.Applied(recs, pausedBy)
	if err != nil || intent.Before == nil || intent.Before.Absent {
		return
	}
	before, err := s.Codec.Decode(intent.Target.Key, intent.Before.Bytes, intent.Before.Revision)
	if err != nil {
		return
	}
	now, err := s.GetObject(ctx, r, ns, name, etcd.Linearizable)
	if err != nil || now.Decoded == nil {
		return
	}
	b, ok1 := before.Object.(*appsv1.DaemonSet)
	a, ok2 := now.Decoded.Object.(*appsv1.DaemonSet)
	if ok1 && ok2 && !equality.Semantic.DeepEqual(a.Spec, b.Spec) {
		fmt.Fprintf(d.ErrOut, "note: the spec differs from the one before pause %s: it was changed while paused (kept)\n", pausedBy)
	}
}
