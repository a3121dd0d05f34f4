package main

import (
	"context"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/nodeops/sshclient"
)

// Deps carries what commands share: the streams, a clock, the global options
// and lazy constructors, so that a command dials only what it uses and tests
// can inject fakes or lab endpoints.
type Deps struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer

	InIsTTY, OutIsTTY, ErrIsTTY bool

	Now func() time.Time

	// Global holds the values of the global flags once they are parsed.
	Global GlobalOptions

	// LoadInventory loads the inventory named by Global.Inventory. Tests
	// replace it. Use Inventory(), which caches the result.
	LoadInventory func(path string, explicit bool) (*inventory.Inventory, error)

	invOnce sync.Once
	inv     *inventory.Inventory
	invErr  error

	// nodeops (issue 4)
	// NewRunner builds the SSH runner a command uses to reach nodes (default
	// sshclient.New); tests replace it with a fake or lab endpoints.
	NewRunner func(opts sshclient.Options) (NodeRunner, error)
	// NodeSource, if set, lists the cluster's Node objects without the API
	// server (from etcd), to complete the inventory (--nodes-source etcd).
	NodeSource func(ctx context.Context) (nodeops.NodeSource, error)

	// etcd (issue 3)
	// EtcdFlags are the connection and journal flags of the etcd commands.
	EtcdFlags EtcdFlags
	// OpenEtcd connects to etcd (etcd.Open when nil); tests point it
	// elsewhere. Use Etcd(), which resolves the settings and caches the store.
	OpenEtcd func(ctx context.Context, cfg etcd.Config) (*etcd.Store, error)
	// EtcdTunnel returns a dialer through SSH to a control-plane node, for
	// the inventory's etcd.tunnel (wired by nodeops; nil: no tunnel support).
	EtcdTunnel func(ctx context.Context, inv *inventory.Inventory, node string) (etcd.DialFunc, error)
	etcdOnce   sync.Once
	etcdStore  *etcd.Store
	etcdErr    error
}

// GlobalOptions are the flags every command shares.
type GlobalOptions struct {
	Inventory         string
	InventoryExplicit bool // set by --inventory or BREAKGLASS_INVENTORY
	Output            string
	DryRun            bool
	Yes               bool
	Concurrency       int
	Timeout           time.Duration
	Verbose           int
}

func newDeps() *Deps {
	return &Deps{
		In:            os.Stdin,
		Out:           os.Stdout,
		ErrOut:        os.Stderr,
		InIsTTY:       term.IsTerminal(int(os.Stdin.Fd())),
		OutIsTTY:      term.IsTerminal(int(os.Stdout.Fd())),
		ErrIsTTY:      term.IsTerminal(int(os.Stderr.Fd())),
		Now:           time.Now,
		LoadInventory: loadInventory,
		EtcdTunnel:    sshEtcdTunnel,
	}
}

// Inventory returns the inventory, loading it on first use.
func (d *Deps) Inventory() (*inventory.Inventory, error) {
	d.invOnce.Do(func() {
		d.inv, d.invErr = d.LoadInventory(d.Global.Inventory, d.Global.InventoryExplicit)
	})
	return d.inv, d.invErr
}

// loadInventory reads the inventory file. A missing default file is an empty
// inventory (etcd can still come from ETCDCTL_* or flags); a missing file that
// the user named is an error.
func loadInventory(path string, explicit bool) (*inventory.Inventory, error) {
	if !explicit {
		if _, err := os.Stat(path); os.IsNotExist(err) {
			return inventory.Empty(), nil
		}
	}
	return inventory.Load(path)
}

// defaultConcurrency sizes fan-out to the machine and the file descriptor
// limit: SSH is mostly waiting, so many connections per core are fine, but
// each needs a descriptor.
func defaultConcurrency() int {
	n := 256 * runtime.NumCPU()
	if lim := fdLimit(); lim > 0 && uint64(n) > lim/2 {
		n = int(lim / 2)
	}
	if n < 1 {
		n = 1
	}
	return n
}
