package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(newCmdPriorityClass) }

func newCmdPriorityClass(d *Deps) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "priorityclass",
		Short: "Neutralise a PriorityClass in etcd (the preemption cascade)",
		Long: `A PriorityClass made globalDefault, or one a new workload runs with, can
make pods preempt production pods in a cascade (July 2019). Through etcd,
with the API down or swamped, neutralise takes that power away.

Exit codes: 0 ok, 1 error, 2 usage, 4 refused, 130 cancelled.`,
	}
	cmd.AddCommand(newCmdPriorityClassNeutralise(d))
	return cmd
}

func newCmdPriorityClassNeutralise(d *Deps) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "neutralise NAME",
		Short: "Set globalDefault false and preemptionPolicy Never on a PriorityClass in etcd",
		Long: `Write the PriorityClass back to etcd with globalDefault false (pods created
without a class no longer get it) and preemptionPolicy Never (pods admitted
with it from now on wait for room instead of preempting). Its value is
kept. Both fields are immutable through the API; in etcd they are written
like any other field, as a compare-and-swap, journaled before it happens,
with --dry-run and confirmation like every write; "breakglass undo ID"
puts the exact bytes back.

Pods that have the class already keep the priority and preemption policy
they were admitted with: stop the preempting workload too (breakglass
scale). The system classes (system-node-critical,
system-cluster-critical) are refused without --force.

Exit codes: 0 ok, 1 error, 2 usage, 4 refused, 130 cancelled.`,
		Example: `  breakglass priorityclass neutralise medium --dry-run
  breakglass priorityclass neutralise medium --yes`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			return runPriorityClassNeutralise(cmd.Context(), d, args[0], force)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "neutralise a system-* class too")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func runPriorityClassNeutralise(ctx context.Context, d *Deps, name string, force bool) error {
	if name == "" {
		return usagef("give the PriorityClass's name")
	}
	e, k, stream, err := d.changeEngine(ctx)
	if err != nil {
		return err
	}
	defer stream.Close()
	_, err = e.Run(ctx, steps.NeutralisePriorityClass(k, name, force))
	return err
}
