package etcd_test

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/breakglass/breakglass/etcd"
)

// TestParseLabelSelector: get -l takes kubectl's label selector syntax, the
// one --nodes label= takes too.
func TestParseLabelSelector(t *testing.T) {
	n1 := labels.Set{"a": "b", "c": "d", "env": "prod", "tier": "web"}
	n2 := labels.Set{"a": "b", "c": "e", "env": "stage", "canary": "true"}
	n3 := labels.Set{"a": "x", "env": "dev"}
	for _, tc := range []struct {
		sel  string
		want []bool // matches n1, n2, n3
	}{
		{"a=b,c!=d", []bool{false, true, false}},
		{"env in (prod,stage)", []bool{true, true, false}},
		{"env notin (prod,stage)", []bool{false, false, true}},
		{"!canary", []bool{true, false, true}},
		{"tier", []bool{true, false, false}},
		{"", []bool{true, true, true}},
	} {
		s, err := etcd.ParseSelector(tc.sel, "")
		if err != nil {
			t.Errorf("-l %q: %v", tc.sel, err)
			continue
		}
		for i, set := range []labels.Set{n1, n2, n3} {
			if got := s.Labels.Matches(set); got != tc.want[i] {
				t.Errorf("-l %q on n%d: %v, want %v", tc.sel, i+1, got, tc.want[i])
			}
		}
	}
}

func TestParseSelectorErrors(t *testing.T) {
	for _, tc := range []struct{ label, field, want string }{
		{label: "env in prod", want: `-l "env in prod": not a label selector`},
		{label: "a b", want: `-l "a b": not a label selector`},
		{label: "env in (prod", want: `-l "env in (prod": not a label selector`},
		{label: "=x", want: `-l "=x": not a label selector`},
		{label: "a!b", want: `-l "a!b": not a label selector`},
		{field: "spec.nodeName", want: `--field-selector "spec.nodeName": not a field selector`},
		{field: "a=b,c", want: `--field-selector "a=b,c": not a field selector`},
	} {
		_, err := etcd.ParseSelector(tc.label, tc.field)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || !strings.Contains(err.Error(), "\nhint: ") {
			t.Errorf("-l %q --field-selector %q: error %v, want %q and a hint", tc.label, tc.field, err, tc.want)
		}
	}
}
