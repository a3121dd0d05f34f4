package etcd_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/etcd"
)

func gvk(group, version, kind string) schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: group, Version: version, Kind: kind}
}

// seedCluster writes a small cluster: 3 Ready nodes (one with a stale
// lease), a new DaemonSet on every node whose service account may list
// pods and nodes everywhere, an old Deployment, a new globalDefault
// PriorityClass and its Preempted events, a FlowSchema that exempts a
// service account and an apiserver lease.
func seedCluster(t *testing.T, s *etcd.Store, put func(resource, ns, name string, obj runtime.Object, g schema.GroupVersionKind), now time.Time) {
	t.Helper()
	old := metav1.NewTime(now.Add(-48 * time.Hour))
	recent := metav1.NewTime(now.Add(-10 * time.Minute))
	for i := range 3 {
		name := fmt.Sprintf("worker-%d", i)
		ready := corev1.ConditionTrue
		if i == 2 {
			ready = corev1.ConditionFalse
		}
		put("nodes", "", name, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: old},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}}}, gvk("", "v1", "Node"))
		renew := metav1.NewMicroTime(now.Add(-5 * time.Second))
		if i == 2 {
			renew = metav1.NewMicroTime(now.Add(-3 * time.Minute))
		}
		put("leases", "kube-node-lease", name, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-node-lease"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(name), RenewTime: &renew}}, gvk("coordination.k8s.io", "v1", "Lease"))
	}
	for i := range 40 {
		ns := "default"
		if i%4 == 0 {
			ns = "big"
		}
		put("pods", ns, fmt.Sprintf("p-%02d", i), pod(ns, fmt.Sprintf("p-%02d", i), "worker-0", map[string]string{"app": "x"}), podGVK)
	}
	labels := map[string]string{"app": "agent"}
	put("daemonsets", "telemetry", "agent", &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "telemetry", Name: "agent", CreationTimestamp: recent},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{ServiceAccountName: "agent", HostNetwork: true, Containers: []corev1.Container{{Name: "a", Image: "x"}}}}},
		Status: appsv1.DaemonSetStatus{CurrentNumberScheduled: 3, DesiredNumberScheduled: 3},
	}, gvk("apps", "v1", "DaemonSet"))
	web := map[string]string{"app": "web"}
	put("deployments", "default", "web", &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", CreationTimestamp: old},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Selector: &metav1.LabelSelector{MatchLabels: web},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: web}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "w", Image: "x"}}}}},
		Status: appsv1.DeploymentStatus{Replicas: 2},
	}, gvk("apps", "v1", "Deployment"))
	put("clusterroles", "", "agent", &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}}}}, gvk("rbac.authorization.k8s.io", "v1", "ClusterRole"))
	put("clusterrolebindings", "", "agent", &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "agent"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "telemetry", Name: "agent"}}}, gvk("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"))
	put("priorityclasses", "", "medium", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "medium", CreationTimestamp: recent}, Value: 1000, GlobalDefault: true}, gvk("scheduling.k8s.io", "v1", "PriorityClass"))
	put("priorityclasses", "", "old", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "old", CreationTimestamp: old}, Value: 10}, gvk("scheduling.k8s.io", "v1", "PriorityClass"))
	for i := range 3 {
		put("events", "cortex", fmt.Sprintf("ing-%d.1", i), &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "cortex", Name: fmt.Sprintf("ing-%d.1", i), CreationTimestamp: recent},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "cortex", Name: fmt.Sprintf("ing-%d", i)},
			Related:        &corev1.ObjectReference{Kind: "Pod", Namespace: "cortex-new", Name: "new-1"},
			Reason:         "Preempted", Message: "Preempted by pod 1234 on node worker-0", EventTime: metav1.NewMicroTime(recent.Time)}, gvk("", "v1", "Event"))
	}
	// An old event is outside the window.
	put("events", "cortex", "old.1", &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "cortex", Name: "old.1", CreationTimestamp: old},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "cortex", Name: "old"}, Reason: "Preempted", LastTimestamp: old}, gvk("", "v1", "Event"))
	put("prioritylevelconfigurations", "", "exempt", &flowcontrolv1.PriorityLevelConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "exempt"},
		Spec: flowcontrolv1.PriorityLevelConfigurationSpec{Type: flowcontrolv1.PriorityLevelEnablementExempt}}, gvk("flowcontrol.apiserver.k8s.io", "v1", "PriorityLevelConfiguration"))
	put("flowschemas", "", "vip-agent", &flowcontrolv1.FlowSchema{ObjectMeta: metav1.ObjectMeta{Name: "vip-agent"},
		Spec: flowcontrolv1.FlowSchemaSpec{PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "exempt"}, MatchingPrecedence: 50,
			Rules: []flowcontrolv1.PolicyRulesWithSubjects{{Subjects: []flowcontrolv1.Subject{{Kind: flowcontrolv1.SubjectKindServiceAccount,
				ServiceAccount: &flowcontrolv1.ServiceAccountSubject{Namespace: "telemetry", Name: "agent"}}}}}}}, gvk("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema"))
	put("flowschemas", "", "exempt", &flowcontrolv1.FlowSchema{ObjectMeta: metav1.ObjectMeta{Name: "exempt"},
		Spec: flowcontrolv1.FlowSchemaSpec{PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "exempt"}, MatchingPrecedence: 1}}, gvk("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema"))
	renew := metav1.NewMicroTime(now.Add(-2 * time.Second))
	put("leases", "kube-system", "apiserver-abc", &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "apiserver-abc", Namespace: "kube-system",
		Labels: map[string]string{"apiserver.kubernetes.io/identity": "kube-apiserver"}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("apiserver-abc_1"), RenewTime: &renew}}, gvk("coordination.k8s.io", "v1", "Lease"))
	put("endpoints", "default", "kubernetes", &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"},
		Subsets: []corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{{IP: "10.0.0.1"}}, Ports: []corev1.EndpointPort{{Port: 6443}}}}}, gvk("", "v1", "Endpoints"))
}

func TestCensus(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	now := time.Now()
	seedCluster(t, s, func(resource, ns, name string, obj runtime.Object, g schema.GroupVersionKind) {
		put(t, s, srv.Client, resource, ns, name, obj, g)
	}, now)
	cs, counter := s.Counting()
	c, err := cs.Census(ctx, etcd.ClusterCensusOptions{Since: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	pods := c.Resource("pods")
	if pods == nil || pods.Objects != 40 || !pods.Sized || pods.Bytes == 0 {
		t.Fatalf("pods: %+v", pods)
	}
	if len(pods.Namespaces) != 2 || pods.Namespaces[0].Namespace != "default" || pods.Namespaces[0].Objects != 30 || pods.Namespaces[0].Bytes == 0 {
		t.Errorf("pods by namespace: %+v", pods.Namespaces)
	}
	var ds *etcd.Workload
	for i := range c.Workloads {
		if c.Workloads[i].Kind == "DaemonSet" {
			ds = &c.Workloads[i]
		}
	}
	if ds == nil || !ds.Recent || ds.Pods != 3 || len(ds.Lists) != 2 || ds.Lists[0].Resource != "nodes" || ds.Lists[1].Resource != "pods" {
		t.Fatalf("daemonset: %+v", ds)
	}
	nodes := c.Resource("nodes")
	if ds.ListBytes != pods.Bytes+nodes.Bytes || ds.Footprint != 3*ds.ListBytes {
		t.Errorf("footprint: list %d (pods %d + nodes %d), footprint %d", ds.ListBytes, pods.Bytes, nodes.Bytes, ds.Footprint)
	}
	if c.Workloads[0].Name != "agent" {
		t.Errorf("workloads not by footprint: %+v", c.Workloads)
	}
	for _, w := range c.Workloads {
		if w.Name == "web" && (w.Recent || len(w.Lists) != 0 || w.Pods != 2) {
			t.Errorf("web: %+v", w)
		}
	}
	if w, ok := c.OwnerOf("telemetry", map[string]string{"app": "agent", "controller-revision-hash": "x"}); !ok || w.Name != "agent" {
		t.Errorf("owner of an agent pod: %v %v", w, ok)
	}
	if _, ok := c.OwnerOf("default", map[string]string{"app": "agent"}); ok {
		t.Error("owner matched across namespaces")
	}
	if len(c.PriorityClasses) != 2 || c.PriorityClasses[0].Name != "medium" || !c.PriorityClasses[0].GlobalDefault || !c.PriorityClasses[0].Recent || c.PriorityClasses[1].Recent {
		t.Errorf("priority classes: %+v", c.PriorityClasses)
	}
	if len(c.Scheduling) != 3 || c.Scheduling[0].Reason != "Preempted" || c.Scheduling[0].Related != "cortex-new/new-1" {
		t.Errorf("scheduling events: %+v", c.Scheduling)
	}
	if len(c.FlowSchemas) != 1 || c.FlowSchemas[0].Name != "vip-agent" || !c.FlowSchemas[0].Exempt || c.FlowSchemas[0].Subjects[0] != "serviceaccount:telemetry/agent" {
		t.Errorf("flow schemas: %+v", c.FlowSchemas)
	}
	if len(c.APIServers.Leases) != 1 || c.APIServers.Leases[0].Age > time.Minute || len(c.APIServers.Endpoints) != 1 || c.APIServers.Endpoints[0] != "10.0.0.1:6443" {
		t.Errorf("apiservers: %+v", c.APIServers)
	}
	if c.Nodes.Total != 3 || c.Nodes.Ready != 2 || c.Nodes.StaleLeases != 1 || c.Nodes.StaleOldest != "worker-2" || c.Nodes.Leases != 3 {
		t.Errorf("nodes: %+v", c.Nodes)
	}
	if len(c.Etcd) != 1 || !c.Etcd[0].Healthy || c.Etcd[0].DBSize == 0 || !c.Etcd[0].Leader {
		t.Errorf("etcd: %+v", c.Etcd)
	}
	st := counter.Stats()
	if st.Ranges == 0 || st.Keys == 0 || st.Status != 1 || st.Txns != 0 {
		t.Errorf("reads: %+v", st)
	}
	t.Logf("census reads: %+v", st)
}

// A large resource is sized from one sample page, not read whole.
func TestCensusEstimatesLargeResources(t *testing.T) {
	s, srv := newStore(t)
	ctx := context.Background()
	for i := range 2100 {
		put(t, s, srv.Client, "configmaps", "a", fmt.Sprintf("cm-%04d", i), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: fmt.Sprintf("cm-%04d", i)}, Data: map[string]string{"k": "v"}}, gvk("", "v1", "ConfigMap"))
	}
	cs, counter := s.Counting()
	c, err := cs.Census(ctx, etcd.ClusterCensusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm := c.Resource("configmaps")
	if cm == nil || cm.Objects != 2100 || !cm.Estimated || cm.Sized || cm.Bytes == 0 {
		t.Fatalf("configmaps: %+v", cm)
	}
	// Keys once (keys only), values of one sample page: far less than
	// all 2100 values.
	if st := counter.Stats(); st.Keys > 2100+600 {
		t.Errorf("read %d keys for a census of 2100 objects", st.Keys)
	}
}

func TestPodsByUID(t *testing.T) {
	s, srv := newStore(t)
	for i := range 5 {
		p := pod("ns", fmt.Sprintf("p-%d", i), "n", map[string]string{"app": "a", "i": fmt.Sprint(i)})
		p.UID = types.UID(fmt.Sprintf("uid-%d", i))
		put(t, s, srv.Client, "pods", "ns", p.Name, p, podGVK)
	}
	got, err := s.PodsByUID(context.Background(), map[string]bool{"uid-1": true, "uid-3": true, "uid-9": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["uid-1"].Name != "p-1" || got["uid-3"].Namespace != "ns" || got["uid-3"].Labels["i"] != "3" {
		t.Errorf("%+v", got)
	}
}
