// Package etcdtest starts an embedded etcd for fast tests of the etcd
// package and the commands built on it. Tests against real components use
// the lab instead (lab/labtest).
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one embedded etcd member listening on 127.0.0.1.
type Server struct {
	Endpoint string
	Client   *clientv3.Client
}

// Start starts an embedded etcd in a temporary directory; it is stopped when
// the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	// A free port is found by listening on port 0 and closing it, so
	// another process (a parallel test, the lab) may take it before etcd
	// binds it: that start is retried with other ports.
	var e *embed.Etcd
	var cu url.URL
	for attempt := 1; ; attempt++ {
		cfg := embed.NewConfig()
		cfg.Dir = t.TempDir()
		cfg.Logger = "zap"
		cfg.LogLevel = "error"
		cfg.UnsafeNoFsync = true
		var pu url.URL
		cu, pu = freeURL(t), freeURL(t)
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
		var err error
		e, err = embed.StartEtcd(cfg)
		if err == nil {
			break
		}
		if attempt < 5 && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")) {
			continue
		}
		t.Fatalf("embedded etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("embedded etcd: not ready after 30s")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cu.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("embedded etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return &Server{Endpoint: cu.String(), Client: cli}
}

func freeURL(t testing.TB) url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", l.Addr().(*net.TCPAddr).Port)}
}
