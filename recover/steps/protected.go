package steps

import (
	"github.com/breakglass/breakglass/etcd"
)

// controlPlaneComponents are the static pods and workloads of the control
// plane (and the cluster DNS and proxy that everything resolves through).
var controlPlaneComponents = map[string]bool{
	"kube-apiserver": true, "kube-controller-manager": true, "kube-scheduler": true, "etcd": true,
	"coredns": true, "kube-dns": true, "kube-proxy": true, "cloud-controller-manager": true,
}

// mandatoryFlowControl are the API Priority and Fairness objects the
// apiserver itself maintains: exempt carries system:masters (the
// operator's own access), catch-all everything else.
var mandatoryFlowControl = map[string]bool{"exempt": true, "catch-all": true}

// Protected says why changing an object could make the incident worse and
// needs --force, or returns "".
func Protected(r etcd.Resource, d *etcd.Decoded) string {
	m := d.Meta()
	switch r.GroupResource() {
	case "namespaces":
		return "a Namespace: removing its key orphans every object in it in etcd, and the namespace controller then deletes them when it runs"
	case "customresourcedefinitions.apiextensions.k8s.io":
		return "a CustomResourceDefinition: without it the apiserver serves none of its custom resources"
	case "flowschemas.flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations.flowcontrol.apiserver.k8s.io":
		if mandatoryFlowControl[m.GetName()] {
			return "one of the apiserver's mandatory flow-control objects (exempt carries system:masters, the operator's own access)"
		}
	case "pods":
		if _, mirror := m.GetAnnotations()["kubernetes.io/config.mirror"]; mirror {
			return "a mirror pod of a static pod: the kubelet runs it from a manifest on its node, and deleting the mirror changes nothing there but hides it"
		}
	case "deployments.apps", "daemonsets.apps", "statefulsets.apps", "replicasets.apps":
		if m.GetNamespace() == "kube-system" && (controlPlaneComponents[m.GetName()] ||
			m.GetLabels()["tier"] == "control-plane" || controlPlaneComponents[m.GetLabels()["component"]] ||
			controlPlaneComponents[m.GetLabels()["k8s-app"]]) {
			return "a kube-system workload of the control plane or cluster DNS"
		}
	}
	return ""
}
