package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdDelete(d, nil) }) }

type deleteOptions struct {
	Resource  string
	Ref       string
	Namespace string
	Force     bool
}

func newCmdDelete(d *Deps, runF func(*deleteOptions) error) *cobra.Command {
	o := &deleteOptions{}
	cmd := &cobra.Command{
		Use:   "delete RESOURCE NAMESPACE/NAME",
		Short: "Delete one object's key from etcd",
		Long: `Delete removes one object's key from etcd with a compare-and-swap on its
ModRevision, after journaling its exact value so that "breakglass undo
CHANGE-ID" can recreate it byte for byte.

This is not the API server's graceful delete: finalizers do not run,
dependents are not garbage-collected until the garbage collector notices,
and a pod's containers keep running until its kubelet learns the pod is gone.
Use it for objects whose presence is the incident (a FlowSchema, a webhook
configuration, a runaway DaemonSet). Secrets are refused. These are refused
without --force, because deleting them makes an incident worse: Namespaces,
CustomResourceDefinitions, mirror pods of static pods, the apiserver's
mandatory FlowSchemas and PriorityLevelConfigurations (exempt, catch-all),
and kube-system workloads of the control plane or cluster DNS.

Exit codes: 0 ok, 1 error, 2 usage, 4 refused, 130 cancelled.`,
		Example: `  breakglass delete flowschema bad-schema --dry-run
  breakglass delete validatingwebhookconfiguration broken-webhook --yes
  breakglass delete deployment shop/web`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Resource, o.Ref = args[0], args[1]
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runDelete(cmd.Context(), d, o)
		},
	}
	cmd.Flags().StringVarP(&o.Namespace, "namespace", "n", "", "namespace, when NAME has none")
	cmd.Flags().BoolVar(&o.Force, "force", false, "delete a protected object too (see the list above)")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func runDelete(ctx context.Context, d *Deps, o *deleteOptions) error {
	s, err := d.Etcd(ctx)
	if err != nil {
		return err
	}
	r, err := s.Resolve(ctx, o.Resource)
	if err != nil {
		return err
	}
	ns, name, err := objectRef(r, o.Ref, o.Namespace)
	if err != nil {
		return err
	}
	_, err = runChange(ctx, d, func(k *change.Etcd) change.Planner {
		return steps.Delete(k, steps.Object{Resource: r, Namespace: ns, Name: name}, o.Force)
	})
	return err
}
