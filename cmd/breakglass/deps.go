package main

import (
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/breakglass/breakglass/nodeops/inventory"
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
