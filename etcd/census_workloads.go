package etcd

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Workload is a DaemonSet, Deployment or StatefulSet as the census sees it:
// when it was created or last changed, how many pods it runs and what
// each of them may LIST cluster-wide.
type Workload struct {
	Kind      string    `json:"kind"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Created   time.Time `json:"created"`
	// Changed is the latest spec change recorded in managedFields (zero if
	// none after creation).
	Changed time.Time `json:"changed,omitzero"`
	// Recent: created or changed within the census's window.
	Recent bool `json:"recent,omitempty"`
	// Pods is how many pods it runs (a DaemonSet's: the nodes it is
	// scheduled on).
	Pods           int32  `json:"pods"`
	ServiceAccount string `json:"serviceAccount"`
	PriorityClass  string `json:"priorityClass,omitempty"`
	HostNetwork    bool   `json:"hostNetwork,omitempty"`
	// Lists are the resources its service account may list or watch
	// cluster-wide (through ClusterRoleBindings), with their size.
	Lists []ListGrant `json:"lists,omitempty"`
	// ListBytes is what one LIST of each of them costs; Footprint is
	// Pods × ListBytes: what one round of every pod listing costs.
	ListBytes int64 `json:"listBytes,omitempty"`
	Footprint int64 `json:"footprint,omitempty"`
	// Selector and PodLabels match its pods (not in JSON).
	Selector *metav1.LabelSelector `json:"-"`
}

// Ref is KIND NAMESPACE/NAME as a selector flag names it.
func (w Workload) Ref() string { return w.Namespace + "/" + w.Name }

// ListGrant is one resource a service account may list cluster-wide.
type ListGrant struct {
	Resource string `json:"resource"`
	Via      string `json:"via"` // the ClusterRoleBinding
	Objects  int    `json:"objects"`
	Bytes    int64  `json:"bytes"`
}

func (w *Workload) cost(c *ClusterCensus) {
	w.ListBytes = 0
	for i := range w.Lists {
		if rc := c.Resource(w.Lists[i].Resource); rc != nil {
			w.Lists[i].Objects, w.Lists[i].Bytes = rc.Objects, rc.Bytes
		}
		w.ListBytes += w.Lists[i].Bytes
	}
	w.Footprint = int64(w.Pods) * w.ListBytes
}

// rbac is the cluster-wide RBAC: which ClusterRoles each subject is bound
// to.
type rbac struct {
	roles    map[string][]rbacv1.PolicyRule
	bindings []*rbacv1.ClusterRoleBinding
	layout   *Layout
}

func (s *Store) readRBAC(ctx context.Context, rev int64) (*rbac, error) {
	rb := &rbac{roles: map[string][]rbacv1.PolicyRule{}, layout: s.Layout}
	if err := eachTyped(ctx, s, "clusterroles", rev, func(r *rbacv1.ClusterRole) { rb.roles[r.Name] = r.Rules }); err != nil {
		return nil, err
	}
	if err := eachTyped(ctx, s, "clusterrolebindings", rev, func(b *rbacv1.ClusterRoleBinding) { rb.bindings = append(rb.bindings, b) }); err != nil {
		return nil, err
	}
	return rb, nil
}

// listsOf returns the resources service account ns/name may list or watch
// in every namespace.
func (rb *rbac) listsOf(ns, name string) []ListGrant {
	seen := map[string]bool{}
	var out []ListGrant
	for _, b := range rb.bindings {
		if b.RoleRef.Kind != "ClusterRole" || !bindsServiceAccount(b.Subjects, ns, name) {
			continue
		}
		for _, rule := range rb.roles[b.RoleRef.Name] {
			if !slices.Contains(rule.Verbs, "list") && !slices.Contains(rule.Verbs, "watch") && !slices.Contains(rule.Verbs, "*") {
				continue
			}
			for _, r := range rb.resourcesOf(rule) {
				if !seen[r] {
					seen[r] = true
					out = append(out, ListGrant{Resource: r, Via: b.Name})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Resource < out[j].Resource })
	return out
}

func bindsServiceAccount(subjects []rbacv1.Subject, ns, name string) bool {
	for _, s := range subjects {
		switch {
		case s.Kind == "ServiceAccount" && s.Namespace == ns && s.Name == name:
			return true
		case s.Kind == "Group" && (s.Name == "system:serviceaccounts" || s.Name == "system:serviceaccounts:"+ns):
			return true
		}
	}
	return false
}

func (rb *rbac) resourcesOf(rule rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range builtins {
		if !slices.Contains(rule.APIGroups, "*") && !slices.Contains(rule.APIGroups, r.Group) {
			continue
		}
		if slices.Contains(rule.Resources, "*") || slices.Contains(rule.Resources, r.Name) {
			out = append(out, r.GroupResource())
		}
	}
	return out
}

// eachTyped lists a built-in resource at rev and calls fn for every object
// that decodes as T; the others are skipped (the census is best effort
// per object, never per resource).
func eachTyped[T any](ctx context.Context, s *Store, resource string, rev int64, fn func(T)) error {
	return eachTypedIn(ctx, s, resource, "", rev, fn)
}

func eachTypedIn[T any](ctx context.Context, s *Store, resource, ns string, rev int64, fn func(T)) error {
	r, err := s.Layout.Lookup(resource)
	if err != nil {
		return err
	}
	_, err = s.List(ctx, r, ListOptions{Namespace: ns, Revision: rev}, func(o *Object) error {
		if o.Decoded == nil {
			return nil
		}
		if t, ok := o.Decoded.Object.(T); ok {
			fn(t)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", r.GroupResource(), err)
	}
	return nil
}

// lastSpecChange is the latest managedFields entry that is not a status
// update: when someone last changed what the object asks for.
func lastSpecChange(m metav1.ObjectMeta) time.Time {
	var t time.Time
	for _, f := range m.ManagedFields {
		if f.Subresource != "" || f.Time == nil {
			continue
		}
		if f.Time.Time.After(t) {
			t = f.Time.Time
		}
	}
	if !t.After(m.CreationTimestamp.Time.Add(time.Second)) {
		return time.Time{}
	}
	return t
}

func (s *Store) workloads(ctx context.Context, rev int64, cutoff time.Time, rb *rbac) ([]Workload, error) {
	var out []Workload
	add := func(kind string, m metav1.ObjectMeta, pods int32, sel *metav1.LabelSelector, spec corev1.PodSpec) {
		w := Workload{Kind: kind, Namespace: m.Namespace, Name: m.Name, Created: m.CreationTimestamp.Time, Changed: lastSpecChange(m),
			Pods: pods, Selector: sel, ServiceAccount: spec.ServiceAccountName, PriorityClass: spec.PriorityClassName, HostNetwork: spec.HostNetwork}
		if w.ServiceAccount == "" {
			w.ServiceAccount = "default"
		}
		w.Recent = w.Created.After(cutoff) || w.Changed.After(cutoff)
		w.Lists = rb.listsOf(w.Namespace, w.ServiceAccount)
		out = append(out, w)
	}
	if err := eachTyped(ctx, s, "daemonsets", rev, func(d *appsv1.DaemonSet) {
		add("DaemonSet", d.ObjectMeta, max(d.Status.CurrentNumberScheduled, d.Status.NumberReady), d.Spec.Selector, d.Spec.Template.Spec)
	}); err != nil {
		return nil, err
	}
	if err := eachTyped(ctx, s, "deployments", rev, func(d *appsv1.Deployment) {
		add("Deployment", d.ObjectMeta, d.Status.Replicas, d.Spec.Selector, d.Spec.Template.Spec)
	}); err != nil {
		return nil, err
	}
	if err := eachTyped(ctx, s, "statefulsets", rev, func(d *appsv1.StatefulSet) {
		add("StatefulSet", d.ObjectMeta, d.Status.Replicas, d.Spec.Selector, d.Spec.Template.Spec)
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// OwnerOf finds the workload whose selector matches a pod's labels in its
// namespace: how a pod seen on a node (its CRI sandbox carries the pod's
// labels) is tied to what runs it, without reading the pod. DaemonSets and
// StatefulSets are preferred over Deployments when several match.
func (c *ClusterCensus) OwnerOf(namespace string, podLabels map[string]string) (*Workload, bool) {
	var best *Workload
	for i := range c.Workloads {
		w := &c.Workloads[i]
		if w.Namespace != namespace || w.Selector == nil || !selectorMatches(w.Selector, podLabels) {
			continue
		}
		if best == nil || (best.Kind == "Deployment" && w.Kind != "Deployment") {
			best = w
		}
	}
	return best, best != nil
}

func selectorMatches(sel *metav1.LabelSelector, lbls map[string]string) bool {
	if len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 {
		return false // an empty selector matches everything: no evidence
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(lbls))
}
