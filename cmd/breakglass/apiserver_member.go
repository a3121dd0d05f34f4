package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

type apiserverMemberOptions struct {
	ssh       sshFlags
	nodes     nodeFlags
	manifest  string
	node      string
	from      string
	advertise string
	backupDir string
	force     bool
	wait      time.Duration
	poll      time.Duration
}

func newCmdAPIServerAdd(d *Deps) *cobra.Command {
	o := &apiserverMemberOptions{}
	cmd := &cobra.Command{
		Use:   "add --node NODE [--from NODE]",
		Short: "Bring an API server up on a standby control-plane host, copied from a healthy one",
		Long: `Add an API server to a kubeadm control plane: on NODE (a host with a kubelet and
containerd, role standby in the inventory), from the manifest of a
control-plane node whose API server runs from it (--from, default the first
control-plane node whose API server answers /livez and /readyz, else the
first where one runs: a saturated one is a good source).

The plan reads the source's manifest as a Pod and rewrites it for NODE:
--advertise-address (and any flag that is the source's address), the
probes' host and kubeadm's advertise-address annotation become NODE's
address (--advertise-address, default the inventory's), and etcd servers on
the loopback address (kubeadm's stacked etcd, which NODE does not run)
become the inventory's etcd endpoints. Every file the manifest names under
its hostPath mounts (certificates, keys, the service-account keys) and the
admin kubeconfigs are copied with their modes and owners. When the
source's serving certificate is not valid for NODE's address, a new one is
signed for NODE with the cluster CA (its key read from the source, used in
memory, not copied). Refused when NODE has a manifest already, or one of
those files with other bytes. The contents of the files are never shown
or journaled: the plan and the journal have paths, modes and sha256.

Then: the files are written (each only where there is none), the manifest
last, and breakglass waits (--wait) until NODE's kubelet runs the new API
server and it answers /livez and /readyz on NODE; if it does not, the
manifest and the files are taken away again (exit 3). "breakglass undo
CHANGE-ID" takes the API server away and removes the files it wrote.

` + apiserverExitCodes,
		Example: `  breakglass apiserver add --node cp-2 --dry-run
  breakglass apiserver add --node cp-2 --from cp-1 --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if o.node == "" {
				return usagef("--node is required: the standby host to bring an API server up on")
			}
			if o.advertise != "" {
				if _, err := netip.ParseAddr(o.advertise); err != nil {
					return usagef("--advertise-address %q: want an IP address", o.advertise)
				}
			}
			if o.wait <= 0 {
				return usagef("--wait %s: must be more than 0", o.wait)
			}
			return runAPIServerAdd(cmd.Context(), d, o)
		},
	}
	addMemberFlags(cmd, d, o)
	cmd.Flags().StringVar(&o.from, "from", "", "the control-plane node to copy from (default: the first whose API server answers, else the first where one runs)")
	cmd.Flags().StringVar(&o.advertise, "advertise-address", "", "NODE's address for the API server (default: its inventory address, which must be an IP)")
	return cmd
}

func newCmdAPIServerRemove(d *Deps) *cobra.Command {
	o := &apiserverMemberOptions{}
	cmd := &cobra.Command{
		Use:   "remove --node NODE",
		Short: "Take one API server of a kubeadm control plane away",
		Long: `Take the API server of NODE away: its manifest is moved out of the manifests
directory (to <backup-dir>/<change-id>/, default
/etc/kubernetes/breakglass-backup) so that NODE's kubelet stops it, and
breakglass waits (--wait) until no kube-apiserver runs on NODE. Its PKI and
kubeconfigs stay. Refused (exit 4) when no other control-plane or standby
node's API server answers /livez and /readyz: that would take the last one
away (--force goes ahead). "breakglass undo CHANGE-ID" puts the manifest
back and waits until the API server answers again.

` + apiserverExitCodes,
		Example: `  breakglass apiserver remove --node cp-2 --dry-run`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if o.node == "" {
				return usagef("--node is required: the node whose API server to take away")
			}
			if o.wait <= 0 {
				return usagef("--wait %s: must be more than 0", o.wait)
			}
			return runAPIServerRemove(cmd.Context(), d, o)
		},
	}
	addMemberFlags(cmd, d, o)
	cmd.Flags().BoolVar(&o.force, "force", false, "take it away even when no other API server answers")
	return cmd
}

func addMemberFlags(cmd *cobra.Command, d *Deps, o *apiserverMemberOptions) {
	addSSHFlags(cmd, &o.ssh)
	f := cmd.Flags()
	f.StringVar(&o.node, "node", "", "the node (its name in the inventory)")
	f.StringVar(&o.manifest, "manifest", "", "the API server's manifest on the nodes (default: the inventory's apiserver.manifest, kubeadm's)")
	f.StringVar(&o.backupDir, "backup-dir", "", "where a removed manifest goes on the node (default: breakglass-backup next to the manifests directory)")
	f.DurationVar(&o.wait, "wait", 3*time.Minute, "how long the node's API server may take to come up or to stop")
	f.DurationVar(&o.poll, "poll", 2*time.Second, "how often the node is looked at meanwhile")
	_ = f.MarkHidden("poll")
	addJournalFlag(cmd, d)
}

// memberRun is the hosts and the member kind of apiserver add and remove
// (and of their undo).
type memberRun struct {
	kind  *steps.APIServerMember
	hosts []nodeops.Target
	close func() error
}

func newMemberRun(ctx context.Context, d *Deps, o *apiserverMemberOptions) (*memberRun, error) {
	if o.nodes.source == "" {
		o.nodes.source = "inventory"
	}
	all, err := resolveNodes(ctx, d, &o.nodes)
	if err != nil {
		return nil, err
	}
	env, closeRunner, err := d.nodeEnv(&o.ssh)
	if err != nil {
		return nil, err
	}
	peers := steps.MemberPeers(all, o.node)
	k := env.APIServerMember(peers, o.manifest, o.backupDir)
	k.Wait, k.Poll = o.wait, o.poll
	if err := k.Check(); err != nil {
		closeRunner()
		return nil, usagef("%v", err)
	}
	return &memberRun{kind: k, hosts: peers, close: closeRunner}, nil
}

func (r *memberRun) host(name, flag string) (nodeops.Target, error) {
	t, err := r.kind.Host(name, flag)
	if err != nil {
		return t, usagef("%v", err)
	}
	return t, nil
}

func (r *memberRun) engine(d *Deps) (*change.Engine, *change.Stream) {
	return d.kindEngine(r.kind, func(s change.ItemStarted) string {
		return fmt.Sprintf("%s; waiting up to %s for its API server", s.Item.Summary, r.kind.Wait)
	})
}

func runAPIServerAdd(ctx context.Context, d *Deps, o *apiserverMemberOptions) error {
	r, err := newMemberRun(ctx, d, o)
	if err != nil {
		return err
	}
	defer r.close()
	to, err := r.host(o.node, "--node")
	if err != nil {
		return err
	}
	var from nodeops.Target
	if o.from != "" {
		if from, err = r.host(o.from, "--from"); err != nil {
			return err
		}
	} else if from, err = r.kind.HealthySource(ctx, to.Name); err != nil {
		return err
	}
	if o.advertise == "" {
		if _, err := netip.ParseAddr(to.Address); err != nil {
			return usagef("%s's inventory address %q is not an IP address: pass --advertise-address", to.Name, to.Address)
		}
	}
	e, stream := r.engine(d)
	defer stream.Close()
	_, err = e.Run(ctx, steps.PlanAdd(r.kind, from, to, o.advertise))
	return err
}

func runAPIServerRemove(ctx context.Context, d *Deps, o *apiserverMemberOptions) error {
	r, err := newMemberRun(ctx, d, o)
	if err != nil {
		return err
	}
	defer r.close()
	t, err := r.host(o.node, "--node")
	if err != nil {
		return err
	}
	e, stream := r.engine(d)
	defer stream.Close()
	_, err = e.Run(ctx, steps.PlanRemove(r.kind, t, o.force))
	return err
}
