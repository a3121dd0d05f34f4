package main

import (
	"context"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdCount(d, nil) }) }

type countOptions struct {
	Resources   []string
	Namespace   string
	KeysOnly    bool
	ByNamespace bool
}

func newCmdCount(d *Deps, runF func(*countOptions) error) *cobra.Command {
	o := &countOptions{}
	cmd := &cobra.Command{
		Use:   "count [RESOURCE[,RESOURCE...]...]",
		Short: "Count objects and their bytes per resource and namespace, from etcd",
		Long: `Count is the census that tells how expensive a LIST has become: for each
resource (all of them when none is given), how many objects etcd holds and how
many bytes their values take, per namespace with --by-namespace. It scans keys
and value sizes at one revision and decodes nothing. --keys-only asks etcd
for the keys alone (cheaper, but no sizes).

Output: -o table (default), json or yaml ({"type":"census"} objects, see
docs/etcd.md).

Exit codes: 0 ok, 1 error, 2 usage, 130 cancelled.`,
		Example: `  breakglass count
  breakglass count pods --by-namespace
  breakglass count pods,events,leases -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				for _, r := range strings.Split(a, ",") {
					if r = strings.TrimSpace(r); r != "" {
						o.Resources = append(o.Resources, r)
					}
				}
			}
			if err := checkOutput(d, "table", "wide", "json", "yaml"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runCount(cmd.Context(), d, o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Namespace, "namespace", "n", "", "count only this namespace")
	f.BoolVar(&o.KeysOnly, "keys-only", false, "fetch keys only (no byte counts)")
	f.BoolVar(&o.ByNamespace, "by-namespace", false, "one row per namespace")
	addEtcdFlags(cmd, d)
	return cmd
}

// censusWire is the JSON output of count.
type censusWire struct {
	Type       string            `json:"type"`
	Resource   string            `json:"resource"`
	Revision   int64             `json:"revision"`
	Objects    int               `json:"objects"`
	Bytes      int64             `json:"bytes"`
	Largest    int               `json:"largest"`
	KeysOnly   bool              `json:"keysOnly,omitempty"`
	Namespaces []namespaceCensus `json:"namespaces,omitempty"`
}

type namespaceCensus struct {
	Namespace string `json:"namespace"`
	Objects   int    `json:"objects"`
	Bytes     int64  `json:"bytes"`
}

func runCount(ctx context.Context, d *Deps, o *countOptions) error {
	s, err := d.Etcd(ctx)
	if err != nil {
		return err
	}
	var census []*etcd.Census
	if len(o.Resources) == 0 && o.Namespace == "" {
		if err := s.LoadCustomResources(ctx); err != nil {
			return err
		}
		if census, err = s.CountAll(ctx, o.KeysOnly); err != nil {
			return err
		}
	} else {
		names := o.Resources
		if len(names) == 0 {
			for _, r := range etcd.Builtins() {
				if r.Namespaced {
					names = append(names, r.GroupResource())
				}
			}
		}
		var rev int64
		for _, n := range names {
			r, err := s.Resolve(ctx, n)
			if err != nil {
				return err
			}
			c, err := s.Count(ctx, r, o.Namespace, o.KeysOnly, rev)
			if err != nil {
				return err
			}
			rev = c.Revision
			if c.Objects > 0 || len(o.Resources) > 0 {
				census = append(census, c)
			}
		}
	}
	p := newPrinter(d.Out, d.Global.Output)
	if !p.Text() {
		for _, c := range census {
			w := censusWire{Type: "census", Resource: c.Resource.GroupResource(), Revision: c.Revision, Objects: c.Objects, Bytes: c.Bytes, Largest: c.Largest, KeysOnly: o.KeysOnly}
			for _, n := range c.Namespaces {
				w.Namespaces = append(w.Namespaces, namespaceCensus(n))
			}
			if err := p.Object(w); err != nil {
				return err
			}
		}
		return nil
	}
	header := []string{"RESOURCE", "OBJECTS", "BYTES", "AVG", "LARGEST"}
	if o.ByNamespace {
		header = []string{"RESOURCE", "NAMESPACE", "OBJECTS", "BYTES", "AVG"}
	}
	var rows [][]string
	var total int64
	var objects int
	for _, c := range census {
		total += c.Bytes
		objects += c.Objects
		if o.ByNamespace && c.Resource.Namespaced {
			for _, n := range c.Namespaces {
				rows = append(rows, []string{c.Resource.GroupResource(), n.Namespace, strconv.Itoa(n.Objects), sizeString(n.Bytes, o.KeysOnly), avgString(n.Bytes, n.Objects, o.KeysOnly)})
			}
			continue
		}
		if o.ByNamespace {
			rows = append(rows, []string{c.Resource.GroupResource(), "", strconv.Itoa(c.Objects), sizeString(c.Bytes, o.KeysOnly), avgString(c.Bytes, c.Objects, o.KeysOnly)})
			continue
		}
		rows = append(rows, []string{c.Resource.GroupResource(), strconv.Itoa(c.Objects), sizeString(c.Bytes, o.KeysOnly), avgString(c.Bytes, c.Objects, o.KeysOnly), sizeString(int64(c.Largest), o.KeysOnly)})
	}
	if len(census) > 1 {
		if o.ByNamespace {
			rows = append(rows, []string{"TOTAL", "", strconv.Itoa(objects), sizeString(total, o.KeysOnly), ""})
		} else {
			rows = append(rows, []string{"TOTAL", strconv.Itoa(objects), sizeString(total, o.KeysOnly), "", ""})
		}
	}
	return p.Table(header, rows)
}

func sizeString(b int64, keysOnly bool) string {
	if keysOnly {
		return "-"
	}
	const unit = 1024
	if b < unit {
		return strconv.FormatInt(b, 10) + "B"
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(b)/float64(div), 'f', 1, 64) + string("KMGTPE"[exp]) + "iB"
}

func avgString(b int64, n int, keysOnly bool) string {
	if n == 0 || keysOnly {
		return "-"
	}
	return sizeString(b/int64(n), false)
}
