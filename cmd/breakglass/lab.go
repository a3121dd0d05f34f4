package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/lab"
)

func init() { register(newCmdLab) }

type labOptions struct {
	Dir      string
	Workers  int
	SSHHosts int
	Standby  bool
	Subnet   string
	CacheDir string
}

func newCmdLab(d *Deps) *cobra.Command {
	opts := &labOptions{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run the rehearsal lab: a real small Kubernetes cluster on this machine",
		Long: `The rehearsal lab is a real Kubernetes cluster on one Linux machine: a
control-plane host cp-1 (etcd, kube-apiserver, controller-manager, scheduler)
and worker hosts, each in its own network and mount namespace with its own
OpenSSH sshd, containerd and kubelet. It needs root. See docs/lab.md.`,
	}
	cmd.PersistentFlags().StringVar(&opts.Dir, "dir", ".lab", "lab `directory` (holds lab.json, the inventory, keys and logs)")
	cmd.AddCommand(newCmdLabUp(d, opts), newCmdLabDown(d, opts), newCmdLabStatus(d, opts),
		newCmdLabIncident(d, opts), newCmdLabBuild(d, opts), newCmdLabSupervise())
	return cmd
}

// The lab's entry points, as variables so that tests of the command line
// can never bring a lab up or tear one down: lab down removes every lab on
// the machine, whatever --dir says, and a test may run beside a live lab.
var (
	labUp       = lab.Up
	labDown     = lab.Down
	labDownPlan = lab.DownPlan
)

func newCmdLabUp(d *Deps, opts *labOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Bring the lab up",
		Long: `Bring the lab up: build the Kubernetes binaries from the Go module proxy
(cached under ~/.cache/breakglass), create the hosts, start the control plane
and the workers, and wait until every worker is Ready. Writes lab.json and a
ready breakglass.yaml inventory into the lab directory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := bringLabUp(cmd.Context(), d, opts)
			if err != nil {
				return err
			}
			return printLabSummary(d, l.State)
		},
	}
	cmd.Flags().IntVar(&opts.Workers, "workers", 3, "number of worker hosts")
	cmd.Flags().IntVar(&opts.SSHHosts, "ssh-hosts", 0, "number of extra hosts that run only sshd (role ssh), for fan-out benchmarks")
	cmd.Flags().BoolVar(&opts.Standby, "standby", true, "add the standby control-plane host cp-2 (a kubelet and containerd, no API server: for apiserver add)")
	cmd.Flags().StringVar(&opts.Subnet, "subnet", "10.77.0.0/24", "IPv4 `prefix` of the lab bridge")
	cmd.Flags().StringVar(&opts.CacheDir, "cache-dir", lab.DefaultCacheDir(), "where built binaries are kept between runs")
	return cmd
}

// bringLabUp is lab up (and rehearse, when no lab is up): progress on
// stderr. Options left zero take lab up's defaults.
func bringLabUp(ctx context.Context, d *Deps, opts *labOptions) (*lab.Lab, error) {
	l, err := labUp(ctx, lab.Options{
		Dir: opts.Dir, Workers: opts.Workers, SSHHosts: opts.SSHHosts, NoStandby: !opts.Standby, Subnet: opts.Subnet,
		CacheDir: opts.CacheDir, Log: d.ErrOut,
	})
	if err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	return l, nil
}

func printLabSummary(d *Deps, s *lab.State) error {
	if d.Global.Output == "json" {
		return printJSON(d.Out, struct {
			Type string `json:"type"`
			*lab.State
		}{"lab", s})
	}
	p := newPrinter(d.Out, "table")
	var rows [][]string
	for _, h := range s.Hosts {
		rows = append(rows, []string{h.Name, fmt.Sprint(h.Roles), h.Address, h.Netns})
	}
	if err := p.Table([]string{"HOST", "ROLES", "ADDRESS", "NETNS"}, rows); err != nil {
		return err
	}
	fmt.Fprintf(d.Out, "\napiserver:  %s\nkubeconfig: %s (oncall user: %s)\ninventory:  %s\nkubectl:    %s\n",
		s.APIServer, s.Kubeconfig, s.OncallKubeconfig, s.Inventory, s.Binaries.Kubectl)
	return nil
}

func newCmdLabDown(d *Deps, opts *labOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the lab and everything it made",
		Long: `Remove every process, namespace, mount, bridge, cgroup and file the lab
made. It works from what it finds on the machine, so it also cleans up after
a crashed lab up. Safe to run when no lab is up.

With --dry-run it lists what it would remove (on stdout; -o json prints one
labDownPlan line) and removes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if d.Global.DryRun {
				plan, err := labDownPlan(cmd.Context(), opts.Dir)
				if err != nil {
					return err
				}
				return printLabDownPlan(d, plan)
			}
			if err := labDown(cmd.Context(), opts.Dir, d.ErrOut); err != nil {
				return err
			}
			fmt.Fprintln(d.ErrOut, "lab: down, nothing left behind")
			return nil
		},
	}
}

// labDownPlanWire is lab down --dry-run -o json.
type labDownPlanWire struct {
	Type   string   `json:"type"`
	DryRun bool     `json:"dryRun"`
	Remove []string `json:"remove"`
}

func printLabDownPlan(d *Deps, plan []string) error {
	if d.Global.Output == "json" {
		if plan == nil {
			plan = []string{}
		}
		return printJSON(d.Out, labDownPlanWire{Type: "labDownPlan", DryRun: true, Remove: plan})
	}
	if len(plan) == 0 {
		fmt.Fprintln(d.Out, "lab down would remove nothing: no lab here (dry run)")
		return nil
	}
	fmt.Fprintln(d.Out, "lab down would remove:")
	for _, p := range plan {
		fmt.Fprintf(d.Out, "  %s\n", p)
	}
	fmt.Fprintln(d.Out, "(dry run, nothing removed)")
	return nil
}

func newCmdLabSupervise() *cobra.Command {
	return &cobra.Command{
		Use:    "supervise SPEC",
		Short:  "Run a lab component and restart it when it exits or its spec changes (internal)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := os.Stat(args[0]); err != nil {
				return err
			}
			return lab.SuperviseMain(args[0])
		},
	}
}
