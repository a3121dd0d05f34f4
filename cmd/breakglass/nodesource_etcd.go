package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
)

// etcdNodeSource lists the cluster's Node objects straight from etcd, so
// that node selection works when the API server does not answer. Deps.
// NodeSource returns one once Deps can open the etcd store.
type etcdNodeSource struct{ store *etcd.Store }

func newEtcdNodeSource(s *etcd.Store) nodeops.NodeSource { return etcdNodeSource{store: s} }

// roleLabel is the prefix of the labels kubeadm and kubectl use for roles.
const roleLabel = "node-role.kubernetes.io/"

func (s etcdNodeSource) ListNodes(ctx context.Context) ([]nodeops.ClusterNode, error) {
	r, err := s.store.Layout.Lookup("nodes")
	if err != nil {
		return nil, err
	}
	var out []nodeops.ClusterNode
	var bad []string
	_, err = s.store.List(ctx, r, etcd.ListOptions{}, func(o *etcd.Object) error {
		if o.Err != nil || o.Decoded == nil {
			bad = append(bad, o.Name)
			return nil
		}
		n, ok := o.Decoded.Object.(*corev1.Node)
		if !ok {
			bad = append(bad, o.Name)
			return nil
		}
		out = append(out, clusterNode(n))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list nodes in etcd: %w", err)
	}
	if len(bad) > 0 && len(out) == 0 {
		return nil, fmt.Errorf("list nodes in etcd: no Node object could be decoded (%s)", strings.Join(bad, ", "))
	}
	return out, nil
}

// refuseAcceptNewFromEtcd refuses --accept-new-host-keys when some node's
// address was read from its Node object in etcd (source "etcd"; an
// "inventory+etcd" node keeps the inventory's address). Whoever can write
// a Node object can name any address there, and trusting the first key
// that answers at it would hand them a node's root shell and whatever
// breakglass sends it.
func refuseAcceptNewFromEtcd(nodes []nodeops.Target) error {
	var fromEtcd []string
	for _, n := range nodes {
		if n.Source == "etcd" {
			fromEtcd = append(fromEtcd, n.Name)
		}
	}
	if len(fromEtcd) == 0 {
		return nil
	}
	names := strings.Join(fromEtcd, ", ")
	if len(fromEtcd) > 5 {
		names = strings.Join(fromEtcd[:5], ", ") + fmt.Sprintf(" and %d more", len(fromEtcd)-5)
	}
	return &refusedError{fmt.Errorf("--accept-new-host-keys refused: %d node(s) have the address of their Node object in etcd (%s), and a Node object can name any address: breakglass would trust whatever key answers there\n"+
		"hint: add these nodes (name and address) to the inventory and check their keys out of band (ssh-keyscan, then compare fingerprints with the console or your provisioning records), "+
		"or ship host certificates and trust the CA with a @cert-authority line in known_hosts; then run without --accept-new-host-keys", len(fromEtcd), names)}
}

func clusterNode(n *corev1.Node) nodeops.ClusterNode {
	cn := nodeops.ClusterNode{Name: n.Name, Labels: n.Labels}
	for _, a := range n.Status.Addresses {
		switch a.Type {
		case corev1.NodeInternalIP:
			if cn.InternalIP == "" {
				cn.InternalIP = a.Address
			}
		case corev1.NodeHostName:
			if cn.Hostname == "" {
				cn.Hostname = a.Address
			}
		}
	}
	for k := range n.Labels {
		if role, ok := strings.CutPrefix(k, roleLabel); ok && role != "" {
			cn.Roles = append(cn.Roles, role)
		}
	}
	sort.Strings(cn.Roles)
	return cn
}
