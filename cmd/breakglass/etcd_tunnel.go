package main

import (
	"context"
	"fmt"
	"net"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/nodeops/sshclient"
)

// sshEtcdTunnel reaches etcd through SSH to a control-plane node: each
// endpoint's port is dialled on that node's 127.0.0.1, where kubeadm's etcd
// listens, over one SSH connection with the inventory's host-key checks.
// The etcd package only sees a dial function.
func sshEtcdTunnel(ctx context.Context, inv *inventory.Inventory, node string) (etcd.DialFunc, error) {
	n, ok := inv.Node(node)
	if !ok {
		return nil, fmt.Errorf("node %q is not in the inventory", node)
	}
	client, err := sshclient.New(sshclient.FromInventory(inv))
	if err != nil {
		return nil, err
	}
	dial := client.DialThrough(nodeops.Target{Name: n.Name, Address: n.Address, Port: n.Port, User: n.User, Roles: n.Roles, Labels: n.Labels})
	return func(ctx context.Context, addr string) (net.Conn, error) {
		port := "2379"
		if _, p, err := net.SplitHostPort(addr); err == nil {
			port = p
		}
		return dial(ctx, net.JoinHostPort("127.0.0.1", port))
	}, nil
}
