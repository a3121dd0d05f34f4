// Package selector resolves which nodes a command works on. Every command
// shares its syntax: --nodes takes names, globs, role=ROLE and
// label=SELECTOR (comma separated, repeatable, a union); --nodes-file reads
// the same terms one per line; --exclude removes nodes with the same terms.
// SELECTOR is a label selector exactly as kubectl -l and breakglass get -l
// take it (k8s.io/apimachinery/pkg/labels).
// The nodes come from the inventory, completed from the cluster's Node
// objects (read from etcd) when a nodeops.NodeSource is given.
package selector

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/inventory"
)

// Options are the selection flags.
type Options struct {
	Nodes     []string
	NodesFile string
	Exclude   []string
}

// Term is one selection term.
type Term struct {
	Kind  TermKind
	Value string // name, glob, role, or label selector (KindLabel)
	sel   labels.Selector
	raw   string
}

// TermKind says what a term matches.
type TermKind int

// The kinds of term.
const (
	KindName TermKind = iota
	KindGlob
	KindRole
	KindLabel
)

func (t Term) String() string { return t.raw }

// Parse splits a --nodes value into terms. Commas separate terms, and inside
// a label selector they join requirements (AND), as in kubectl -l: after a
// label= term, each piece that is a requirement (it holds '=' or '(', or
// starts with '!') belongs to that selector, while a name, a glob or role=
// starts a new term. So label=env=prod,tier!=db is one term,
// label=zone=a,cp1 is two, and a bare KEY (label exists) must come first:
// label=tier,env=prod.
func Parse(s string) ([]Term, error) {
	var out []Term
	var label []string // the pieces of the label selector being read
	flush := func() error {
		if label == nil {
			return nil
		}
		t, err := parseTerm(strings.Join(label, ","))
		label = nil
		if err != nil {
			return err
		}
		out = append(out, t)
		return nil
	}
	for _, f := range splitTerms(s) {
		switch {
		case f == "":
			continue
		case label != nil && isRequirement(f):
			label = append(label, f)
			continue
		}
		if err := flush(); err != nil {
			return nil, err
		}
		if strings.HasPrefix(f, "label=") {
			label = []string{f}
			continue
		}
		t, err := parseTerm(f)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// splitTerms splits s at the commas outside parentheses, so that
// "label=env in (prod,stage)" stays one piece, and trims each piece.
func splitTerms(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '(':
			depth++
		case ')':
			depth = max(depth-1, 0)
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}

// isRequirement reports whether a piece after label= continues the label
// selector. No node name holds '=', '(' or a leading '!'; role= keeps its
// meaning.
func isRequirement(f string) bool {
	return !strings.HasPrefix(f, "role=") && !strings.HasPrefix(f, "label=") &&
		(strings.ContainsAny(f, "=(") || strings.HasPrefix(f, "!"))
}

const labelHint = "hint: label= takes a label selector as kubectl -l does: KEY=VALUE, KEY!=VALUE, 'KEY in (A,B)', 'KEY notin (A,B)', KEY (has the label) or '!KEY', joined by commas (all must hold)"

func parseTerm(f string) (Term, error) {
	t := Term{raw: f}
	switch {
	case strings.HasPrefix(f, "role="):
		t.Kind, t.Value = KindRole, strings.TrimPrefix(f, "role=")
		if t.Value == "" {
			return t, fmt.Errorf("%q: want role=ROLE, e.g. role=control-plane", f)
		}
	case strings.HasPrefix(f, "label="):
		text := strings.TrimPrefix(f, "label=")
		if strings.TrimSpace(text) == "" {
			return t, fmt.Errorf("%q: want label=SELECTOR, e.g. label=topology.kubernetes.io/zone=a\n%s", f, labelHint)
		}
		sel, err := labels.Parse(text)
		if err != nil {
			return t, fmt.Errorf("%q: not a label selector: %w\n%s", f, err, labelHint)
		}
		t.Kind, t.Value, t.sel = KindLabel, text, sel
	case strings.Contains(f, "="):
		return t, fmt.Errorf("%q: only role= and label= take a value; a name has no '='\nhint: to match a label write label=%s", f, f)
	case strings.ContainsAny(f, "*?["):
		if _, err := path.Match(f, ""); err != nil {
			return t, fmt.Errorf("%q: bad glob: %w", f, err)
		}
		t.Kind, t.Value = KindGlob, f
	default:
		t.Kind, t.Value = KindName, f
	}
	return t, nil
}

// Match reports whether the term selects n.
func (t Term) Match(n nodeops.Target) bool {
	switch t.Kind {
	case KindName:
		return n.Name == t.Value
	case KindGlob:
		ok, _ := path.Match(t.Value, n.Name)
		return ok
	case KindRole:
		return n.HasRole(t.Value)
	case KindLabel:
		return t.sel.Matches(labels.Set(n.Labels))
	}
	return false
}

// Universe returns every node known: the inventory's, in file order, each
// completed with what the cluster knows of it, then the cluster's nodes that
// the inventory lacks (reached at their InternalIP), sorted by name.
// Warnings name cluster nodes that cannot be reached (no InternalIP).
func Universe(ctx context.Context, inv *inventory.Inventory, src nodeops.NodeSource) (nodes []nodeops.Target, warnings []string, err error) {
	for _, n := range inv.Nodes {
		nodes = append(nodes, nodeops.Target{Name: n.Name, Address: n.Address, Port: n.Port, User: n.User,
			Roles: slices.Clone(n.Roles), Labels: maps.Clone(n.Labels), ContainerdSocket: n.ContainerdSocket, Source: "inventory"})
	}
	if src == nil {
		return nodes, nil, nil
	}
	cluster, err := src.ListNodes(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list nodes from the cluster: %w\nhint: pass --nodes-source=inventory to use the inventory alone", err)
	}
	byName := map[string]int{}
	for i, n := range nodes {
		byName[n.Name] = i
	}
	slices.SortFunc(cluster, func(a, b nodeops.ClusterNode) int { return strings.Compare(a.Name, b.Name) })
	for _, cn := range cluster {
		if i, ok := byName[cn.Name]; ok {
			n := &nodes[i]
			n.Source = "inventory+etcd"
			for _, r := range cn.Roles {
				if !n.HasRole(r) {
					n.Roles = append(n.Roles, r)
				}
			}
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			for k, v := range cn.Labels {
				if _, set := n.Labels[k]; !set { // the inventory wins
					n.Labels[k] = v
				}
			}
			continue
		}
		addr := cn.InternalIP
		if addr == "" {
			addr = cn.Hostname
		}
		if addr == "" {
			warnings = append(warnings, fmt.Sprintf("node %s (from etcd) has no InternalIP or Hostname address: left out", cn.Name))
			continue
		}
		nodes = append(nodes, nodeops.Target{Name: cn.Name, Address: addr, Roles: slices.Clone(cn.Roles),
			Labels: maps.Clone(cn.Labels), Source: "etcd"})
	}
	return nodes, warnings, nil
}

// Select applies the options to the universe. No --nodes and no
// --nodes-file selects every node. A name, glob, role or label that matches
// no node is an error: a typo must not silently shrink the set.
func Select(universe []nodeops.Target, o Options) ([]nodeops.Target, error) {
	var include []Term
	for _, v := range o.Nodes {
		ts, err := Parse(v)
		if err != nil {
			return nil, fmt.Errorf("--nodes %w", err)
		}
		include = append(include, ts...)
	}
	var extra []nodeops.Target
	if o.NodesFile != "" {
		ts, defs, err := readNodesFile(o.NodesFile)
		if err != nil {
			return nil, err
		}
		include = append(include, ts...)
		extra = defs
	}
	var exclude []Term
	for _, v := range o.Exclude {
		ts, err := Parse(v)
		if err != nil {
			return nil, fmt.Errorf("--exclude %w", err)
		}
		exclude = append(exclude, ts...)
	}
	all := append([]nodeops.Target(nil), universe...)
	known := map[string]bool{}
	for _, n := range all {
		known[n.Name] = true
	}
	for _, d := range extra {
		if !known[d.Name] {
			all = append(all, d)
			known[d.Name] = true
		}
		include = append(include, Term{Kind: KindName, Value: d.Name, raw: d.Name})
	}

	var out []nodeops.Target
	for _, t := range append(append([]Term(nil), include...), exclude...) {
		if !slices.ContainsFunc(all, t.Match) {
			return nil, noMatch(t, all)
		}
	}
	for _, n := range all {
		sel := len(include) == 0
		for _, t := range include {
			if t.Match(n) {
				sel = true
				break
			}
		}
		for _, t := range exclude {
			if t.Match(n) {
				sel = false
				break
			}
		}
		if sel {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		if len(all) == 0 {
			return nil, fmt.Errorf("no nodes: the inventory lists none\nhint: add nodes to the inventory, pass --nodes-file, or read them from etcd")
		}
		return nil, fmt.Errorf("the selection matches no node\nhint: breakglass nodes list shows the nodes, their roles and labels")
	}
	return out, nil
}

func noMatch(t Term, all []nodeops.Target) error {
	switch t.Kind {
	case KindRole:
		roles := map[string]bool{}
		for _, n := range all {
			for _, r := range n.Roles {
				roles[r] = true
			}
		}
		return fmt.Errorf("%s matches no node (roles: %s)\nhint: breakglass nodes list shows each node's roles", t, strings.Join(slices.Sorted(maps.Keys(roles)), ", "))
	case KindLabel:
		return fmt.Errorf("%s matches no node\nhint: breakglass nodes list -o wide shows each node's labels", t)
	}
	return fmt.Errorf("%s matches no node\nhint: breakglass nodes list shows the node names", t)
}

// readNodesFile reads terms, one per line ('#' starts a comment). A line
// "NAME ADDRESS" names a node that need not be in the inventory. A label=
// line is one selector, spaces and commas included.
func readNodesFile(p string) ([]Term, []nodeops.Target, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, fmt.Errorf("--nodes-file: %w", err)
	}
	defer f.Close()
	var terms []Term
	var defs []nodeops.Target
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		s := sc.Text()
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = s[:i]
		}
		fields := strings.Fields(s)
		if s = strings.TrimSpace(s); strings.HasPrefix(s, "label=") {
			fields = []string{s}
		}
		switch len(fields) {
		case 0:
			continue
		case 1:
			t, err := parseTerm(fields[0])
			if err != nil {
				return nil, nil, fmt.Errorf("%s:%d: %w", p, line, err)
			}
			terms = append(terms, t)
		case 2:
			if strings.ContainsAny(fields[0], "*?[=") {
				return nil, nil, fmt.Errorf("%s:%d: %q: a node defined by NAME ADDRESS needs a plain name", p, line, fields[0])
			}
			defs = append(defs, nodeops.Target{Name: fields[0], Address: fields[1], Source: "nodes-file"})
		default:
			return nil, nil, fmt.Errorf("%s:%d: want a name, a glob, role=ROLE, label=SELECTOR or NAME ADDRESS", p, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("--nodes-file: %w", err)
	}
	return terms, defs, nil
}
