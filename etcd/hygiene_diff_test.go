package etcd_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/etcd"
)

func TestUnifiedDiff(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b string
		want string
	}{
		{name: "equal", a: "a\nb\n", b: "a\nb\n", want: ""},
		{name: "one line changed", a: "spec:\n  replicas: 3\n", b: "spec:\n  replicas: 0\n",
			want: "--- a\n+++ b\n@@ -1,2 +1,2 @@\n spec:\n-  replicas: 3\n+  replicas: 0\n"},
		{name: "created", a: "", b: "kind: Pod\nmetadata: {}\n",
			want: "--- a\n+++ b\n@@ -0,0 +1,2 @@\n+kind: Pod\n+metadata: {}\n"},
		{name: "deleted", a: "kind: Pod\n", b: "",
			want: "--- a\n+++ b\n@@ -1 +0,0 @@\n-kind: Pod\n"},
		{name: "no final newline", a: "x\ny", b: "x\nz\n",
			want: "--- a\n+++ b\n@@ -1,2 +1,2 @@\n x\n-y\n+z\n"},
		{name: "two hunks", a: "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", b: "0\n2\n3\n4\n5\n6\n7\n8\n9\n11\n",
			want: "--- a\n+++ b\n@@ -1,2 +1,2 @@\n-1\n+0\n 2\n@@ -9,2 +9,2 @@\n 9\n-10\n+11\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := etcd.UnifiedDiff("a", "b", tc.a, tc.b, 1); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// TestUnifiedDiffLargeObject diffs a 20,000-line object with one changed
// line: a longest-common-subsequence table would need 400M cells for it.
func TestUnifiedDiffLargeObject(t *testing.T) {
	const n = 20000
	var a, b strings.Builder
	a.WriteString("apiVersion: example.com/v1\nkind: Big\nitems:\n")
	b.WriteString("apiVersion: example.com/v1\nkind: Big\nitems:\n")
	for i := range n - 3 {
		// Every other line is the same, as in most lists of YAML objects.
		line := fmt.Sprintf("- name: item-%05d\n", i/2)
		if i%2 == 1 {
			line = "  value: same\n"
		}
		a.WriteString(line)
		if i == n/2+1 {
			line = "  value: changed\n"
		}
		b.WriteString(line)
	}
	got := etcd.UnifiedDiff("before", "after", a.String(), b.String(), 3)
	want := "--- before\n+++ after\n@@ -10002,7 +10002,7 @@\n" +
		" - name: item-04999\n   value: same\n - name: item-05000\n" +
		"-  value: same\n+  value: changed\n" +
		" - name: item-05001\n   value: same\n - name: item-05002\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
