package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// ClusterDNS is the cluster DNS service as etcd holds it: the address pods
// ask (the Service's cluster IP, kubelet's clusterDNS), the servers behind
// it (its EndpointSlices), and the answer a healthy server gives for the
// API server's own Service.
type ClusterDNS struct {
	// Service is NAMESPACE/NAME of the DNS Service.
	Service string `json:"service"`
	// ClusterIP is the Service's address; Port its DNS port (TCP where
	// the Service has one, else its first port).
	ClusterIP string `json:"clusterIP,omitempty"`
	Port      int    `json:"port"`
	// Endpoints are the servers behind it: address:port, with whether
	// the EndpointSlice controller last saw each ready.
	Endpoints []DNSEndpoint `json:"endpoints"`
	// KubernetesIP is the cluster IP of default/kubernetes: what
	// kubernetes.default.svc.<domain> resolves to.
	KubernetesIP string `json:"kubernetesIP,omitempty"`
}

// DNSEndpoint is one server behind the cluster DNS Service.
type DNSEndpoint struct {
	Address string `json:"address"` // host:port
	Ready   bool   `json:"ready"`
	Node    string `json:"node,omitempty"`
	Pod     string `json:"pod,omitempty"`
}

// ErrNoClusterDNS is returned by ClusterDNS when the Service is not in
// etcd (a cluster without cluster DNS, or another Service name).
var ErrNoClusterDNS = errors.New("no cluster DNS service")

// ClusterDNS reads the DNS Service ns/name (kube-system/kube-dns in kubeadm
// and most distributions), its EndpointSlices and default/kubernetes: one
// get, one namespace list of EndpointSlices and one get.
func (s *Store) ClusterDNS(ctx context.Context, ns, name string) (*ClusterDNS, error) {
	svcR, _ := s.Layout.Lookup("services")
	o, err := s.GetObject(ctx, svcR, ns, name, Serializable)
	if err != nil {
		var nf *NotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("%w: service %s/%s is not in etcd", ErrNoClusterDNS, ns, name)
		}
		return nil, err
	}
	svc, ok := decodedAs[*corev1.Service](o)
	if !ok {
		return nil, fmt.Errorf("service %s/%s: not decodable as a Service", ns, name)
	}
	d := &ClusterDNS{Service: ns + "/" + name, ClusterIP: svc.Spec.ClusterIP, Port: 53}
	if d.ClusterIP == corev1.ClusterIPNone {
		d.ClusterIP = ""
	}
	portName := ""
	for i, p := range svc.Spec.Ports {
		if i == 0 || p.Protocol == corev1.ProtocolTCP {
			d.Port, portName = int(p.Port), p.Name
		}
		if p.Protocol == corev1.ProtocolTCP {
			break
		}
	}
	err = eachTypedIn(ctx, s, "endpointslices", ns, 0, func(es *discoveryv1.EndpointSlice) {
		if es.Labels[discoveryv1.LabelServiceName] != name {
			return
		}
		port := 0
		for _, p := range es.Ports {
			if p.Port == nil {
				continue
			}
			if (p.Name != nil && *p.Name == portName) || port == 0 {
				port = int(*p.Port)
			}
		}
		if port == 0 {
			port = d.Port
		}
		for _, e := range es.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			for _, a := range e.Addresses {
				ep := DNSEndpoint{Address: net.JoinHostPort(a, strconv.Itoa(port)), Ready: ready}
				if e.NodeName != nil {
					ep.Node = *e.NodeName
				}
				if e.TargetRef != nil {
					ep.Pod = e.TargetRef.Namespace + "/" + e.TargetRef.Name
				}
				d.Endpoints = append(d.Endpoints, ep)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(d.Endpoints, func(a, b DNSEndpoint) int {
		if a.Address < b.Address {
			return -1
		}
		if a.Address > b.Address {
			return 1
		}
		return 0
	})
	d.Endpoints = slices.CompactFunc(d.Endpoints, func(a, b DNSEndpoint) bool { return a.Address == b.Address })
	if ko, err := s.GetObject(ctx, svcR, "default", "kubernetes", Serializable); err == nil {
		if k, ok := decodedAs[*corev1.Service](ko); ok {
			d.KubernetesIP = k.Spec.ClusterIP
		}
	}
	return d, nil
}
