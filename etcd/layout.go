package etcd

import (
	"fmt"
	"sort"
	"strings"
)

// Resource is one kind of Kubernetes object and where the API server keeps
// it in etcd.
type Resource struct {
	// Name is the plural resource name (pods, deployments).
	Name string
	// Singular is the singular name (pod, deployment).
	Singular string
	// Kind is the object kind (Pod, Deployment).
	Kind string
	// Group is the API group ("" for the core group).
	Group string
	// ShortNames are kubectl's short names (po, deploy).
	ShortNames []string
	// Namespaced says whether objects live in a namespace.
	Namespaced bool
	// Path is the key segment after the prefix: usually Name, but nodes are
	// "minions", services "services/specs", and custom resources
	// "<group>/<plural>".
	Path string
	// Custom marks a custom resource (values are JSON, decoded unstructured).
	Custom bool
}

// GroupResource returns "deployments.apps", or "pods" for the core group.
func (r Resource) GroupResource() string {
	if r.Group == "" {
		return r.Name
	}
	return r.Name + "." + r.Group
}

// NameRef returns how kubectl -o name spells an object: "pod/x",
// "deployment.apps/x".
func (r Resource) NameRef(name string) string {
	s := strings.ToLower(r.Kind)
	if s == "" {
		s = r.Singular
	}
	if r.Group != "" {
		s += "." + r.Group
	}
	return s + "/" + name
}

// builtins is the key layout of every built-in resource of Kubernetes 1.31
// that the API server persists, as registered by each registry's
// storage (pkg/registry/*/*/storage). Irregular paths are the historical ones:
// nodes are "minions", services and endpoints share "services/",
// replicationcontrollers are "controllers", ingresses "ingress". The two
// resources served by the extension and aggregation servers carry their group
// in the path. Keep this the only place that knows the layout.
var builtins = []Resource{
	// core
	{Name: "bindings", Singular: "binding", Kind: "Binding", Namespaced: true, Path: "bindings"},
	{Name: "configmaps", Singular: "configmap", Kind: "ConfigMap", ShortNames: []string{"cm"}, Namespaced: true, Path: "configmaps"},
	{Name: "endpoints", Singular: "endpoints", Kind: "Endpoints", ShortNames: []string{"ep"}, Namespaced: true, Path: "services/endpoints"},
	{Name: "events", Singular: "event", Kind: "Event", ShortNames: []string{"ev"}, Namespaced: true, Path: "events"},
	{Name: "limitranges", Singular: "limitrange", Kind: "LimitRange", ShortNames: []string{"limits"}, Namespaced: true, Path: "limitranges"},
	{Name: "namespaces", Singular: "namespace", Kind: "Namespace", ShortNames: []string{"ns"}, Path: "namespaces"},
	{Name: "nodes", Singular: "node", Kind: "Node", ShortNames: []string{"no"}, Path: "minions"},
	{Name: "persistentvolumeclaims", Singular: "persistentvolumeclaim", Kind: "PersistentVolumeClaim", ShortNames: []string{"pvc"}, Namespaced: true, Path: "persistentvolumeclaims"},
	{Name: "persistentvolumes", Singular: "persistentvolume", Kind: "PersistentVolume", ShortNames: []string{"pv"}, Path: "persistentvolumes"},
	{Name: "pods", Singular: "pod", Kind: "Pod", ShortNames: []string{"po"}, Namespaced: true, Path: "pods"},
	{Name: "podtemplates", Singular: "podtemplate", Kind: "PodTemplate", Namespaced: true, Path: "podtemplates"},
	{Name: "replicationcontrollers", Singular: "replicationcontroller", Kind: "ReplicationController", ShortNames: []string{"rc"}, Namespaced: true, Path: "controllers"},
	{Name: "resourcequotas", Singular: "resourcequota", Kind: "ResourceQuota", ShortNames: []string{"quota"}, Namespaced: true, Path: "resourcequotas"},
	{Name: "secrets", Singular: "secret", Kind: "Secret", Namespaced: true, Path: "secrets"},
	{Name: "serviceaccounts", Singular: "serviceaccount", Kind: "ServiceAccount", ShortNames: []string{"sa"}, Namespaced: true, Path: "serviceaccounts"},
	{Name: "services", Singular: "service", Kind: "Service", ShortNames: []string{"svc"}, Namespaced: true, Path: "services/specs"},
	// apps
	{Name: "controllerrevisions", Singular: "controllerrevision", Kind: "ControllerRevision", Group: "apps", Namespaced: true, Path: "controllerrevisions"},
	{Name: "daemonsets", Singular: "daemonset", Kind: "DaemonSet", Group: "apps", ShortNames: []string{"ds"}, Namespaced: true, Path: "daemonsets"},
	{Name: "deployments", Singular: "deployment", Kind: "Deployment", Group: "apps", ShortNames: []string{"deploy"}, Namespaced: true, Path: "deployments"},
	{Name: "replicasets", Singular: "replicaset", Kind: "ReplicaSet", Group: "apps", ShortNames: []string{"rs"}, Namespaced: true, Path: "replicasets"},
	{Name: "statefulsets", Singular: "statefulset", Kind: "StatefulSet", Group: "apps", ShortNames: []string{"sts"}, Namespaced: true, Path: "statefulsets"},
	// batch, autoscaling, policy
	{Name: "cronjobs", Singular: "cronjob", Kind: "CronJob", Group: "batch", ShortNames: []string{"cj"}, Namespaced: true, Path: "cronjobs"},
	{Name: "jobs", Singular: "job", Kind: "Job", Group: "batch", Namespaced: true, Path: "jobs"},
	{Name: "horizontalpodautoscalers", Singular: "horizontalpodautoscaler", Kind: "HorizontalPodAutoscaler", Group: "autoscaling", ShortNames: []string{"hpa"}, Namespaced: true, Path: "horizontalpodautoscalers"},
	{Name: "poddisruptionbudgets", Singular: "poddisruptionbudget", Kind: "PodDisruptionBudget", Group: "policy", ShortNames: []string{"pdb"}, Namespaced: true, Path: "poddisruptionbudgets"},
	// networking, discovery
	{Name: "endpointslices", Singular: "endpointslice", Kind: "EndpointSlice", Group: "discovery.k8s.io", Namespaced: true, Path: "endpointslices"},
	{Name: "ingressclasses", Singular: "ingressclass", Kind: "IngressClass", Group: "networking.k8s.io", Path: "ingressclasses"},
	{Name: "ingresses", Singular: "ingress", Kind: "Ingress", Group: "networking.k8s.io", ShortNames: []string{"ing"}, Namespaced: true, Path: "ingress"},
	{Name: "networkpolicies", Singular: "networkpolicy", Kind: "NetworkPolicy", Group: "networking.k8s.io", ShortNames: []string{"netpol"}, Namespaced: true, Path: "networkpolicies"},
	{Name: "ipaddresses", Singular: "ipaddress", Kind: "IPAddress", Group: "networking.k8s.io", ShortNames: []string{"ip"}, Path: "ipaddresses"},
	{Name: "servicecidrs", Singular: "servicecidr", Kind: "ServiceCIDR", Group: "networking.k8s.io", Path: "servicecidrs"},
	// rbac
	{Name: "clusterrolebindings", Singular: "clusterrolebinding", Kind: "ClusterRoleBinding", Group: "rbac.authorization.k8s.io", Path: "clusterrolebindings"},
	{Name: "clusterroles", Singular: "clusterrole", Kind: "ClusterRole", Group: "rbac.authorization.k8s.io", Path: "clusterroles"},
	{Name: "rolebindings", Singular: "rolebinding", Kind: "RoleBinding", Group: "rbac.authorization.k8s.io", Namespaced: true, Path: "rolebindings"},
	{Name: "roles", Singular: "role", Kind: "Role", Group: "rbac.authorization.k8s.io", Namespaced: true, Path: "roles"},
	// scheduling, node, coordination, certificates
	{Name: "priorityclasses", Singular: "priorityclass", Kind: "PriorityClass", Group: "scheduling.k8s.io", ShortNames: []string{"pc"}, Path: "priorityclasses"},
	{Name: "runtimeclasses", Singular: "runtimeclass", Kind: "RuntimeClass", Group: "node.k8s.io", Path: "runtimeclasses"},
	{Name: "leases", Singular: "lease", Kind: "Lease", Group: "coordination.k8s.io", Namespaced: true, Path: "leases"},
	{Name: "certificatesigningrequests", Singular: "certificatesigningrequest", Kind: "CertificateSigningRequest", Group: "certificates.k8s.io", ShortNames: []string{"csr"}, Path: "certificatesigningrequests"},
	{Name: "clustertrustbundles", Singular: "clustertrustbundle", Kind: "ClusterTrustBundle", Group: "certificates.k8s.io", Path: "clustertrustbundles"},
	// flow control
	{Name: "flowschemas", Singular: "flowschema", Kind: "FlowSchema", Group: "flowcontrol.apiserver.k8s.io", Path: "flowschemas"},
	{Name: "prioritylevelconfigurations", Singular: "prioritylevelconfiguration", Kind: "PriorityLevelConfiguration", Group: "flowcontrol.apiserver.k8s.io", Path: "prioritylevelconfigurations"},
	// admission
	{Name: "mutatingwebhookconfigurations", Singular: "mutatingwebhookconfiguration", Kind: "MutatingWebhookConfiguration", Group: "admissionregistration.k8s.io", Path: "mutatingwebhookconfigurations"},
	{Name: "validatingwebhookconfigurations", Singular: "validatingwebhookconfiguration", Kind: "ValidatingWebhookConfiguration", Group: "admissionregistration.k8s.io", Path: "validatingwebhookconfigurations"},
	{Name: "validatingadmissionpolicies", Singular: "validatingadmissionpolicy", Kind: "ValidatingAdmissionPolicy", Group: "admissionregistration.k8s.io", Path: "validatingadmissionpolicies"},
	{Name: "validatingadmissionpolicybindings", Singular: "validatingadmissionpolicybinding", Kind: "ValidatingAdmissionPolicyBinding", Group: "admissionregistration.k8s.io", Path: "validatingadmissionpolicybindings"},
	// storage
	{Name: "csidrivers", Singular: "csidriver", Kind: "CSIDriver", Group: "storage.k8s.io", Path: "csidrivers"},
	{Name: "csinodes", Singular: "csinode", Kind: "CSINode", Group: "storage.k8s.io", Path: "csinodes"},
	{Name: "csistoragecapacities", Singular: "csistoragecapacity", Kind: "CSIStorageCapacity", Group: "storage.k8s.io", Namespaced: true, Path: "csistoragecapacities"},
	{Name: "storageclasses", Singular: "storageclass", Kind: "StorageClass", Group: "storage.k8s.io", ShortNames: []string{"sc"}, Path: "storageclasses"},
	{Name: "volumeattachments", Singular: "volumeattachment", Kind: "VolumeAttachment", Group: "storage.k8s.io", Path: "volumeattachments"},
	{Name: "volumeattributesclasses", Singular: "volumeattributesclass", Kind: "VolumeAttributesClass", Group: "storage.k8s.io", ShortNames: []string{"vac"}, Path: "volumeattributesclasses"},
	// resource (dynamic resource allocation, alpha in 1.31)
	{Name: "deviceclasses", Singular: "deviceclass", Kind: "DeviceClass", Group: "resource.k8s.io", Path: "deviceclasses"},
	{Name: "podschedulingcontexts", Singular: "podschedulingcontext", Kind: "PodSchedulingContext", Group: "resource.k8s.io", Namespaced: true, Path: "podschedulingcontexts"},
	{Name: "resourceclaims", Singular: "resourceclaim", Kind: "ResourceClaim", Group: "resource.k8s.io", Namespaced: true, Path: "resourceclaims"},
	{Name: "resourceclaimtemplates", Singular: "resourceclaimtemplate", Kind: "ResourceClaimTemplate", Group: "resource.k8s.io", Namespaced: true, Path: "resourceclaimtemplates"},
	{Name: "resourceslices", Singular: "resourceslice", Kind: "ResourceSlice", Group: "resource.k8s.io", Path: "resourceslices"},
	// apiserver internals
	{Name: "storageversions", Singular: "storageversion", Kind: "StorageVersion", Group: "internal.apiserver.k8s.io", Path: "storageversions"},
	{Name: "storageversionmigrations", Singular: "storageversionmigration", Kind: "StorageVersionMigration", Group: "storagemigration.k8s.io", Path: "storageversionmigrations"},
	// served by the extension and aggregation servers: the group is in the path
	{Name: "customresourcedefinitions", Singular: "customresourcedefinition", Kind: "CustomResourceDefinition", Group: "apiextensions.k8s.io", ShortNames: []string{"crd", "crds"}, Path: "apiextensions.k8s.io/customresourcedefinitions"},
	{Name: "apiservices", Singular: "apiservice", Kind: "APIService", Group: "apiregistration.k8s.io", Path: "apiregistration.k8s.io/apiservices"},
}

// Layout maps resource names to keys under one prefix.
type Layout struct {
	// Prefix is the API server's --etcd-prefix, "/registry" by default
	// (OpenShift uses "/kubernetes.io"). No trailing slash.
	Prefix string
	custom []Resource
}

// NewLayout returns the layout of the built-in resources under prefix.
func NewLayout(prefix string) *Layout {
	if prefix == "" {
		prefix = "/registry"
	}
	prefix = "/" + strings.Trim(prefix, "/")
	return &Layout{Prefix: prefix}
}

// Builtins returns the built-in resources, sorted by name.
func Builtins() []Resource {
	out := append([]Resource(nil), builtins...)
	sort.Slice(out, func(i, j int) bool { return out[i].GroupResource() < out[j].GroupResource() })
	return out
}

// AddCustom adds custom resources (from the CRDs stored in etcd).
func (l *Layout) AddCustom(rs ...Resource) { l.custom = append(l.custom, rs...) }

// CustomResource returns the layout entry of a custom resource: the API
// server keeps it at /<prefix>/<group>/<plural>/.
func CustomResource(group, plural string, namespaced bool) Resource {
	return Resource{
		Name: plural, Singular: strings.TrimSuffix(plural, "s"), Group: group,
		Namespaced: namespaced, Path: group + "/" + plural, Custom: true,
	}
}

// ErrUnknownResource is returned by Lookup for a name it does not know.
type ErrUnknownResource struct{ Name string }

func (e *ErrUnknownResource) Error() string {
	return fmt.Sprintf("unknown resource %q\nhint: use a plural, singular or short name as kubectl does (pods, po, deployments.apps); custom resources by plural or plural.group", e.Name)
}

// Lookup finds a resource by plural, singular or short name, kind, or
// "name.group", case-insensitively, as kubectl does.
func (l *Layout) Lookup(name string) (Resource, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	all := append(append([]Resource(nil), builtins...), l.custom...)
	for _, r := range all {
		if n == r.Name || n == r.Singular || strings.EqualFold(n, r.Kind) || n == r.GroupResource() ||
			(r.Group != "" && (n == r.Singular+"."+r.Group || n == strings.ToLower(r.Kind)+"."+r.Group)) {
			return r, nil
		}
		for _, s := range r.ShortNames {
			if n == s {
				return r, nil
			}
		}
	}
	return Resource{}, &ErrUnknownResource{Name: name}
}

// ResourcePrefix returns the key prefix of all objects of r, with a trailing
// slash so that "pods" never matches "podtemplates".
func (l *Layout) ResourcePrefix(r Resource) string {
	return l.Prefix + "/" + r.Path + "/"
}

// NamespacePrefix returns the key prefix of the objects of r in namespace ns
// (all of them when ns is "" or r is cluster-scoped).
func (l *Layout) NamespacePrefix(r Resource, ns string) string {
	if !r.Namespaced || ns == "" {
		return l.ResourcePrefix(r)
	}
	return l.ResourcePrefix(r) + ns + "/"
}

// Key returns the key of one object. ns is ignored for cluster-scoped
// resources.
func (l *Layout) Key(r Resource, ns, name string) string {
	if r.Namespaced {
		return l.ResourcePrefix(r) + ns + "/" + name
	}
	return l.ResourcePrefix(r) + name
}

// Parse returns the namespace and name encoded in key, which must be under
// r's prefix.
func (l *Layout) Parse(r Resource, key string) (ns, name string, ok bool) {
	rest, found := strings.CutPrefix(key, l.ResourcePrefix(r))
	if !found || rest == "" {
		return "", "", false
	}
	if !r.Namespaced {
		return "", rest, !strings.Contains(rest, "/")
	}
	ns, name, found = strings.Cut(rest, "/")
	return ns, name, found && name != "" && !strings.Contains(name, "/")
}

// ResourceOfKey finds the built-in or known custom resource a key belongs to.
// The longest matching path wins, so services/specs is not mistaken for
// services/endpoints.
func (l *Layout) ResourceOfKey(key string) (Resource, bool) {
	var best Resource
	found := false
	for _, r := range append(append([]Resource(nil), builtins...), l.custom...) {
		if strings.HasPrefix(key, l.ResourcePrefix(r)) && (!found || len(r.Path) > len(best.Path)) {
			best, found = r, true
		}
	}
	return best, found
}
