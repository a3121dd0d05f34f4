package steps

import (
	"context"
	"fmt"
	"sort"
	"strings"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	autoscalingv2beta2 "k8s.io/api/autoscaling/v2beta2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
)

// OpAPIServerScale is the op of a hosted API server's scale: an etcd
// change, undone (exact bytes back) as every etcd change is.
const OpAPIServerScale = "apiserver-scale"

// A hosted control plane runs its kube-apiserver as a Deployment or a
// StatefulSet in a hosting cluster, and something keeps it there: an
// operator (HyperShift, Kamaji, Gardener, k0smotron), a Helm release, an
// autoscaler. Scaling it in etcd works until that owner reconciles and puts
// its own replicas back, so the owner is named before the change and the
// change is refused without --force: the operator is told which object to
// change instead.

// OwnerVia says how an owner was found.
type OwnerVia string

const (
	// ViaOwnerReference: metadata.ownerReferences names it.
	ViaOwnerReference OwnerVia = "ownerReference"
	// ViaMarker: a label or annotation an operator puts on what it manages.
	ViaMarker OwnerVia = "marker"
	// ViaAutoscaler: a HorizontalPodAutoscaler targets the workload.
	ViaAutoscaler OwnerVia = "autoscaler"
)

// Owner is what keeps a workload's replicas: it will put them back after
// breakglass changes them.
type Owner struct {
	// Kind, APIVersion, Namespace and Name name the owner's object, where
	// it is known (Kind is "" when only the manager is).
	Kind, APIVersion, Namespace, Name string
	// Manager names who acts for it when no object is known ("Helm",
	// "gardenlet"), or the operator behind a known object.
	Manager string
	// Via says how it was found; Evidence is the exact marker
	// ("label kamaji.clastix.io/name=foo", "ownerReference (controller)").
	Via      OwnerVia
	Evidence string
	// Instead is what the operator should change instead.
	Instead string
	// KeepsReplicas is set when the owner manages the object but leaves
	// spec.replicas alone (Gardener's preserve-replicas): a note, not a
	// refusal.
	KeepsReplicas bool
}

// String names the owner: "HostedControlPlane hypershift.openshift.io/v1beta1
// clusters-foo/foo", or its manager.
func (o Owner) String() string {
	if o.Kind == "" {
		return o.Manager
	}
	ref := o.Name
	if o.Namespace != "" {
		ref = o.Namespace + "/" + o.Name
	}
	return fmt.Sprintf("%s %s %s", o.Kind, o.APIVersion, ref)
}

// finding is the sentence that says what the owner will do.
func (o Owner) finding(what string) string {
	switch o.Via {
	case ViaOwnerReference:
		return fmt.Sprintf("%s is owned by %s: its operator will put replicas back", what, o)
	case ViaAutoscaler:
		return fmt.Sprintf("%s is scaled by %s (%s): it will put replicas back", what, o, o.Evidence)
	}
	if o.KeepsReplicas {
		return fmt.Sprintf("%s is managed by %s (%s), which keeps the replicas it finds", what, o, o.Evidence)
	}
	return fmt.Sprintf("%s is managed by %s (%s): it will put replicas back", what, o, o.Evidence)
}

func (o Owner) instead() string {
	if o.Instead != "" {
		return o.Instead
	}
	return "the owner's replicas"
}

// OwnersOf reads who keeps the replicas of a workload from its metadata:
// its ownerReferences (the controller first), else the markers of the
// hosted control-plane operators and of app.kubernetes.io/managed-by. The
// owner of an ownerReference is in the object's namespace.
func OwnersOf(m metav1.Object) []Owner {
	refs := append([]metav1.OwnerReference(nil), m.GetOwnerReferences()...)
	sort.SliceStable(refs, func(i, j int) bool { return isController(refs[i]) && !isController(refs[j]) })
	var out []Owner
	for _, r := range refs {
		o := Owner{Kind: r.Kind, APIVersion: r.APIVersion, Namespace: m.GetNamespace(), Name: r.Name,
			Via: ViaOwnerReference, Evidence: "ownerReference"}
		if isController(r) {
			o.Evidence = "ownerReference (controller)"
		}
		o.Manager, o.Instead = knownOwner(o)
		out = append(out, o)
	}
	if len(out) > 0 {
		return out
	}
	return markers(m)
}

func isController(r metav1.OwnerReference) bool { return r.Controller != nil && *r.Controller }

// knownOwner says, for the owner kinds of the hosted control planes, who
// acts for them and where their control plane's replicas come from.
func knownOwner(o Owner) (manager, instead string) {
	group := schema.FromAPIVersionAndKind(o.APIVersion, o.Kind).Group
	switch {
	case group == "hypershift.openshift.io" && o.Kind == "HostedControlPlane":
		return "HyperShift's control-plane-operator", fmt.Sprintf("the HostedCluster of %s (HyperShift sets the control plane's replicas from its controllerAvailabilityPolicy)", o)
	case group == "kamaji.clastix.io" && o.Kind == "TenantControlPlane":
		return "Kamaji", fmt.Sprintf("spec.controlPlane.deployment.replicas of %s", o)
	case group == "k0smotron.io" && o.Kind == "Cluster":
		return "k0smotron", fmt.Sprintf("spec.replicas of %s", o)
	}
	return "", "the owner's replicas"
}

// Label and annotation keys of the operators. Each is what the operator's
// own code sets on the workloads it renders: HyperShift's control-plane
// operator labels them hypershift.openshift.io/managed-by, Kamaji labels a
// TenantControlPlane's Deployment kamaji.clastix.io/name=<its name>,
// k0smotron labels a Cluster's StatefulSet app=k0smotron and cluster=<its
// name> (newer releases also k0smotron.io/cluster), gardenlet labels a
// shoot's control plane gardener.cloud/role=controlplane, and
// gardener-resource-manager annotates what a ManagedResource holds with
// resources.gardener.cloud/origin=[cluster:]NAMESPACE/NAME. All of them
// also set ownerReferences where the owner is in the same cluster, which
// win over these.
const (
	hypershiftManagedBy = "hypershift.openshift.io/managed-by"
	hypershiftCluster   = "hypershift.openshift.io/cluster"
	kamajiName          = "kamaji.clastix.io/name"
	k0smotronCluster    = "k0smotron.io/cluster"
	gardenerRole        = "gardener.cloud/role"
	gardenerOrigin      = "resources.gardener.cloud/origin"
	gardenerPreserve    = "resources.gardener.cloud/preserve-replicas"
	managedBy           = "app.kubernetes.io/managed-by"
	helmRelease         = "meta.helm.sh/release-name"
	helmReleaseNS       = "meta.helm.sh/release-namespace"
)

// markers finds the operators of an object without ownerReferences from
// their labels and annotations. The generic app.kubernetes.io/managed-by
// counts only when no operator's own marker is there.
func markers(m metav1.Object) []Owner {
	labels, ann := m.GetLabels(), m.GetAnnotations()
	ns := m.GetNamespace()
	var out []Owner
	if v, ok := labels[hypershiftManagedBy]; ok {
		o := Owner{Manager: "HyperShift's " + dashIfEmpty(v), Via: ViaMarker, Evidence: "label " + hypershiftManagedBy + "=" + v,
			Instead: "the HostedCluster of namespace " + ns + " (HyperShift sets the control plane's replicas from its controllerAvailabilityPolicy)"}
		if hc := ann[hypershiftCluster]; strings.Count(hc, "/") == 1 {
			o.Instead = "HostedCluster " + hc + " (HyperShift sets the control plane's replicas from its controllerAvailabilityPolicy)"
		}
		out = append(out, o)
	} else if k, ok := prefixed(labels, ann, "hypershift.openshift.io/"); ok {
		out = append(out, Owner{Manager: "HyperShift", Via: ViaMarker, Evidence: k,
			Instead: "the HostedCluster of namespace " + ns})
	}
	if v := labels[kamajiName]; v != "" {
		out = append(out, Owner{Kind: "TenantControlPlane", APIVersion: "kamaji.clastix.io/v1alpha1", Namespace: ns, Name: v,
			Manager: "Kamaji", Via: ViaMarker, Evidence: "label " + kamajiName + "=" + v,
			Instead: fmt.Sprintf("spec.controlPlane.deployment.replicas of TenantControlPlane %s/%s", ns, v)})
	} else if k, ok := prefixed(labels, ann, "kamaji.clastix.io/"); ok {
		out = append(out, Owner{Manager: "Kamaji", Via: ViaMarker, Evidence: k, Instead: "its TenantControlPlane's spec.controlPlane.deployment.replicas"})
	}
	if v := k0smotronName(labels); v != "" {
		ev := "label " + k0smotronCluster + "=" + v
		if labels[k0smotronCluster] == "" {
			ev = "labels app=k0smotron, cluster=" + v
		}
		out = append(out, Owner{Kind: "Cluster", APIVersion: "k0smotron.io/v1beta1", Namespace: ns, Name: v,
			Manager: "k0smotron", Via: ViaMarker, Evidence: ev, Instead: fmt.Sprintf("spec.replicas of Cluster k0smotron.io/v1beta1 %s/%s", ns, v)})
	}
	if v := ann[gardenerOrigin]; v != "" {
		mr := v[strings.LastIndex(v, ":")+1:] // [clusterID:]NAMESPACE/NAME
		o := Owner{Manager: "gardener-resource-manager", Via: ViaMarker, Evidence: "annotation " + gardenerOrigin + "=" + v,
			Instead:       "the ManagedResource " + mr + " (gardener-resource-manager puts its objects back as it holds them)",
			KeepsReplicas: ann[gardenerPreserve] == "true"}
		if mns, mname, ok := strings.Cut(mr, "/"); ok && mns != "" && mname != "" {
			o.Kind, o.APIVersion, o.Namespace, o.Name = "ManagedResource", "resources.gardener.cloud/v1alpha1", mns, mname
		}
		if o.KeepsReplicas {
			o.Evidence += ", " + gardenerPreserve + "=true"
		}
		out = append(out, o)
	} else if labels[gardenerRole] == "controlplane" {
		out = append(out, Owner{Manager: "gardenlet", Via: ViaMarker, Evidence: "label " + gardenerRole + "=controlplane",
			Instead: gardenerShoot(ns) + " (gardenlet reconciles its control plane from it)"})
	} else if k, ok := prefixed(labels, ann, "resources.gardener.cloud/"); ok {
		out = append(out, Owner{Manager: "gardener-resource-manager", Via: ViaMarker, Evidence: k, Instead: "the ManagedResource that holds it"})
	}
	if len(out) > 0 {
		return out
	}
	if v := labels[managedBy]; v != "" {
		o := Owner{Manager: v, Via: ViaMarker, Evidence: "label " + managedBy + "=" + v,
			Instead: "where " + v + " deploys it from"}
		if rel := ann[helmRelease]; strings.EqualFold(v, "Helm") && rel != "" {
			o.Manager = "Helm release " + ref2(ann[helmReleaseNS], rel)
			o.Instead = "the release's values (helm upgrade puts replicas back, and so does a GitOps sync)"
		}
		out = append(out, o)
	}
	return out
}

// prefixed returns the first label or annotation (sorted) whose key has
// prefix, as evidence.
func prefixed(labels, ann map[string]string, prefix string) (string, bool) {
	for _, set := range []struct {
		what string
		m    map[string]string
	}{{"label", labels}, {"annotation", ann}} {
		keys := make([]string, 0, len(set.m))
		for k := range set.m {
			if strings.HasPrefix(k, prefix) {
				keys = append(keys, k)
			}
		}
		if len(keys) > 0 {
			sort.Strings(keys)
			return set.what + " " + keys[0] + "=" + set.m[keys[0]], true
		}
	}
	return "", false
}

func k0smotronName(labels map[string]string) string {
	if v := labels[k0smotronCluster]; v != "" {
		return v
	}
	if labels["app"] == "k0smotron" {
		return labels["cluster"]
	}
	return ""
}

// gardenerShoot names the Shoot of a seed namespace shoot--PROJECT--NAME,
// Gardener's convention for the namespace of a shoot's control plane.
func gardenerShoot(ns string) string {
	if p := strings.SplitN(ns, "--", 3); len(p) == 3 && p[0] == "shoot" && p[1] != "" && p[2] != "" {
		return fmt.Sprintf("Shoot %s of project %s", p[2], p[1])
	}
	return "the Shoot of namespace " + ns
}

func ref2(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Autoscalers returns the HorizontalPodAutoscalers in o's namespace whose
// scaleTargetRef is o, as owners: they put replicas back within their
// bounds when they next run.
func Autoscalers(ctx context.Context, s *etcd.Store, o Object) ([]Owner, error) {
	r, err := s.Layout.Lookup("horizontalpodautoscalers")
	if err != nil {
		return nil, err
	}
	var out []Owner
	_, err = s.List(ctx, r, etcd.ListOptions{Namespace: o.Namespace, Consistency: etcd.Linearizable}, func(obj *etcd.Object) error {
		if obj.Decoded == nil {
			return nil
		}
		kind, name, apiVersion, bounds, ok := hpaTarget(obj.Decoded)
		if !ok || kind != o.Resource.Kind || name != o.Name || schema.FromAPIVersionAndKind(apiVersion, kind).Group != o.Resource.Group {
			return nil
		}
		out = append(out, Owner{Kind: "HorizontalPodAutoscaler", APIVersion: obj.Decoded.GVK.GroupVersion().String(),
			Namespace: obj.Namespace, Name: obj.Name, Manager: "the HorizontalPodAutoscaler controller", Via: ViaAutoscaler,
			Evidence: bounds, Instead: fmt.Sprintf("minReplicas and maxReplicas of HorizontalPodAutoscaler %s/%s", obj.Namespace, obj.Name)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look for HorizontalPodAutoscalers of %s %s: %w", o.Resource.Singular, o.Ref(), err)
	}
	return out, nil
}

func hpaTarget(d *etcd.Decoded) (kind, name, apiVersion, bounds string, ok bool) {
	b := func(min *int32, max int32) string {
		lo := int32(1)
		if min != nil {
			lo = *min
		}
		return fmt.Sprintf("minReplicas %d, maxReplicas %d", lo, max)
	}
	switch h := d.Object.(type) {
	case *autoscalingv2.HorizontalPodAutoscaler:
		t := h.Spec.ScaleTargetRef
		return t.Kind, t.Name, t.APIVersion, b(h.Spec.MinReplicas, h.Spec.MaxReplicas), true
	case *autoscalingv1.HorizontalPodAutoscaler:
		t := h.Spec.ScaleTargetRef
		return t.Kind, t.Name, t.APIVersion, b(h.Spec.MinReplicas, h.Spec.MaxReplicas), true
	case *autoscalingv2beta2.HorizontalPodAutoscaler:
		t := h.Spec.ScaleTargetRef
		return t.Kind, t.Name, t.APIVersion, b(h.Spec.MinReplicas, h.Spec.MaxReplicas), true
	}
	return "", "", "", "", false
}

// ResolveAPIServer finds a hosted API server given as NAMESPACE/NAME: its
// Deployment, else its StatefulSet. o.Resource, when set, is used as is.
func ResolveAPIServer(ctx context.Context, s *etcd.Store, o Object) (Object, error) {
	return ResolveHosted(ctx, s, o, "API server")
}

// ResolveHosted finds a hosted control plane's component (role: "API
// server", "controller-manager") given as NAMESPACE/NAME: its Deployment,
// else its StatefulSet. o.Resource, when set, is used as is.
func ResolveHosted(ctx context.Context, s *etcd.Store, o Object, role string) (Object, error) {
	if o.Resource.Name != "" {
		return o, nil
	}
	var keys []string
	for _, name := range []string{"deployments", "statefulsets"} {
		r, err := s.Layout.Lookup(name)
		if err != nil {
			return o, err
		}
		key := s.Layout.Key(r, o.Namespace, o.Name)
		kv, _, err := s.Get(ctx, key, etcd.Linearizable)
		if err != nil {
			return o, err
		}
		if kv != nil {
			o.Resource = r
			return o, nil
		}
		keys = append(keys, key)
	}
	return o, fmt.Errorf("no hosted %s %s: neither deployment %s nor statefulset %s is in etcd (no key %s or %s)\n"+
		"hint: check the name (breakglass get deployments,statefulsets -n %s) and --etcd-prefix; this etcd must be the hosting cluster's",
		role, o.Ref(), o.Ref(), o.Ref(), keys[0], keys[1], o.Namespace)
}

// ParseHosted parses [deployment|statefulset/]NAMESPACE/NAME, a hosted
// control plane's component; its Resource is unset when only
// NAMESPACE/NAME was given (ResolveHosted finds it).
func ParseHosted(s string) (Object, error) {
	parts := strings.Split(s, "/")
	var o Object
	switch len(parts) {
	case 2:
	case 3:
		r, err := etcd.NewLayout("").Lookup(parts[0])
		if err != nil {
			return o, err
		}
		if g := r.GroupResource(); g != "deployments.apps" && g != "statefulsets.apps" {
			return o, fmt.Errorf("a hosted control plane's component is a deployment or a statefulset, not %s", g)
		}
		o.Resource, parts = r, parts[1:]
	default:
		return o, fmt.Errorf("want [deployment|statefulset/]NAMESPACE/NAME")
	}
	if parts[0] == "" || parts[1] == "" {
		return o, fmt.Errorf("want [deployment|statefulset/]NAMESPACE/NAME")
	}
	o.Namespace, o.Name = parts[0], parts[1]
	return o, nil
}

// ScaleAPIServer plans spec.replicas of a hosted control plane's API
// server (a Deployment or StatefulSet in the hosting cluster, o.Resource
// found by ResolveAPIServer when unset). Scaling the API server is the
// command's purpose, so the protected-workload check does not apply; but
// an owner that will put the replicas back, and replicas 0 (the hosted
// control plane down), are refused unless force, and with force they are
// notes of the plan.
func ScaleAPIServer(k *change.Etcd, target Object, replicas int32, force bool) change.Planner {
	return scaleHosted(k, target, replicas, force, "API server", OpAPIServerScale, true)
}

// scaleHosted plans spec.replicas of a hosted control plane's component
// (role names it), with its owners refused unless force; refuseZero
// refuses replicas 0 the same way.
func scaleHosted(k *change.Etcd, target Object, replicas int32, force bool, role, op string, refuseZero bool) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		o, err := ResolveHosted(ctx, k.Store, target, role)
		if err != nil {
			return nil, err
		}
		what := o.Resource.Singular + " " + o.Ref()
		plan := etcdPlanner(k, op, fmt.Sprintf("scale the %s %s to %d", role, what, replicas), true,
			func(ctx context.Context, id string, w etcd.WriteOptions) (*etcd.Change, error) {
				return k.Store.PlanUpdate(ctx, o.Resource, o.Namespace, o.Name, etcd.Scale(replicas), w)
			})
		p, err := plan(ctx, id)
		if err != nil || len(p.Items) != 1 {
			return p, err // nothing to write: nothing to refuse
		}
		c, ok := p.Items[0].Payload.(*etcd.Change)
		if !ok || c.Before == nil {
			return p, nil
		}
		d, err := k.Store.Codec.Decode(c.Key, c.Before, c.BeforeRevision)
		if err != nil {
			return nil, err
		}
		owners := OwnersOf(d.Meta())
		hpas, err := Autoscalers(ctx, k.Store, o)
		if err != nil {
			return nil, err
		}
		owners = append(owners, hpas...)

		// Each problem is refused without force, and a note with it.
		type problem struct{ text, hint, forced string }
		var problems []problem
		if replicas == 0 && refuseZero {
			problems = append(problems, problem{
				text:   fmt.Sprintf("scaling %s to 0 takes the hosted control plane down: none of its API servers answers until it is scaled up again", what),
				hint:   "hint: pass --force if the incident needs it down (breakglass undo CHANGE-ID scales it back)",
				forced: "scaling it to 0 anyway (--force)",
			})
		}
		for _, ow := range owners {
			if ow.KeepsReplicas {
				p.Notes = append(p.Notes, ow.finding(what))
				continue
			}
			problems = append(problems, problem{
				text:   ow.finding(what),
				hint:   fmt.Sprintf("hint: change %s instead, or pass --force to scale it anyway (the operator may revert it)", ow.instead()),
				forced: fmt.Sprintf("scaling it anyway (--force): change %s too, or it may be reverted", ow.instead()),
			})
		}
		if len(problems) == 0 {
			return p, nil
		}
		if !force {
			var lines, hints []string
			for _, pr := range problems {
				lines, hints = append(lines, pr.text), append(hints, pr.hint)
			}
			return nil, change.Refusedf("%s", strings.Join(append(lines, hints...), "\n"))
		}
		for _, pr := range problems {
			p.Notes = append(p.Notes, pr.text+"; "+pr.forced)
		}
		return p, nil
	}
}
