package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

type apiserverScaleOptions struct {
	Object   string
	Replicas int32
	Force    bool
	// Target is --object (or the inventory's apiserver.deployment) parsed;
	// its Resource is unset when only NAMESPACE/NAME was given.
	Target steps.Object
}

func newCmdAPIServerScale(d *Deps, runF func(*apiserverScaleOptions) error) *cobra.Command {
	o := &apiserverScaleOptions{}
	cmd := &cobra.Command{
		Use:   "scale --replicas N [--object [deployment|statefulset/]NAMESPACE/NAME]",
		Short: "Scale a hosted control plane's API server (a Deployment or StatefulSet) through the hosting cluster's etcd",
		Long: `A hosted control plane (HyperShift, Kamaji, Gardener, k0smotron...) runs its
kube-apiserver as a Deployment or StatefulSet in a hosting cluster. Scale
sets its spec.replicas directly in the hosting cluster's etcd, as
"breakglass scale" does: a compare-and-swap on the object's ModRevision, in
the encoding it is stored in, journaled, undone with "breakglass undo
CHANGE-ID".

The API server is --object, else the inventory's apiserver.deployment. With
only NAMESPACE/NAME, a Deployment of that name is looked for first, then a
StatefulSet.

Something usually keeps those replicas: an owner in metadata.ownerReferences
(HostedControlPlane, TenantControlPlane, a k0smotron Cluster), an operator's
labels (HyperShift, Kamaji, Gardener, k0smotron), app.kubernetes.io/managed-by
(Helm...), or a HorizontalPodAutoscaler that targets it. It will put its own
replicas back, so the scale is refused, naming the owner and what to change
instead, unless --force; with --force the plan says so in a note. Scaling to
0 takes the hosted control plane down and is refused without --force too.

--dry-run prints the diff and the notes without writing; without --yes it
asks first and writes exactly what was shown.

Exit codes: 0 ok, 1 error (no such Deployment or StatefulSet), 2 usage (no
--replicas, no API server given), 4 refused (an owner, replicas 0, not
confirmed), 130 cancelled.`,
		Example: `  breakglass apiserver scale --replicas 3 --dry-run                  # the inventory's apiserver.deployment
  breakglass apiserver scale --object clusters-foo/kube-apiserver --replicas 3
  breakglass apiserver scale --object statefulset/k0s/kmc-k1 --replicas 2 --force --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("replicas") {
				return usagef("--replicas is required")
			}
			if o.Replicas < 0 {
				return usagef("--replicas %d: must not be negative", o.Replicas)
			}
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			t, err := apiserverTarget(d, o.Object)
			if err != nil {
				return err
			}
			o.Target = t
			if runF != nil {
				return runF(o)
			}
			return runAPIServerScale(cmd.Context(), d, o)
		},
	}
	f := cmd.Flags()
	f.Int32Var(&o.Replicas, "replicas", 0, "the new number of API server replicas")
	f.StringVar(&o.Object, "object", "", "the API server: `[deployment|statefulset/]NAMESPACE/NAME` (default: the inventory's apiserver.deployment)")
	f.BoolVar(&o.Force, "force", false, "scale it even though an owner will put its replicas back, or to 0")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

// apiserverTarget parses --object, else the inventory's
// apiserver.deployment.
func apiserverTarget(d *Deps, object string) (steps.Object, error) {
	from := "--object"
	if object == "" {
		inv, err := d.Inventory()
		if err != nil {
			return steps.Object{}, err
		}
		object, from = inv.APIServer.Deployment, "the inventory's apiserver.deployment"
	}
	if object == "" {
		return steps.Object{}, usagef("no hosted API server to scale\n" +
			"hint: pass --object [deployment|statefulset/]NAMESPACE/NAME, or set apiserver.deployment: NAMESPACE/NAME in the inventory")
	}
	t, err := steps.ParseHosted(object)
	if err != nil {
		return t, usagef("%s %q: %v", from, object, err)
	}
	return t, nil
}

func runAPIServerScale(ctx context.Context, d *Deps, o *apiserverScaleOptions) error {
	_, err := runChange(ctx, d, func(k *change.Etcd) change.Planner {
		return steps.ScaleAPIServer(k, o.Target, o.Replicas, o.Force)
	})
	return err
}
