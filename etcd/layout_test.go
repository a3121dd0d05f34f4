package etcd

import "testing"

func TestLookupAndKeys(t *testing.T) {
	l := NewLayout("")
	tests := []struct {
		name, ns, obj string
		wantRes       string
		wantKey       string
	}{
		{"po", "kube-system", "p1", "pods", "/registry/pods/kube-system/p1"},
		{"Pod", "default", "p1", "pods", "/registry/pods/default/p1"},
		{"nodes", "ignored", "n1", "nodes", "/registry/minions/n1"},
		{"no", "", "n1", "nodes", "/registry/minions/n1"},
		{"svc", "default", "kubernetes", "services", "/registry/services/specs/default/kubernetes"},
		{"ep", "default", "kubernetes", "endpoints", "/registry/services/endpoints/default/kubernetes"},
		{"rc", "ns", "x", "replicationcontrollers", "/registry/controllers/ns/x"},
		{"ing", "ns", "x", "ingresses", "/registry/ingress/ns/x"},
		{"ingresses.networking.k8s.io", "ns", "x", "ingresses", "/registry/ingress/ns/x"},
		{"deploy", "ns", "web", "deployments", "/registry/deployments/ns/web"},
		{"deployments.apps", "ns", "web", "deployments", "/registry/deployments/ns/web"},
		{"deployment.apps", "ns", "web", "deployments", "/registry/deployments/ns/web"},
		{"ds", "ns", "x", "daemonsets", "/registry/daemonsets/ns/x"},
		{"pc", "", "high", "priorityclasses", "/registry/priorityclasses/high"},
		{"flowschema", "", "exempt", "flowschemas", "/registry/flowschemas/exempt"},
		{"crd", "", "widgets.example.com", "customresourcedefinitions", "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com"},
		{"apiservices", "", "v1.apps", "apiservices", "/registry/apiregistration.k8s.io/apiservices/v1.apps"},
		{"csr", "", "c", "certificatesigningrequests", "/registry/certificatesigningrequests/c"},
	}
	for _, tt := range tests {
		r, err := l.Lookup(tt.name)
		if err != nil {
			t.Errorf("Lookup(%q): %v", tt.name, err)
			continue
		}
		if r.Name != tt.wantRes {
			t.Errorf("Lookup(%q) = %s, want %s", tt.name, r.Name, tt.wantRes)
		}
		if got := l.Key(r, tt.ns, tt.obj); got != tt.wantKey {
			t.Errorf("Key(%s) = %s, want %s", tt.name, got, tt.wantKey)
		}
		ns, name, ok := l.Parse(r, tt.wantKey)
		if !ok || name != tt.obj || (r.Namespaced && ns != tt.ns) {
			t.Errorf("Parse(%s) = %q %q %v", tt.wantKey, ns, name, ok)
		}
	}
	if _, err := l.Lookup("nosuchthing"); err == nil {
		t.Error("Lookup(nosuchthing): no error")
	}
}

func TestLayoutPrefixAndCustom(t *testing.T) {
	l := NewLayout("/kubernetes.io/")
	r, _ := l.Lookup("pods")
	if got := l.Key(r, "a", "b"); got != "/kubernetes.io/pods/a/b" {
		t.Errorf("openshift prefix: %s", got)
	}
	l.AddCustom(CustomResource("example.com", "widgets", true))
	w, err := l.Lookup("widgets.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Key(w, "ns", "w1"); got != "/kubernetes.io/example.com/widgets/ns/w1" {
		t.Errorf("custom key: %s", got)
	}
	if got, ok := l.ResourceOfKey("/kubernetes.io/services/endpoints/ns/x"); !ok || got.Name != "endpoints" {
		t.Errorf("ResourceOfKey(services/endpoints) = %v", got.Name)
	}
	if got, ok := l.ResourceOfKey("/kubernetes.io/services/specs/ns/x"); !ok || got.Name != "services" {
		t.Errorf("ResourceOfKey(services/specs) = %v", got.Name)
	}
	// "pods/" must not match "podtemplates".
	if _, _, ok := l.Parse(r, "/kubernetes.io/podtemplates/ns/x"); ok {
		t.Error("pods matched a podtemplates key")
	}
}

func TestBuiltinsUnique(t *testing.T) {
	seen := map[string]bool{}
	paths := map[string]bool{}
	for _, r := range Builtins() {
		if seen[r.GroupResource()] || paths[r.Path] {
			t.Errorf("duplicate %s (%s)", r.GroupResource(), r.Path)
		}
		seen[r.GroupResource()], paths[r.Path] = true, true
		if r.Kind == "" || r.Singular == "" || r.Path == "" {
			t.Errorf("incomplete entry %+v", r)
		}
	}
}
