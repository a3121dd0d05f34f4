package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// DialFunc opens a connection to an etcd member at addr (host:port). A
// tunnel through SSH to a control-plane node is one; the etcd package never
// speaks SSH itself.
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

// Config says how to reach etcd and where the API server keeps its keys.
type Config struct {
	Endpoints []string
	CACert    string
	Cert      string
	Key       string
	// Prefix is the API server's --etcd-prefix ("/registry" when empty).
	Prefix string
	// DialTimeout bounds connecting (5s when zero).
	DialTimeout time.Duration
	// CallTimeout bounds each call to etcd on top of the caller's context
	// (none when zero).
	CallTimeout time.Duration
	// Dial, when set, replaces the TCP dialer (an SSH tunnel).
	Dial DialFunc
	// EndpointsFrom says which layer of settings Endpoints came from. Merge
	// keeps it with the endpoints; decisions that depend on where the
	// endpoints came from (the inventory's tunnel) are made on it.
	EndpointsFrom Origin
	// Source says where the settings came from, for errors and -v output
	// only: it is prose, and Merge joins it, so never compare it.
	Source string
}

// Origin is a layer of connection settings, highest precedence first.
type Origin int

const (
	OriginNone      Origin = iota // no layer named endpoints
	OriginFlags                   // --endpoints
	OriginEnv                     // ETCDCTL_ENDPOINTS
	OriginInventory               // the inventory's etcd.endpoints
	OriginKubeadm                 // kubeadm's defaults on a control-plane node
)

// String names the origin as an operator would set it.
func (o Origin) String() string {
	switch o {
	case OriginFlags:
		return "--endpoints"
	case OriginEnv:
		return "ETCDCTL_ENDPOINTS"
	case OriginInventory:
		return "the inventory's etcd.endpoints"
	case OriginKubeadm:
		return "kubeadm's defaults"
	}
	return "nowhere"
}

// kubeadm's paths on a control-plane node: the API server's own etcd client
// certificate, which etcd accepts for every key.
const (
	KubeadmCACert   = "/etc/kubernetes/pki/etcd/ca.crt"
	KubeadmCert     = "/etc/kubernetes/pki/apiserver-etcd-client.crt"
	KubeadmKey      = "/etc/kubernetes/pki/apiserver-etcd-client.key"
	KubeadmEndpoint = "https://127.0.0.1:2379"
)

// ConfigFromEnv reads the variables etcdctl reads: ETCDCTL_ENDPOINTS,
// ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY, ETCDCTL_DIAL_TIMEOUT.
func ConfigFromEnv(getenv func(string) string) Config {
	var c Config
	if v := getenv("ETCDCTL_ENDPOINTS"); v != "" {
		c.Endpoints = splitList(v)
		c.EndpointsFrom = OriginEnv
	}
	c.CACert = getenv("ETCDCTL_CACERT")
	c.Cert = getenv("ETCDCTL_CERT")
	c.Key = getenv("ETCDCTL_KEY")
	if v := getenv("ETCDCTL_DIAL_TIMEOUT"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			c.DialTimeout = d
		}
	}
	if c.Endpoints != nil || c.CACert != "" || c.Cert != "" || c.Key != "" {
		c.Source = "ETCDCTL_* environment"
	}
	return c
}

// KubeadmDefaults returns kubeadm's endpoint and certificate paths when the
// certificates are readable here, as on a kubeadm control-plane node.
func KubeadmDefaults() (Config, bool) {
	for _, p := range []string{KubeadmCACert, KubeadmCert, KubeadmKey} {
		f, err := os.Open(p)
		if err != nil {
			return Config{}, false
		}
		f.Close()
	}
	return Config{Endpoints: []string{KubeadmEndpoint}, EndpointsFrom: OriginKubeadm,
		CACert: KubeadmCACert, Cert: KubeadmCert, Key: KubeadmKey, Source: "kubeadm defaults"}, true
}

// Merge returns c with every empty field taken from lower, so that
// Merge(flags, env, inventory, kubeadm...) gives the flags precedence.
// EndpointsFrom follows the endpoints: it is lower's when the endpoints are.
func (c Config) Merge(lower Config) Config {
	if len(c.Endpoints) == 0 {
		c.Endpoints = lower.Endpoints
		c.EndpointsFrom = OriginNone
		if len(lower.Endpoints) > 0 {
			c.EndpointsFrom = lower.EndpointsFrom
		}
		if c.Source == "" || lower.Source != "" {
			c.Source = joinSource(c.Source, lower.Source)
		}
	}
	if c.CACert == "" {
		c.CACert = lower.CACert
	}
	if c.Cert == "" {
		c.Cert = lower.Cert
	}
	if c.Key == "" {
		c.Key = lower.Key
	}
	if c.Prefix == "" {
		c.Prefix = lower.Prefix
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = lower.DialTimeout
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = lower.CallTimeout
	}
	if c.Dial == nil {
		c.Dial = lower.Dial
	}
	return c
}

func joinSource(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "" || strings.Contains(a, b):
		return a
	}
	return a + ", " + b
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func (c Config) tlsConfig() (*tls.Config, error) {
	if c.CACert == "" && c.Cert == "" && c.Key == "" {
		for _, ep := range c.Endpoints {
			if strings.HasPrefix(ep, "https://") {
				return &tls.Config{MinVersion: tls.VersionTLS12}, nil
			}
		}
		return nil, nil
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, errors.New("a client certificate needs both --cert and --key\nhint: pass both, or neither")
	}
	info := transport.TLSInfo{CertFile: c.Cert, KeyFile: c.Key, TrustedCAFile: c.CACert}
	tc, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS: %w\nhint: check that --cacert, --cert and --key are readable PEM files", err)
	}
	return tc, nil
}

// Open connects to etcd and checks that it answers within the dial timeout.
func Open(ctx context.Context, c Config) (*Store, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints\nhint: pass --endpoints, set ETCDCTL_ENDPOINTS, put etcd.endpoints in the inventory, or run on a kubeadm control-plane node")
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	tc, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.DialTimeout,
		TLS:         tc,
		Context:     ctx,
		Logger:      zap.NewNop(),
		// Large pages are the point (see List); a page of 64 MiB of
		// values must fit.
		MaxCallRecvMsgSize: 512 << 20,
		// Fail calls instead of waiting forever for a member that is gone.
		RejectOldCluster: false,
	}
	if c.Dial != nil {
		dial := c.Dial
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, addr)
		}))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(c.Endpoints, ","), err)
	}
	s := newStore(cli, cli.KV, c)
	// clientv3.New does not wait for a connection; ask for the status of
	// the first endpoint that answers so that a wrong address or
	// certificate fails here, clearly, and not in the middle of a listing.
	if err := s.ping(ctx); err != nil {
		cli.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	var last error
	for _, ep := range s.cfg.Endpoints {
		if _, err := s.cli.Status(ctx, ep); err == nil {
			return nil
		} else {
			last = err
		}
	}
	hint := "hint: check the endpoints and certificates (etcdctl endpoint status with the same settings should work)"
	if s.cfg.Source != "" {
		hint += "; settings came from " + s.cfg.Source
	}
	return fmt.Errorf("etcd %s: no endpoint answered within %s: %w\n%s", strings.Join(s.cfg.Endpoints, ","), s.cfg.DialTimeout, last, hint)
}
