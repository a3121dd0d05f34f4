package etcd

import (
	"strings"
	"testing"
)

// EndpointsFrom follows the endpoints through Merge, whatever the other
// settings and the Source prose do: callers decide on it (the inventory's
// tunnel applies only to the inventory's endpoints).
func TestMergeEndpointsFrom(t *testing.T) {
	flags := func(eps ...string) Config {
		c := Config{Endpoints: eps}
		if len(eps) > 0 {
			c.EndpointsFrom, c.Source = OriginFlags, "flags"
		}
		return c
	}
	env := func(m map[string]string) Config { return ConfigFromEnv(func(k string) string { return m[k] }) }
	inv := Config{Endpoints: []string{"https://10.0.0.2:2379"}, EndpointsFrom: OriginInventory, CACert: "/inv/ca", Source: "inventory x.yaml"}
	kubeadm := Config{Endpoints: []string{KubeadmEndpoint}, EndpointsFrom: OriginKubeadm, Source: "kubeadm defaults"}

	tests := []struct {
		name   string
		layers []Config
		want   Origin
		ep     string
	}{
		{"inventory only", []Config{flags(), env(nil), inv}, OriginInventory, "https://10.0.0.2:2379"},
		{"env CA, inventory endpoints", []Config{flags(), env(map[string]string{"ETCDCTL_CACERT": "/x"}), inv}, OriginInventory, "https://10.0.0.2:2379"},
		{"env cert and key", []Config{flags(), env(map[string]string{"ETCDCTL_CERT": "/c", "ETCDCTL_KEY": "/k"}), inv}, OriginInventory, "https://10.0.0.2:2379"},
		{"env endpoints", []Config{flags(), env(map[string]string{"ETCDCTL_ENDPOINTS": "https://e:2379"}), inv}, OriginEnv, "https://e:2379"},
		{"flag endpoints", []Config{flags("https://f:2379"), env(map[string]string{"ETCDCTL_ENDPOINTS": "https://e:2379"}), inv}, OriginFlags, "https://f:2379"},
		{"kubeadm", []Config{flags(), env(map[string]string{"ETCDCTL_CACERT": "/x"}), {}, kubeadm}, OriginKubeadm, KubeadmEndpoint},
		{"nothing", []Config{flags(), env(map[string]string{"ETCDCTL_CACERT": "/x"}), {}}, OriginNone, ""},
		// A layer that claims an origin without endpoints does not pass it on.
		{"origin without endpoints", []Config{{}, {EndpointsFrom: OriginFlags}, inv}, OriginInventory, "https://10.0.0.2:2379"},
	}
	for _, tt := range tests {
		c := tt.layers[0]
		for _, l := range tt.layers[1:] {
			c = c.Merge(l)
		}
		if c.EndpointsFrom != tt.want || strings.Join(c.Endpoints, ",") != tt.ep {
			t.Errorf("%s: endpoints %v from %v, want %s from %v (source %q)", tt.name, c.Endpoints, c.EndpointsFrom, tt.ep, tt.want, c.Source)
		}
	}
}
