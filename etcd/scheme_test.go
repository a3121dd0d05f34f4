package etcd

import (
	"slices"
	"testing"

	"k8s.io/client-go/kubernetes/scheme"
)

// TestBuiltinSchemeMatchesClientGo keeps the lazily built scheme equal to
// client-go's: a Kubernetes upgrade that adds an API group fails here until
// builtinScheme registers it too.
func TestBuiltinSchemeMatchesClientGo(t *testing.T) {
	ours := builtinScheme().AllKnownTypes()
	theirs := scheme.Scheme.AllKnownTypes()
	for gvk, typ := range theirs {
		if got, ok := ours[gvk]; !ok || got != typ {
			t.Errorf("%s: client-go's scheme has %v, builtinScheme has %v", gvk, typ, got)
		}
	}
	for gvk := range ours {
		if _, ok := theirs[gvk]; !ok {
			t.Errorf("%s: in builtinScheme, not in client-go's scheme", gvk)
		}
	}
	if !slices.Equal(builtinScheme().PrioritizedVersionsAllGroups(), scheme.Scheme.PrioritizedVersionsAllGroups()) {
		t.Errorf("version priorities differ:\n ours   %v\n theirs %v", builtinScheme().PrioritizedVersionsAllGroups(), scheme.Scheme.PrioritizedVersionsAllGroups())
	}
}
