package selector

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/inventory"
)

const invYAML = `
nodes:
  - {name: cp1, address: 10.0.0.1, roles: [control-plane]}
  - {name: cp2, address: 10.0.0.2, roles: [control-plane]}
  - {name: web-1, address: 10.0.1.1, labels: {zone: a}}
  - {name: web-2, address: 10.0.1.2, labels: {zone: b}}
`

type fakeSource []nodeops.ClusterNode

func (f fakeSource) ListNodes(context.Context) ([]nodeops.ClusterNode, error) { return f, nil }

func universe(t *testing.T, src nodeops.NodeSource) []nodeops.Target {
	inv, err := inventory.Parse("inv.yaml", []byte(invYAML))
	if err != nil {
		t.Fatal(err)
	}
	u, _, err := Universe(context.Background(), inv, src)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func names(ts []nodeops.Target) string {
	var s []string
	for _, t := range ts {
		s = append(s, t.Name)
	}
	return strings.Join(s, ",")
}

func TestSelect(t *testing.T) {
	u := universe(t, nil)
	for _, tc := range []struct {
		nodes, exclude []string
		want, err      string
	}{
		{want: "cp1,cp2,web-1,web-2"},
		{nodes: []string{"role=control-plane"}, want: "cp1,cp2"},
		{nodes: []string{"web-*"}, want: "web-1,web-2"},
		{nodes: []string{"web-2,cp1"}, want: "cp1,web-2"}, // inventory order
		{nodes: []string{"label=zone=b", "cp2"}, want: "cp2,web-2"},
		{nodes: []string{"web-*"}, exclude: []string{"label=zone=a"}, want: "web-2"},
		{exclude: []string{"role=control-plane"}, want: "web-1,web-2"},
		{nodes: []string{"cp3"}, err: "cp3 matches no node"},
		{nodes: []string{"role=etcd"}, err: "roles: control-plane"},
		{nodes: []string{"zone=a"}, err: "only role= and label="},
		{nodes: []string{"label=zone"}, want: "web-1,web-2"}, // has the label
		{nodes: []string{"label=zone=a b"}, err: "not a label selector"},
		{nodes: []string{"cp1"}, exclude: []string{"cp1"}, err: "matches no node"},
	} {
		got, err := Select(u, Options{Nodes: tc.nodes, Exclude: tc.exclude})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v -%v: error %v, want %q", tc.nodes, tc.exclude, err, tc.err)
			}
			continue
		}
		if err != nil || names(got) != tc.want {
			t.Errorf("%v -%v: %s %v, want %s", tc.nodes, tc.exclude, names(got), err, tc.want)
		}
	}
}

func TestNodesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nodes")
	os.WriteFile(p, []byte("# incident 42\ncp1\nextra 10.9.9.9  # not in the inventory\nweb-*\n"), 0o600)
	got, err := Select(universe(t, nil), Options{NodesFile: p, Exclude: []string{"web-1"}})
	if err != nil || names(got) != "cp1,web-2,extra" {
		t.Fatalf("%s %v", names(got), err)
	}
	if got[2].Address != "10.9.9.9" || got[2].Source != "nodes-file" {
		t.Errorf("extra: %+v", got[2])
	}
	os.WriteFile(p, []byte("cp1\na b c\n"), 0o600)
	if _, err := Select(universe(t, nil), Options{NodesFile: p}); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("bad line: %v", err)
	}
}

func TestUniverseFromCluster(t *testing.T) {
	src := fakeSource{
		{Name: "web-1", InternalIP: "10.0.1.1", Labels: map[string]string{"zone": "x", "pool": "blue"}},
		{Name: "w9", InternalIP: "10.0.2.9", Roles: []string{"worker"}, Labels: map[string]string{"pool": "blue"}},
		{Name: "ghost"},
	}
	inv, _ := inventory.Parse("inv.yaml", []byte(invYAML))
	u, warn, err := Universe(context.Background(), inv, src)
	if err != nil {
		t.Fatal(err)
	}
	if names(u) != "cp1,cp2,web-1,web-2,w9" || len(warn) != 1 {
		t.Fatalf("%s %v", names(u), warn)
	}
	if u[2].Source != "inventory+etcd" || u[2].Labels["zone"] != "a" || u[2].Labels["pool"] != "blue" {
		t.Errorf("merged: %+v", u[2])
	}
	got, err := Select(u, Options{Nodes: []string{"label=pool=blue"}})
	if err != nil || names(got) != "web-1,w9" || got[1].Source != "etcd" || got[1].Address != "10.0.2.9" {
		t.Errorf("%s %v", names(got), err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"a,b", "role=x", "label=k=v", "web-*", "[", ",,", "label=a=b,c!=d,n1", "label=env in (prod,stage)", "label=!canary", "label=(", ")"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := Parse(s)
		if err != nil {
			return
		}
		for _, term := range ts {
			term.Match(nodeops.Target{Name: s})
		}
	})
}
