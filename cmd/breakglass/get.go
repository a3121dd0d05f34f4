package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/etcd"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdGet(d, nil) }) }

type getOptions struct {
	Resources     []string
	Names         []string
	Namespace     string
	AllNamespaces bool
	Selector      string
	FieldSelector string
	ChunkSize     int64
	Consistent    bool
}

func newCmdGet(d *Deps, runF func(*getOptions) error) *cobra.Command {
	o := &getOptions{}
	cmd := &cobra.Command{
		Use:   "get RESOURCE[,RESOURCE...] [NAME...]",
		Short: "List or show Kubernetes objects, read from etcd",
		Long: `Get reads Kubernetes objects directly from etcd, as kubectl get reads them from
the API server: same resource names (pods, po, deployments.apps, custom
resources by plural or plural.group), same selectors, kubectl-like tables.

Listings read large pages pinned to one etcd revision and decode only the
metadata when that is enough (names, ages, label selectors), so that a
listing of a big cluster is cheap for etcd and for breakglass. Values that
cannot be decoded (encrypted at rest, corrupt) are reported per key, on
stderr or as {"type":"error"} objects, and the listing goes on.

resourceVersion is the key's ModRevision, as the API server reports it.

Output: -o table (default), wide, name, json or yaml. JSON prints one
{"type":"object"} line per object (see docs/etcd.md).

Exit codes: 0 ok, 1 error, 2 usage, 130 cancelled.`,
		Example: `  breakglass get nodes
  breakglass get ds -A
  breakglass get pods -A --field-selector spec.nodeName=node-7
  breakglass get pods,deployments -n kube-system -l k8s-app=kube-dns
  breakglass get priorityclasses -o json
  breakglass get deployment web -n shop -o yaml`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, r := range strings.Split(args[0], ",") {
				if r = strings.TrimSpace(r); r != "" {
					o.Resources = append(o.Resources, r)
				}
			}
			o.Names = args[1:]
			if len(o.Resources) == 0 {
				return usagef("no resource given")
			}
			if o.AllNamespaces && cmd.Flags().Changed("namespace") {
				return usagef("-n and -A are exclusive")
			}
			if len(o.Names) > 0 && (o.Selector != "" || o.FieldSelector != "") {
				return usagef("names and selectors are exclusive")
			}
			if len(o.Names) > 0 && len(o.Resources) > 1 {
				return usagef("names need exactly one resource")
			}
			if err := checkOutput(d, "table", "wide", "json", "yaml", "name"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runGet(cmd.Context(), d, o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Namespace, "namespace", "n", "default", "namespace of namespaced resources")
	f.BoolVarP(&o.AllNamespaces, "all-namespaces", "A", false, "all namespaces")
	f.StringVarP(&o.Selector, "selector", "l", "", "label selector (app=web,tier!=db)")
	f.StringVar(&o.FieldSelector, "field-selector", "", "field selector (spec.nodeName=node-1); any field path of the object works")
	f.Int64Var(&o.ChunkSize, "chunk-size", etcd.DefaultPageSize, "keys per etcd page (large pages are cheaper for etcd)")
	f.BoolVar(&o.Consistent, "consistent", false, "linearizable read through the etcd leader (default: serializable, works without quorum)")
	addEtcdFlags(cmd, d)
	return cmd
}

// objectWire is one object in -o json/yaml output.
type objectWire struct {
	Type        string `json:"type"`
	Resource    string `json:"resource"`
	Key         string `json:"key"`
	Encoding    string `json:"encoding"`
	ModRevision int64  `json:"modRevision"`
	Size        int    `json:"size"`
	// Partial is true when only the metadata could be decoded (a protobuf
	// type that is not in the client-go scheme, such as a CRD).
	Partial bool `json:"partial,omitempty"`
	Object  any  `json:"object"`
}

// decodeErrorWire is a value that could not be decoded.
type decodeErrorWire struct {
	Type        string `json:"type"`
	Resource    string `json:"resource"`
	Key         string `json:"key"`
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name"`
	ModRevision int64  `json:"modRevision"`
	Encoding    string `json:"encoding"`
	Provider    string `json:"provider,omitempty"`
	Error       string `json:"error"`
}

func runGet(ctx context.Context, d *Deps, o *getOptions) error {
	s, err := d.Etcd(ctx)
	if err != nil {
		return err
	}
	sel, err := etcd.ParseSelector(o.Selector, o.FieldSelector)
	if err != nil {
		return usagef("%v", err)
	}
	var resources []etcd.Resource
	for _, name := range o.Resources {
		r, err := s.Resolve(ctx, name)
		if err != nil {
			return err
		}
		resources = append(resources, r)
	}
	consistency := etcd.Serializable
	if o.Consistent {
		consistency = etcd.Linearizable
	}
	p := newPrinter(d.Out, d.Global.Output)
	wide := d.Global.Output == "wide"
	now := d.Now()
	var undecodable int
	var rev int64
	for i, r := range resources {
		ns := o.Namespace
		if o.AllNamespaces || !r.Namespaced {
			ns = ""
		}
		showNS := r.Namespaced && o.AllNamespaces
		var header []string
		var rows [][]string
		emit := func(obj *etcd.Object) error {
			if obj.Err != nil {
				undecodable++
				// With a selector, an undecodable value may or may not
				// match: say so on stderr rather than list it as a match.
				if !sel.Empty() && p.Text() {
					fmt.Fprintf(d.ErrOut, "breakglass: %v (cannot tell whether it matches the selector)\n", obj.Err)
					return nil
				}
			}
			switch {
			case d.Global.Output == "name":
				_, err := fmt.Fprintln(d.Out, r.NameRef(obj.Name))
				return err
			case !p.Text():
				return p.Object(wireOf(obj))
			}
			if obj.Err != nil {
				fmt.Fprintf(d.ErrOut, "breakglass: %v\n", obj.Err)
			}
			row := etcd.Row(obj, wide, now)
			if showNS {
				row = append([]string{obj.Namespace}, row...)
			}
			rows = append(rows, row)
			return nil
		}
		if len(o.Names) > 0 {
			for _, name := range o.Names {
				obj, err := s.GetObject(ctx, r, ns, name, consistency)
				if err != nil {
					var nf *etcd.NotFoundError
					if errors.As(err, &nf) {
						return fmt.Errorf("%w\nhint: check the name and -n; breakglass get %s -A lists them all", err, r.Name)
					}
					return err
				}
				if err := emit(obj); err != nil {
					return err
				}
			}
		} else {
			// Decode everything only when a column or a field needs it.
			needObject := sel.NeedsObject() || !p.Text() || (d.Global.Output != "name" && etcd.NeedsObject(r))
			lo := etcd.ListOptions{Namespace: ns, PageSize: o.ChunkSize, Consistency: consistency, Revision: rev,
				MetadataOnly: !needObject}
			if !sel.Empty() {
				// A metadata pass first pays off only when labels can rule
				// most objects out before the full decode.
				if !sel.Labels.Empty() || !sel.NeedsObject() {
					lo.MetaFilter = sel.MatchMeta
				}
				if sel.NeedsObject() {
					lo.Filter = sel.MatchObject
				}
			}
			st, err := s.List(ctx, r, lo, emit)
			if err != nil {
				return err
			}
			// Several resources are read at the same revision.
			rev = st.Revision
			if d.Global.Verbose > 0 {
				fmt.Fprintf(d.ErrOut, "%s: %d keys, %d bytes, %d pages at revision %d, %d returned\n", r.GroupResource(), st.Keys, st.Bytes, st.Pages, st.Revision, st.Returned)
			}
		}
		if p.Text() && d.Global.Output != "name" {
			if len(rows) == 0 {
				if len(resources) == 1 {
					where := ""
					if r.Namespaced && ns != "" {
						where = " in " + ns + " namespace"
					}
					fmt.Fprintf(d.ErrOut, "No %s found%s.\n", r.Name, where)
				}
				continue
			}
			header = etcd.Columns(r, wide)
			if showNS {
				header = append([]string{"NAMESPACE"}, header...)
			}
			if len(resources) > 1 {
				for _, row := range rows {
					row[boolIndex(showNS)] = r.NameRef(row[boolIndex(showNS)])
				}
				if i > 0 {
					fmt.Fprintln(d.Out)
				}
			}
			if err := p.Table(header, rows); err != nil {
				return err
			}
		}
	}
	if undecodable > 0 && p.Text() {
		fmt.Fprintf(d.ErrOut, "%d value(s) could not be decoded (shown above)\n", undecodable)
	}
	return nil
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

func wireOf(o *etcd.Object) any {
	if o.Err != nil {
		w := decodeErrorWire{Type: "error", Resource: o.Resource.GroupResource(), Key: o.Key, Namespace: o.Namespace, Name: o.Name,
			ModRevision: o.ModRevision, Error: o.Err.Error()}
		var de *etcd.DecodeError
		if errors.As(o.Err, &de) {
			w.Encoding, w.Provider = string(de.Encoding), de.Provider
		}
		return w
	}
	return objectWire{Type: "object", Resource: o.Resource.GroupResource(), Key: o.Key, Encoding: string(o.Decoded.Encoding),
		ModRevision: o.ModRevision, Size: o.Size, Partial: o.Decoded.Partial, Object: o.Decoded.Object}
}
