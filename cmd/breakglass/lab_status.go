package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/lab"
)

func newCmdLabStatus(d *Deps, opts *labOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the lab's hosts, components and nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			l, err := lab.Open(opts.Dir)
			if err != nil {
				return err
			}
			st := l.Status(cmd.Context())
			if d.Global.Output == "json" {
				return printJSON(d.Out, struct {
					Type string `json:"type"`
					lab.Status
				}{"labStatus", st})
			}
			var rows [][]string
			for _, h := range st.Hosts {
				rows = append(rows, []string{h.Name, strings.Join(h.Roles, ","), h.Address, h.SSH, h.Node, h.ComponentList()})
			}
			if err := newPrinter(d.Out, "table").Table([]string{"HOST", "ROLES", "ADDRESS", "SSH", "NODE", "COMPONENTS"}, rows); err != nil {
				return err
			}
			incidents := "none"
			if len(st.Incidents) > 0 {
				incidents = strings.Join(st.Incidents, ", ")
			}
			fmt.Fprintf(d.Out, "\napiserver: %s (%s)\nincidents: %s\n", l.State.APIServer, st.APIServer, incidents)
			return nil
		},
	}
}

func newCmdLabIncident(d *Deps, opts *labOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "incident overload|preemption|reset",
		Short: "Start one of the incidents breakglass is built to recover",
		Long: `Start an incident in the running lab:

  overload     the December 2024 outage: a telemetry DaemonSet whose pods LIST
               the whole cluster in a loop, on an apiserver with little CPU
               (cp-1's Burstable pods capped, the cap searched from 200m down
               to 16m), until ordinary kubectl requests are slow, time out or
               get 429s. Prints what kubectl saw before and after.
  preemption   the July 2019 cascade: PriorityClasses with a globalDefault make
               a new workload preempt production ingesters, whose replacements
               preempt the next ones, until every original ingester is evicted.
  reset        end every incident: delete their objects, restore the limits.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{lab.IncidentOverload, lab.IncidentPreemption, "reset"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json"); err != nil {
				return err
			}
			l, err := lab.Open(opts.Dir)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			switch args[0] {
			case lab.IncidentOverload:
				res, err := l.Overload(ctx, d.ErrOut)
				if err != nil {
					return fmt.Errorf("incident overload: %w", err)
				}
				return printOverload(d, res)
			case lab.IncidentPreemption:
				res, err := l.Preemption(ctx, d.ErrOut)
				if err != nil {
					return fmt.Errorf("incident preemption: %w", err)
				}
				return printPreemption(d, res)
			case "reset":
				if err := l.Reset(ctx, d.ErrOut); err != nil {
					return fmt.Errorf("incident reset: %w", err)
				}
				fmt.Fprintln(d.ErrOut, "incident: all incidents ended")
				return nil
			}
			return usagef("unknown incident %q: want overload, preemption or reset", args[0])
		},
	}
	return cmd
}

// printOverload prints the overload incident's evidence on stdout (lab
// incident overload, rehearse): a table, or one incidentOverload object.
func printOverload(d *Deps, res *lab.OverloadResult) error {
	if d.Global.Output == "json" {
		return printJSON(d.Out, struct {
			Type string `json:"type"`
			*lab.OverloadResult
		}{"incidentOverload", res})
	}
	fmt.Fprintf(d.Out, "What `kubectl get pods -A` (user oncall) saw, %d requests each:\n\n", res.Before.Requests)
	lab.WriteProbes(d.Out, []lab.Probe{res.Before, res.After})
	fmt.Fprintf(d.Out, "\n%d telemetry agents are LISTing the cluster (containerd on each worker: %s); the apiserver, capped at %dm CPU, is saturated.\n",
		res.TelemetryPods, agentCounts(res.Agents), res.CPUMillis)
	return nil
}

// printPreemption prints the preemption incident's evidence on stdout.
func printPreemption(d *Deps, res *lab.PreemptionResult) error {
	if d.Global.Output == "json" {
		return printJSON(d.Out, struct {
			Type string `json:"type"`
			*lab.PreemptionResult
		}{"incidentPreemption", res})
	}
	fmt.Fprintf(d.Out, "original ingesters preempted: %d of %d\ningesters now running: %d, pending: %d\nPreempted events: %d\n",
		res.Evicted, res.OriginalIngesters, res.Running, res.Pending, res.PreemptedEvents)
	return nil
}

func agentCounts(cs []lab.NodeCount) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		parts = append(parts, fmt.Sprintf("%s %d running", c.Node, c.Running))
	}
	return strings.Join(parts, ", ")
}
