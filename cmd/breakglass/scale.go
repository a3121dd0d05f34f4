package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdScale(d, nil) }) }

type scaleOptions struct {
	Resource  string
	Ref       string
	Namespace string
	Replicas  int32
	Force     bool
}

func newCmdScale(d *Deps, runF func(*scaleOptions) error) *cobra.Command {
	o := &scaleOptions{}
	cmd := &cobra.Command{
		Use:   "scale deployment|statefulset|replicaset NAMESPACE/NAME --replicas N",
		Short: "Set the replicas of a Deployment, StatefulSet or ReplicaSet in etcd",
		Long: `Scale changes spec.replicas directly in etcd, as the API server would: a
compare-and-swap transaction on the object's ModRevision, in the encoding and
API version it is stored in, with metadata.generation bumped. If the object
changes between the read and the write, the change is re-applied onto the new
value (a few times, then it gives up, exit 4). The previous value is journaled before
the write, so that "breakglass undo CHANGE-ID" can put it back.

The API server sees the change through its watch on etcd; the controllers act
on it when they run.

--dry-run prints the diff without writing. Without --yes, it asks first, and
writes exactly what was shown: if the object changed while the question was
open, it is planned again from the new value and the new diff is asked about.
Workloads of the control plane or cluster DNS in kube-system are refused
without --force.

Exit codes: 0 ok, 1 error, 2 usage, 4 refused, 130 cancelled.`,
		Example: `  breakglass scale deployment shop/web --replicas 0 --dry-run
  breakglass scale deploy shop/web --replicas 0 --yes
  breakglass scale statefulset monitoring/prometheus --replicas 1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Resource, o.Ref = args[0], args[1]
			if !cmd.Flags().Changed("replicas") {
				return usagef("--replicas is required")
			}
			if o.Replicas < 0 {
				return usagef("--replicas %d: must not be negative", o.Replicas)
			}
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runScale(cmd.Context(), d, o)
		},
	}
	cmd.Flags().Int32Var(&o.Replicas, "replicas", 0, "the new number of replicas")
	cmd.Flags().BoolVar(&o.Force, "force", false, "scale a control-plane or cluster-DNS workload in kube-system too")
	cmd.Flags().StringVarP(&o.Namespace, "namespace", "n", "", "namespace, when NAME has none")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func runScale(ctx context.Context, d *Deps, o *scaleOptions) error {
	l := etcd.NewLayout("")
	r, err := l.Lookup(o.Resource)
	if err != nil {
		return usagef("%v", err)
	}
	switch r.GroupResource() {
	case "deployments.apps", "statefulsets.apps", "replicasets.apps":
	default:
		return usagef("cannot scale %s: only deployments, statefulsets and replicasets", r.GroupResource())
	}
	ns, name, err := objectRef(r, o.Ref, o.Namespace)
	if err != nil {
		return err
	}
	_, err = runChange(ctx, d, func(k *change.Etcd) change.Planner {
		return steps.Scale(k, steps.Object{Resource: r, Namespace: ns, Name: name}, o.Replicas, o.Force)
	})
	return err
}
