package main

import (
	"context"
	"testing"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/lab/labtest"
)

// TestLabEtcdNodeSource lists the lab's Node objects from its real etcd.
func TestLabEtcdNodeSource(t *testing.T) {
	s := labtest.Lab(t)
	ctx := context.Background()
	st, err := etcd.Open(ctx, etcd.Config{Endpoints: s.Etcd.Endpoints, CACert: s.Etcd.CACert, Cert: s.Etcd.Cert, Key: s.Etcd.Key})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	nodes, err := newEtcdNodeSource(st).ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) == 0 {
		t.Fatal("no nodes")
	}
	for _, n := range nodes {
		if n.InternalIP == "" {
			t.Errorf("%s: no InternalIP", n.Name)
		}
		if _, ok := s.Host(n.Name); !ok {
			t.Errorf("%s is not a lab host", n.Name)
		}
		t.Logf("%s %s %v", n.Name, n.InternalIP, n.Roles)
	}
}
