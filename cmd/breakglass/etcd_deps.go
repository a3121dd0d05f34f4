package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/recover/journal"
)

// EtcdFlags are the flags of the commands that use etcd. Flags override the
// ETCDCTL_* environment, which overrides the inventory, which overrides
// kubeadm's default paths.
type EtcdFlags struct {
	Endpoints  []string
	CACert     string
	Cert       string
	Key        string
	Prefix     string
	Consistent bool
	Journal    string
}

// addEtcdFlags adds the connection flags to an etcd command.
func addEtcdFlags(cmd *cobra.Command, d *Deps) {
	f := cmd.Flags()
	e := &d.EtcdFlags
	f.StringSliceVar(&e.Endpoints, "endpoints", nil, "etcd endpoints, comma-separated (env ETCDCTL_ENDPOINTS, inventory etcd.endpoints)")
	f.StringVar(&e.CACert, "cacert", "", "CA `file` of etcd's serving certificate (env ETCDCTL_CACERT)")
	f.StringVar(&e.Cert, "cert", "", "client certificate `file` (env ETCDCTL_CERT)")
	f.StringVar(&e.Key, "key", "", "client key `file` (env ETCDCTL_KEY)")
	f.StringVar(&e.Prefix, "etcd-prefix", "", "the API server's --etcd-prefix (default /registry; OpenShift: /kubernetes.io)")
}

// addJournalFlag adds --journal to a command that writes.
func addJournalFlag(cmd *cobra.Command, d *Deps) {
	cmd.Flags().StringVar(&d.EtcdFlags.Journal, "journal", "", "journal `file` (default $XDG_STATE_HOME/breakglass/journal.jsonl)")
}

// etcdConfig resolves the connection settings: flags, then ETCDCTL_*, then
// the inventory, then kubeadm's defaults when run on a control-plane node.
func (d *Deps) etcdConfig(ctx context.Context) (etcd.Config, error) {
	f := d.EtcdFlags
	cfg := etcd.Config{Endpoints: f.Endpoints, CACert: f.CACert, Cert: f.Cert, Key: f.Key, Prefix: f.Prefix, CallTimeout: d.Global.Timeout}
	if len(f.Endpoints) > 0 {
		cfg.EndpointsFrom = etcd.OriginFlags
		cfg.Source = "flags"
	}
	cfg = cfg.Merge(etcd.ConfigFromEnv(os.Getenv))
	inv, err := d.Inventory()
	if err != nil {
		return cfg, err
	}
	ie := inv.Etcd
	fromInv := etcd.Config{Endpoints: ie.Endpoints, CACert: ie.CACert, Cert: ie.Cert, Key: ie.Key, Prefix: ie.Prefix, DialTimeout: ie.DialTimeout.Duration}
	if len(ie.Endpoints) > 0 {
		fromInv.EndpointsFrom = etcd.OriginInventory
		fromInv.Source = "inventory " + inv.Path
	}
	cfg = cfg.Merge(fromInv)
	if len(cfg.Endpoints) == 0 {
		if k, ok := etcd.KubeadmDefaults(); ok {
			cfg = cfg.Merge(k)
		}
	}
	// The tunnel applies exactly when the endpoints are the inventory's own:
	// --endpoints and ETCDCTL_ENDPOINTS name endpoints reachable from here.
	// Certificates from flags or ETCDCTL_* do not change where etcd is, so
	// they do not turn the tunnel off (see tunnelNotUsed for the other case).
	if ie.Tunnel != "" && cfg.EndpointsFrom == etcd.OriginInventory {
		dial, err := d.etcdTunnel(ctx, inv, ie.Tunnel)
		if err != nil {
			return cfg, err
		}
		cfg.Dial = dial
		cfg.Source += " through SSH to " + ie.Tunnel
	}
	return cfg, nil
}

// tunnelNotUsed explains, when the inventory names an etcd.tunnel that cfg
// does not use, why not and what to do; "" otherwise. Endpoints from
// --endpoints or ETCDCTL_ENDPOINTS win over the inventory on purpose (an
// operator on the control-plane node, or with a port-forward of their own),
// but an ETCDCTL_ENDPOINTS left over in the shell is easy to miss, so the
// note goes into -v output and into the hint of a failed connection.
func tunnelNotUsed(inv *inventory.Inventory, cfg etcd.Config) string {
	if inv == nil || inv.Etcd.Tunnel == "" || cfg.Dial != nil {
		return ""
	}
	t := inv.Etcd.Tunnel
	switch cfg.EndpointsFrom {
	case etcd.OriginFlags:
		return fmt.Sprintf("the inventory's etcd.tunnel %s was not used: --endpoints are dialled directly from here; drop --endpoints to reach the inventory's endpoints through SSH to %s", t, t)
	case etcd.OriginEnv:
		return fmt.Sprintf("the inventory's etcd.tunnel %s was not used: ETCDCTL_ENDPOINTS is set, and its endpoints are dialled directly from here; unset ETCDCTL_ENDPOINTS to reach the inventory's endpoints through SSH to %s", t, t)
	case etcd.OriginInventory:
		return ""
	}
	return fmt.Sprintf("the inventory's etcd.tunnel %s was not used: it carries the inventory's etcd.endpoints, and the inventory has none; add them (e.g. [https://127.0.0.1:2379])", t)
}

func (d *Deps) etcdTunnel(ctx context.Context, inv *inventory.Inventory, node string) (etcd.DialFunc, error) {
	if d.EtcdTunnel == nil {
		return nil, fmt.Errorf("inventory %s: etcd.tunnel %q: this build cannot tunnel to etcd over SSH\nhint: pass --endpoints reachable from here, or run breakglass on the control-plane node", inv.Path, node)
	}
	dial, err := d.EtcdTunnel(ctx, inv, node)
	if err != nil {
		return nil, fmt.Errorf("etcd tunnel through %s: %w", node, err)
	}
	return dial, nil
}

// Etcd connects to etcd on first use and returns the store.
func (d *Deps) Etcd(ctx context.Context) (*etcd.Store, error) {
	d.etcdOnce.Do(func() {
		cfg, err := d.etcdConfig(ctx)
		if err != nil {
			d.etcdErr = err
			return
		}
		inv, _ := d.Inventory() // etcdConfig returned its error
		note := tunnelNotUsed(inv, cfg)
		if d.Global.Verbose > 0 {
			fmt.Fprintf(d.ErrOut, "etcd: %s (from %s), prefix %s\n", strings.Join(cfg.Endpoints, ","), cfg.Source, etcd.NewLayout(cfg.Prefix).Prefix)
			if note != "" {
				fmt.Fprintf(d.ErrOut, "etcd: note: %s\n", note)
			}
		}
		open := d.OpenEtcd
		if open == nil {
			open = etcd.Open
		}
		d.etcdStore, d.etcdErr = open(ctx, cfg)
		if d.etcdErr != nil && note != "" {
			d.etcdErr = fmt.Errorf("%w\nhint: %s", d.etcdErr, note)
		}
	})
	return d.etcdStore, d.etcdErr
}

// openJournal opens the journal named by --journal or the default one.
func (d *Deps) openJournal() (*journal.Journal, error) {
	path := d.EtcdFlags.Journal
	if path == "" {
		path = journal.DefaultPath()
	}
	return journal.Open(path, d.Now)
}

// journalPath is the journal file undo reads.
func (d *Deps) journalPath() string {
	if d.EtcdFlags.Journal != "" {
		return d.EtcdFlags.Journal
	}
	return journal.DefaultPath()
}

// objectRef parses NS/NAME (or NAME for a cluster-scoped resource, or NAME
// with -n NS).
func objectRef(r etcd.Resource, arg, namespace string) (ns, name string, err error) {
	if a, b, ok := strings.Cut(arg, "/"); ok {
		if !r.Namespaced {
			return "", "", usagef("%s is cluster-scoped: give NAME, not %s", r.GroupResource(), arg)
		}
		if a == "" || b == "" || strings.Contains(b, "/") {
			return "", "", usagef("%q: want NAMESPACE/NAME", arg)
		}
		return a, b, nil
	}
	if r.Namespaced {
		if namespace == "" {
			return "", "", usagef("%s is namespaced: give NAMESPACE/NAME or -n NAMESPACE", r.GroupResource())
		}
		return namespace, arg, nil
	}
	return "", arg, nil
}
