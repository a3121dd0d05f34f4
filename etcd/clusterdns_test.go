package etcd_test

import (
	"context"
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/etcd"
)

func TestClusterDNS(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	if _, err := s.ClusterDNS(ctx, "kube-system", "kube-dns"); !errors.Is(err, etcd.ErrNoClusterDNS) {
		t.Fatalf("no service: err = %v, want ErrNoClusterDNS", err)
	}
	put(t, s, srv.Client, "services", "kube-system", "kube-dns", &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", Port: 5353, Protocol: corev1.ProtocolTCP}}},
	}, gvk("", "v1", "Service"))
	put(t, s, srv.Client, "services", "default", "kubernetes", &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1"},
	}, gvk("", "v1", "Service"))
	slice := func(name, svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("dns"), Port: ptr.To[int32](53)}, {Name: ptr.To("dns-tcp"), Port: ptr.To[int32](5353)}},
			Endpoints:   eps,
		}
	}
	esGVK := gvk("discovery.k8s.io", "v1", "EndpointSlice")
	put(t, s, srv.Client, "endpointslices", "kube-system", "kube-dns-abc", slice("kube-dns-abc", "kube-dns",
		discoveryv1.Endpoint{Addresses: []string{"10.0.0.12"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("worker-2"),
			TargetRef: &corev1.ObjectReference{Namespace: "kube-system", Name: "coredns-2"}},
		discoveryv1.Endpoint{Addresses: []string{"10.0.0.11"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}, NodeName: ptr.To("worker-1")},
	), esGVK)
	// Another service's slice in the namespace is not the DNS's.
	put(t, s, srv.Client, "endpointslices", "kube-system", "metrics-xyz", slice("metrics-xyz", "metrics",
		discoveryv1.Endpoint{Addresses: []string{"10.0.0.99"}}), esGVK)

	d, err := s.ClusterDNS(ctx, "kube-system", "kube-dns")
	if err != nil {
		t.Fatal(err)
	}
	if d.Service != "kube-system/kube-dns" || d.ClusterIP != "10.96.0.10" || d.Port != 5353 || d.KubernetesIP != "10.96.0.1" {
		t.Errorf("service: %+v", d)
	}
	want := []etcd.DNSEndpoint{
		{Address: "10.0.0.11:5353", Ready: false, Node: "worker-1"},
		{Address: "10.0.0.12:5353", Ready: true, Node: "worker-2", Pod: "kube-system/coredns-2"},
	}
	if len(d.Endpoints) != len(want) {
		t.Fatalf("endpoints: %+v, want %+v", d.Endpoints, want)
	}
	for i := range want {
		if d.Endpoints[i] != want[i] {
			t.Errorf("endpoint %d: %+v, want %+v", i, d.Endpoints[i], want[i])
		}
	}
}
