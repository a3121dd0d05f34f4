package steps

import (
	"context"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/breakglass/breakglass/etcd"
)

// ClusterPods are the Pod objects in etcd of the namespaces a selection
// touches, by uid: what the nodes cannot say (pull policy, priority class,
// owner).
type ClusterPods map[string]*corev1.Pod

// ReadPods reads the pods of the namespaces from etcd ("" reads every
// namespace).
func ReadPods(ctx context.Context, s *etcd.Store, namespaces []string) (ClusterPods, error) {
	r, err := s.Resolve(ctx, "pods")
	if err != nil {
		return nil, err
	}
	out := ClusterPods{}
	for _, ns := range namespaces {
		_, err := s.List(ctx, r, etcd.ListOptions{Namespace: ns}, func(o *etcd.Object) error {
			if o.Err != nil || o.Decoded == nil {
				return nil
			}
			if p, ok := o.Decoded.Object.(*corev1.Pod); ok {
				out[string(p.UID)] = p
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read pods of namespace %q from etcd: %w", ns, err)
		}
	}
	return out, nil
}

// Workload is NAMESPACE/NAME of a DaemonSet, Deployment or StatefulSet.
type Workload struct {
	Kind      string // DaemonSet, Deployment, StatefulSet
	Namespace string
	Name      string
}

func (w Workload) String() string { return strings.ToLower(w.Kind) + " " + w.Namespace + "/" + w.Name }

// Object is the workload as an etcd object name.
func (w Workload) Object(ctx context.Context, s *etcd.Store) (Object, error) {
	res := map[string]string{"DaemonSet": "daemonsets.apps", "Deployment": "deployments.apps", "StatefulSet": "statefulsets.apps"}[w.Kind]
	r, err := s.Resolve(ctx, res)
	if err != nil {
		return Object{}, err
	}
	return Object{Resource: r, Namespace: w.Namespace, Name: w.Name}, nil
}

// ParseWorkload reads NAMESPACE/NAME for a --daemonset or --deployment flag.
func ParseWorkload(kind, flag, v string) (Workload, error) {
	ns, name, ok := strings.Cut(v, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return Workload{}, fmt.Errorf("%s %q: want NAMESPACE/NAME", flag, v)
	}
	return Workload{Kind: kind, Namespace: ns, Name: name}, nil
}

// WorkloadPods returns the uids of the workload's pods, from etcd: the
// pods whose controller is the DaemonSet or StatefulSet, or one of the
// Deployment's ReplicaSets.
func WorkloadPods(ctx context.Context, s *etcd.Store, w Workload, cluster ClusterPods) (map[string]bool, error) {
	o, err := w.Object(ctx, s)
	if err != nil {
		return nil, err
	}
	obj, err := s.GetObject(ctx, o.Resource, o.Namespace, o.Name, etcd.Linearizable)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", w, err)
	}
	owners := map[string]bool{}
	switch x := obj.Decoded.Object.(type) {
	case *appsv1.DaemonSet:
		owners[string(x.UID)] = true
	case *appsv1.StatefulSet:
		owners[string(x.UID)] = true
	case *appsv1.Deployment:
		rsRes, err := s.Resolve(ctx, "replicasets.apps")
		if err != nil {
			return nil, err
		}
		_, err = s.List(ctx, rsRes, etcd.ListOptions{Namespace: w.Namespace}, func(o *etcd.Object) error {
			if rs, ok := o.Decoded.Object.(*appsv1.ReplicaSet); ok && o.Err == nil {
				if c := metav1.GetControllerOf(rs); c != nil && c.UID == x.UID {
					owners[string(rs.UID)] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%s: etcd holds a %T", w, obj.Decoded.Object)
	}
	uids := map[string]bool{}
	for uid, p := range cluster {
		if p.Namespace != w.Namespace {
			continue
		}
		if c := metav1.GetControllerOf(p); c != nil && owners[string(c.UID)] {
			uids[uid] = true
		}
	}
	return uids, nil
}

// OwnerOf returns the workload that owns a pod (through its ReplicaSet
// for a Deployment), or false for a bare pod.
func OwnerOf(ctx context.Context, s *etcd.Store, p *corev1.Pod) (Workload, bool, error) {
	c := metav1.GetControllerOf(p)
	if c == nil {
		return Workload{}, false, nil
	}
	switch c.Kind {
	case "DaemonSet", "StatefulSet":
		return Workload{Kind: c.Kind, Namespace: p.Namespace, Name: c.Name}, true, nil
	case "ReplicaSet":
		r, err := s.Resolve(ctx, "replicasets.apps")
		if err != nil {
			return Workload{}, false, err
		}
		o, err := s.GetObject(ctx, r, p.Namespace, c.Name, etcd.Linearizable)
		if err != nil {
			return Workload{}, false, fmt.Errorf("replicaset %s/%s of pod %s: %w", p.Namespace, c.Name, p.Name, err)
		}
		rs, ok := o.Decoded.Object.(*appsv1.ReplicaSet)
		if !ok {
			return Workload{}, false, nil
		}
		if d := metav1.GetControllerOf(rs); d != nil && d.Kind == "Deployment" {
			return Workload{Kind: "Deployment", Namespace: p.Namespace, Name: d.Name}, true, nil
		}
		return Workload{}, false, fmt.Errorf("pod %s/%s belongs to replicaset %s, which no Deployment owns: scale the replicaset instead", p.Namespace, p.Name, c.Name)
	}
	return Workload{}, false, fmt.Errorf("pod %s/%s is owned by a %s (%s): breakglass cannot neutralise that owner in etcd", p.Namespace, p.Name, c.Kind, c.Name)
}

// replicasOf reads spec.replicas of a decoded Deployment or StatefulSet
// (1 when unset, as the apiserver defaults it).
func replicasOf(d *etcd.Decoded) (int32, bool) {
	var r *int32
	switch x := d.Object.(type) {
	case *appsv1.Deployment:
		r = x.Spec.Replicas
	case *appsv1.StatefulSet:
		r = x.Spec.Replicas
	case *appsv1.ReplicaSet:
		r = x.Spec.Replicas
	default:
		return 0, false
	}
	if r == nil {
		return 1, true
	}
	return *r, true
}
