package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops/inventory"
)

// etcdConfigDeps returns Deps whose inventory has etcd settings (and,
// if tunnel is set, a tunnel through cp-1).
func etcdConfigDeps(t *testing.T, tunnel bool) (*Deps, string) {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"inv-ca.crt", "inv.crt", "inv.key"} {
		writeTestFile(t, filepath.Join(dir, f), "x")
	}
	src := "etcd:\n  endpoints: [https://10.0.0.2:2379]\n  cacert: inv-ca.crt\n  cert: inv.crt\n  key: inv.key\n  prefix: /kubernetes.io\n"
	if tunnel {
		src += "  tunnel: cp-1\nnodes:\n  - name: cp-1\n    address: 10.0.0.2\n"
	}
	path := filepath.Join(dir, "breakglass.yaml")
	inv, err := inventory.Parse(path, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	d := testDeps()
	d.LoadInventory = func(string, bool) (*inventory.Inventory, error) { return inv, nil }
	for _, k := range []string{"ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_DIAL_TIMEOUT"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	return d, dir
}

func TestEtcdConfigPrecedence(t *testing.T) {
	ctx := context.Background()

	d, dir := etcdConfigDeps(t, false)
	cfg, err := d.etcdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Endpoints, ","); got != "https://10.0.0.2:2379" || cfg.CACert != filepath.Join(dir, "inv-ca.crt") || cfg.Prefix != "/kubernetes.io" {
		t.Errorf("inventory only: %+v", cfg)
	}
	if !strings.Contains(cfg.Source, "inventory") {
		t.Errorf("source %q does not name the inventory", cfg.Source)
	}

	// ETCDCTL_* overrides the inventory, setting by setting.
	d, _ = etcdConfigDeps(t, false)
	t.Setenv("ETCDCTL_ENDPOINTS", "https://env-a:2379,https://env-b:2379")
	t.Setenv("ETCDCTL_CERT", "/env/cert.pem")
	t.Setenv("ETCDCTL_KEY", "/env/key.pem")
	cfg, err = d.etcdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Endpoints, ","); got != "https://env-a:2379,https://env-b:2379" {
		t.Errorf("env endpoints not used: %v", cfg.Endpoints)
	}
	if cfg.Cert != "/env/cert.pem" || cfg.Key != "/env/key.pem" {
		t.Errorf("env cert/key not used: %+v", cfg)
	}
	if !strings.HasSuffix(cfg.CACert, "inv-ca.crt") {
		t.Errorf("CA not taken from the inventory when the environment has none: %q", cfg.CACert)
	}

	// Flags override both.
	d.EtcdFlags = EtcdFlags{Endpoints: []string{"https://flag:2379"}, Cert: "/flag/c", Key: "/flag/k", Prefix: "/registry"}
	cfg, err = d.etcdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Endpoints, ",") != "https://flag:2379" || cfg.Cert != "/flag/c" || cfg.Prefix != "/registry" {
		t.Errorf("flags did not win: %+v", cfg)
	}
	if !strings.HasPrefix(cfg.Source, "flags") {
		t.Errorf("source %q, want flags", cfg.Source)
	}
}

func TestEtcdConfigTunnel(t *testing.T) {
	ctx := context.Background()

	// No tunnel support wired: a clear error naming the inventory.
	d, _ := etcdConfigDeps(t, true)
	d.EtcdTunnel = nil
	if _, err := d.etcdConfig(ctx); err == nil || !strings.Contains(err.Error(), `etcd.tunnel "cp-1"`) || !strings.Contains(err.Error(), "hint:") {
		t.Fatalf("err = %v", err)
	}

	// With a tunnel: the inventory's endpoints are dialled through it.
	d, _ = etcdConfigDeps(t, true)
	var tunnelled string
	d.EtcdTunnel = func(_ context.Context, _ *inventory.Inventory, node string) (etcd.DialFunc, error) {
		tunnelled = node
		return func(ctx context.Context, addr string) (net.Conn, error) { return nil, net.ErrClosed }, nil
	}
	cfg, err := d.etcdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tunnelled != "cp-1" || cfg.Dial == nil || !strings.Contains(cfg.Source, "through SSH to cp-1") {
		t.Errorf("tunnel not used: node %q, dial %v, source %q", tunnelled, cfg.Dial != nil, cfg.Source)
	}

	// Endpoints given on the command line are reachable from here: no tunnel.
	d, _ = etcdConfigDeps(t, true)
	tunnelled = ""
	d.EtcdTunnel = func(_ context.Context, _ *inventory.Inventory, node string) (etcd.DialFunc, error) {
		tunnelled = node
		return nil, nil
	}
	d.EtcdFlags.Endpoints = []string{"https://127.0.0.1:2379"}
	if cfg, err = d.etcdConfig(ctx); err != nil || tunnelled != "" || cfg.Dial != nil {
		t.Errorf("flag endpoints went through the tunnel: err %v node %q", err, tunnelled)
	}
}

// The tunnel follows the endpoints, not the other settings: a CA, cert or
// key from ETCDCTL_* still reaches the inventory's endpoints through the
// tunnel; ETCDCTL_ENDPOINTS or --endpoints are dialled directly, and a
// failed connection then says the tunnel was not used and why.
func TestEtcdConfigTunnelFollowsEndpoints(t *testing.T) {
	ctx := context.Background()
	tunnelDeps := func(t *testing.T) (*Deps, *string) {
		d, _ := etcdConfigDeps(t, true)
		tunnelled := new(string)
		d.EtcdTunnel = func(_ context.Context, _ *inventory.Inventory, node string) (etcd.DialFunc, error) {
			*tunnelled = node
			return func(ctx context.Context, addr string) (net.Conn, error) { return nil, net.ErrClosed }, nil
		}
		return d, tunnelled
	}

	for _, env := range []map[string]string{
		{"ETCDCTL_CACERT": "/x"},
		{"ETCDCTL_CACERT": "/x", "ETCDCTL_CERT": "/env/cert.pem", "ETCDCTL_KEY": "/env/key.pem", "ETCDCTL_DIAL_TIMEOUT": "3s"},
	} {
		d, tunnelled := tunnelDeps(t)
		for k, v := range env {
			t.Setenv(k, v)
		}
		cfg, err := d.etcdConfig(ctx)
		if err != nil {
			t.Fatalf("%v: %v", env, err)
		}
		if *tunnelled != "cp-1" || cfg.Dial == nil || cfg.EndpointsFrom != etcd.OriginInventory {
			t.Errorf("%v: tunnel not used: node %q, dial %v, endpoints from %v, source %q", env, *tunnelled, cfg.Dial != nil, cfg.EndpointsFrom, cfg.Source)
		}
		if cfg.CACert != "/x" || strings.Join(cfg.Endpoints, ",") != "https://10.0.0.2:2379" {
			t.Errorf("%v: want the env CA and the inventory's endpoints: %+v", env, cfg)
		}
		if tunnelNotUsed(d.inv, cfg) != "" {
			t.Errorf("%v: a note about an unused tunnel, but it is used", env)
		}
		for k := range env {
			os.Unsetenv(k)
		}
	}

	// ETCDCTL_ENDPOINTS names endpoints reachable from here: no tunnel.
	d, tunnelled := tunnelDeps(t)
	t.Setenv("ETCDCTL_ENDPOINTS", "https://127.0.0.1:2379")
	cfg, err := d.etcdConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if *tunnelled != "" || cfg.Dial != nil || cfg.EndpointsFrom != etcd.OriginEnv {
		t.Errorf("ETCDCTL_ENDPOINTS went through the tunnel: node %q, dial %v, endpoints from %v", *tunnelled, cfg.Dial != nil, cfg.EndpointsFrom)
	}

	// When that connection fails, the hint says the tunnel was not used
	// and how to use it; -v says so before connecting.
	d, _ = tunnelDeps(t) // which clears ETCDCTL_*
	t.Setenv("ETCDCTL_ENDPOINTS", "https://127.0.0.1:2379")
	var errOut strings.Builder
	d.ErrOut = &errOut
	d.Global.Verbose = 1
	d.OpenEtcd = func(context.Context, etcd.Config) (*etcd.Store, error) {
		return nil, errors.New("etcd https://127.0.0.1:2379: no endpoint answered\nhint: check the endpoints")
	}
	_, err = d.Etcd(ctx)
	if err == nil || !strings.Contains(err.Error(), "hint: the inventory's etcd.tunnel cp-1 was not used") || !strings.Contains(err.Error(), "unset ETCDCTL_ENDPOINTS") {
		t.Errorf("failed connection without the tunnel: err %v", err)
	}
	if !strings.Contains(errOut.String(), "etcd: note: the inventory's etcd.tunnel cp-1 was not used") {
		t.Errorf("-v output has no note about the tunnel: %q", errOut.String())
	}

	// --endpoints: the same, naming the flag.
	os.Unsetenv("ETCDCTL_ENDPOINTS")
	d, tunnelled = tunnelDeps(t)
	d.EtcdFlags.Endpoints = []string{"https://127.0.0.1:2379"}
	d.OpenEtcd = func(context.Context, etcd.Config) (*etcd.Store, error) { return nil, errors.New("etcd: refused") }
	if _, err := d.Etcd(ctx); *tunnelled != "" || err == nil || !strings.Contains(err.Error(), "drop --endpoints") {
		t.Errorf("--endpoints: node %q, err %v", *tunnelled, err)
	}

	// Through the tunnel, a failure carries no such note.
	d, _ = tunnelDeps(t)
	d.OpenEtcd = func(context.Context, etcd.Config) (*etcd.Store, error) { return nil, errors.New("etcd: refused") }
	if _, err := d.Etcd(ctx); err == nil || strings.Contains(err.Error(), "was not used") {
		t.Errorf("through the tunnel: err %v", err)
	}
}
