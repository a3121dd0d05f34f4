package selector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/nodeops"
)

// labelled is a universe for label selectors: kubectl's syntax, as get -l
// takes it, must select the same nodes here.
var labelled = []nodeops.Target{
	{Name: "n1", Labels: map[string]string{"a": "b", "c": "d", "env": "prod", "tier": "web"}},
	{Name: "n2", Labels: map[string]string{"a": "b", "c": "e", "env": "stage", "canary": "true"}},
	{Name: "n3", Labels: map[string]string{"a": "x", "env": "dev"}},
	{Name: "n4"},
}

func TestLabelSelectorTerms(t *testing.T) {
	for _, tc := range []struct {
		nodes, exclude []string
		want, err      string
	}{
		{nodes: []string{"label=a=b"}, want: "n1,n2"},
		{nodes: []string{"label=a==b"}, want: "n1,n2"},
		{nodes: []string{"label=a=b,c!=d"}, want: "n2"}, // one selector: both hold
		{nodes: []string{"label=c!=d"}, want: "n2,n3,n4"},
		{nodes: []string{"label=env in (prod,stage)"}, want: "n1,n2"},
		{nodes: []string{"label=env notin (prod,stage)"}, want: "n3,n4"},
		{nodes: []string{"label=!canary"}, want: "n1,n3,n4"},
		{nodes: []string{"label=tier"}, want: "n1"},
		{nodes: []string{"label=tier,env=prod"}, want: "n1"},
		{nodes: []string{"label=a=b,!canary,env in (prod, stage)"}, want: "n1"},
		// Names, globs and role= after a selector are terms of their own
		// (a union), as before label= took selectors.
		{nodes: []string{"label=a=x,n4"}, want: "n3,n4"},
		{nodes: []string{"label=env in (prod,stage),n4"}, want: "n1,n2,n4"},
		{nodes: []string{"n4,label=a=x"}, want: "n3,n4"},
		{nodes: []string{"label=a=b,label=a=x"}, want: "n1,n2,n3"},
		{nodes: []string{"n*"}, exclude: []string{"label=a=b,c=e"}, want: "n1,n3,n4"},

		{nodes: []string{"label="}, err: `--nodes "label=": want label=SELECTOR`},
		{nodes: []string{"label=env in prod"}, err: `--nodes "label=env in prod": not a label selector`},
		{nodes: []string{"label=a b"}, err: `--nodes "label=a b": not a label selector`},
		{nodes: []string{"label=env in (prod"}, err: `--nodes "label=env in (prod": not a label selector`},
		{nodes: []string{"label=a=b,=x"}, err: `--nodes "label=a=b,=x": not a label selector`},
		{exclude: []string{"label=a!b"}, err: `--exclude "label=a!b": not a label selector`},
		{nodes: []string{"env=prod"}, err: "hint: to match a label write label=env=prod"},
		{nodes: []string{"label=a=nope"}, err: "label=a=nope matches no node"},
		{nodes: []string{"label=a=b,c=zzz"}, err: "label=a=b,c=zzz matches no node"},
	} {
		got, err := Select(labelled, Options{Nodes: tc.nodes, Exclude: tc.exclude})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v -%v: error %v, want %q", tc.nodes, tc.exclude, err, tc.err)
			} else if !strings.Contains(err.Error(), "\nhint: ") {
				t.Errorf("%v -%v: error %q has no hint", tc.nodes, tc.exclude, err)
			}
			continue
		}
		if err != nil || names(got) != tc.want {
			t.Errorf("%v -%v: %s %v, want %s", tc.nodes, tc.exclude, names(got), err, tc.want)
		}
	}
}

func TestParseLabelTerms(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"label=a=b,c!=d", "label=a=b,c!=d"},
		{"label=env in (prod,stage),web-*", "label=env in (prod,stage)|web-*"},
		{"cp1 , label=!canary , role=control-plane", "cp1|label=!canary|role=control-plane"},
		{"label=a=b,role=x", "label=a=b|role=x"},
		{"label=a=b,web-[!1]", "label=a=b|web-[!1]"},
	} {
		ts, err := Parse(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		var got []string
		for _, term := range ts {
			got = append(got, term.String())
		}
		if strings.Join(got, "|") != tc.want {
			t.Errorf("%q: terms %q, want %s", tc.in, got, tc.want)
		}
	}
}

func TestNodesFileLabelSelector(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nodes")
	os.WriteFile(p, []byte("label=env in (prod, stage), !canary  # one selector\nn4\n"), 0o600)
	got, err := Select(labelled, Options{NodesFile: p})
	if err != nil || names(got) != "n1,n4" {
		t.Fatalf("%s %v", names(got), err)
	}
	os.WriteFile(p, []byte("n1\nlabel=env in prod\n"), 0o600)
	if _, err := Select(labelled, Options{NodesFile: p}); err == nil || !strings.Contains(err.Error(), ":2: \"label=env in prod\": not a label selector") {
		t.Errorf("bad selector: %v", err)
	}
}
