package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

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
	// ShowStorage prints the storage view: key, encoding, revision and size
	// with each object (type-tagged lines with -o json|yaml, more columns in
	// tables).
	ShowStorage bool
	// ShowSecrets prints Secret data as stored instead of REDACTED.
	ShowSecrets bool
	// ShowManagedFields keeps metadata.managedFields, which kubectl hides.
	ShowManagedFields bool
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
cannot be decoded (encrypted at rest, corrupt) are reported per key on
stderr, and the listing goes on.

resourceVersion is the key's ModRevision, as the API server reports it.

Output: -o table (default), wide, name, json or yaml. json and yaml print
what kubectl get prints: the object when one NAME is given, else one List
of all the objects, so jq, yq and kubectl apply -f - work on it; if a value
could not be decoded it is missing from that output, and get exits 1 at the
end. As kubectl does, every output leaves metadata.managedFields out unless
--show-managed-fields.

--show-storage adds where each object is stored (key, encoding,
ModRevision, size): with json and yaml, one {"type":"object"} or
{"type":"error"} line or document per key instead (see docs/etcd.md); with
tables, REVISION, BYTES, ENCODING and KEY columns.

Secret data and stringData values, and a Secret's
kubectl.kubernetes.io/last-applied-configuration annotation, are printed as
REDACTED in every output; --show-secrets prints them as stored (base64),
with a warning on stderr.

Exit codes: 0 ok, 1 error (also: a value could not be decoded, with -o json
or yaml without --show-storage), 2 usage, 130 cancelled.`,
		Example: `  breakglass get nodes
  breakglass get ds -A
  breakglass get pods -A --field-selector spec.nodeName=node-7
  breakglass get pods,deployments -n kube-system -l k8s-app=kube-dns
  breakglass get priorityclasses -o json
  breakglass get deployment web -n shop -o json | jq .spec.replicas
  breakglass get deployment web -n shop -o yaml
  breakglass get secrets -A -o json --show-storage`,
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
			if o.ShowStorage && d.Global.Output == "name" {
				return usagef("--show-storage does not apply to -o name")
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
	f.BoolVar(&o.ShowStorage, "show-storage", false, "show each object's etcd key, encoding, revision and size (type-tagged lines with -o json|yaml)")
	f.BoolVar(&o.ShowSecrets, "show-secrets", false, "print Secret data as stored instead of REDACTED")
	f.BoolVar(&o.ShowManagedFields, "show-managed-fields", false, "keep metadata.managedFields in -o json|yaml (left out by default, as kubectl does)")
	addEtcdFlags(cmd, d)
	return cmd
}

// objectWire is one object in the storage view (-o json|yaml --show-storage):
// the object with where and how it is stored.
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

// decodeErrorWire is a value that could not be decoded (storage view).
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
		if o.ShowSecrets && r.Group == "" && r.Kind == "Secret" {
			fmt.Fprintln(d.ErrOut, "breakglass: warning: --show-secrets prints Secret data as stored (base64 is not encryption); keep this output out of logs and tickets")
		}
	}
	consistency := etcd.Serializable
	if o.Consistent {
		consistency = etcd.Linearizable
	}
	p := newPrinter(d.Out, d.Global.Output)
	// kp prints kubectl's shape; the storage view goes through p instead.
	var kp *kubePrinter
	if !p.Text() && !o.ShowStorage {
		kp = &kubePrinter{w: d.Out, yaml: d.Global.Output == "yaml", single: len(o.Names) == 1}
	}
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
		header := etcd.Columns(r, wide)
		var extra []string
		if o.ShowStorage {
			extra = missingColumns(header, storageColumns)
			header = append(header, extra...)
		}
		var rows [][]string
		emit := func(obj *etcd.Object) error {
			// Before any printer sees it.
			o.scrub(obj)
			if obj.Err != nil {
				undecodable++
				switch {
				case !sel.Empty() && (p.Text() || kp != nil):
					// With a selector, an undecodable value may or may not
					// match: say so on stderr rather than list it as a match.
					fmt.Fprintf(d.ErrOut, "breakglass: %v (cannot tell whether it matches the selector)\n", obj.Err)
					return nil
				case kp != nil:
					// kubectl's shape has no place for it.
					fmt.Fprintf(d.ErrOut, "breakglass: %v\n", obj.Err)
					return nil
				}
			}
			switch {
			case d.Global.Output == "name":
				_, err := fmt.Fprintln(d.Out, r.NameRef(obj.Name))
				return err
			case kp != nil:
				if obj.Decoded.Partial {
					fmt.Fprintf(d.ErrOut, "breakglass: %s: only apiVersion, kind and metadata are shown (%s is not in the client-go scheme)\n", obj.Key, obj.Decoded.GVK.Kind)
				}
				return kp.Print(obj.Decoded.Object)
			case !p.Text():
				return p.Object(wireOf(obj))
			}
			if obj.Err != nil {
				fmt.Fprintf(d.ErrOut, "breakglass: %v\n", obj.Err)
			}
			row := etcd.Row(obj, wide, now)
			for _, c := range extra {
				row = append(row, storageCell(c, obj))
			}
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
	// A listing that failed above leaves its List unclosed on purpose: cut
	// JSON must not pass for a complete one.
	if kp != nil {
		if err := kp.Close(); err != nil {
			return err
		}
		if undecodable > 0 {
			return fmt.Errorf("%d value(s) could not be decoded and are missing from the output (reported above)\nhint: --show-storage prints them as {\"type\":\"error\"} lines with their keys and encodings", undecodable)
		}
	}
	if undecodable > 0 && p.Text() {
		fmt.Fprintf(d.ErrOut, "%d value(s) could not be decoded (shown above)\n", undecodable)
	}
	return nil
}

// scrub makes a decoded object fit for every printer: Secret values
// redacted unless --show-secrets, managedFields dropped unless
// --show-managed-fields (kubectl hides them too). A Secret that cannot be
// redacted becomes an undecodable value rather than be printed.
func (o *getOptions) scrub(obj *etcd.Object) {
	if obj.Decoded == nil {
		return
	}
	if !o.ShowSecrets {
		red, err := redactSecret(obj.Decoded.Object)
		if err != nil {
			obj.Decoded, obj.Err = nil, fmt.Errorf("%s: %w", obj.Key, err)
			return
		}
		obj.Decoded.Object = red
	}
	if !o.ShowManagedFields {
		if m, err := meta.Accessor(obj.Decoded.Object); err == nil {
			m.SetManagedFields(nil)
		}
	}
}

// redacted replaces each Secret value get would print.
const redacted = "REDACTED"

// redactSecret returns obj with each value of a Secret's data and stringData
// replaced by REDACTED (the keys stay: the operator sees which exist), and
// its last-applied-configuration annotation, which holds the same data, too.
// Other objects are returned as they are; obj itself is never changed.
// get calls it before any printer sees an object, so that no printer, now
// or later, can leak a Secret.
//
// A typed Secret comes back unstructured: its data is []byte, which JSON
// would print as the base64 of "REDACTED".
func redactSecret(obj runtime.Object) (runtime.Object, error) {
	_, typed := obj.(*corev1.Secret)
	if !typed && obj.GetObjectKind().GroupVersionKind().GroupKind() != (schema.GroupKind{Kind: "Secret"}) {
		return obj, nil
	}
	var u *unstructured.Unstructured
	switch x := obj.(type) {
	case *metav1.PartialObjectMetadata:
		// Metadata only (tables): no data, but the annotation.
		x = x.DeepCopy()
		redactLastApplied(x)
		return x, nil
	case *unstructured.Unstructured:
		u = x.DeepCopy()
	default:
		b, err := json.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("redact secret: %w", err)
		}
		u = &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("redact secret: %w", err)
		}
	}
	for _, field := range []string{"data", "stringData"} {
		if m, ok := u.Object[field].(map[string]any); ok {
			for k := range m {
				m[k] = redacted
			}
		}
	}
	redactLastApplied(u)
	return u, nil
}

func redactLastApplied(m metav1.Object) {
	a := m.GetAnnotations()
	if _, ok := a[corev1.LastAppliedConfigAnnotation]; !ok {
		return
	}
	c := maps.Clone(a)
	c[corev1.LastAppliedConfigAnnotation] = redacted
	m.SetAnnotations(c)
}

// storageColumns are what --show-storage adds to a table (wide has REVISION
// and BYTES already for most resources).
var storageColumns = []string{"REVISION", "BYTES", "ENCODING", "KEY"}

func missingColumns(header, cols []string) []string {
	var out []string
	for _, c := range cols {
		if !slices.Contains(header, c) {
			out = append(out, c)
		}
	}
	return out
}

func storageCell(col string, o *etcd.Object) string {
	switch col {
	case "REVISION":
		return strconv.FormatInt(o.ModRevision, 10)
	case "BYTES":
		return strconv.Itoa(o.Size)
	case "KEY":
		return o.Key
	}
	if o.Decoded != nil {
		return string(o.Decoded.Encoding)
	}
	var de *etcd.DecodeError
	if errors.As(o.Err, &de) {
		return string(de.Encoding)
	}
	return "<unknown>"
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
