package etcd

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// NeutralisePriorityClass returns a mutation that takes a PriorityClass's
// power to cause a preemption cascade: globalDefault false (new pods
// without a class no longer get it) and preemptionPolicy Never (pods
// admitted with it from now on wait for room instead of evicting others).
// Its value is left alone: the pods that have it keep their place. Both
// fields are immutable through the API (value and preemptionPolicy) or
// need the API up; in etcd they are written as any other field.
func NeutralisePriorityClass() Mutate {
	return func(obj runtime.Object) (string, error) {
		pc, ok := obj.(*schedulingv1.PriorityClass)
		if !ok {
			return "", fmt.Errorf("not a PriorityClass: %T", obj)
		}
		never := corev1.PreemptNever
		was := "PreemptLowerPriority" // the API server's default when unset
		if pc.PreemptionPolicy != nil {
			was = string(*pc.PreemptionPolicy)
		}
		if !pc.GlobalDefault && was == string(never) {
			return "", ErrNoChange
		}
		var parts []string
		if pc.GlobalDefault {
			parts = append(parts, "globalDefault true -> false")
		}
		if was != string(never) {
			parts = append(parts, "preemptionPolicy "+was+" -> Never")
		}
		pc.GlobalDefault = false
		pc.PreemptionPolicy = &never
		return strings.Join(parts, ", "), nil
	}
}

// Scale returns a mutation that sets spec.replicas of a Deployment,
// StatefulSet or ReplicaSet.
func Scale(replicas int32) Mutate {
	return func(obj runtime.Object) (string, error) {
		var p **int32
		switch o := obj.(type) {
		case *appsv1.Deployment:
			p = &o.Spec.Replicas
		case *appsv1.StatefulSet:
			p = &o.Spec.Replicas
		case *appsv1.ReplicaSet:
			p = &o.Spec.Replicas
		default:
			return "", fmt.Errorf("cannot scale a %T", obj)
		}
		old := int32(1) // the API server's default when unset
		if *p != nil {
			old = **p
		}
		if *p != nil && old == replicas {
			return "", ErrNoChange
		}
		r := replicas
		*p = &r
		return fmt.Sprintf("replicas %d -> %d", old, replicas), nil
	}
}

// PauseLabel is the node label a paused DaemonSet's pods require. No node has
// it, so the DaemonSet controller removes the pods from every node.
const PauseLabel = "breakglass.io/paused"

// PausedByAnnotation records, on a paused DaemonSet, the change that paused
// it.
const PausedByAnnotation = "breakglass.io/paused-by"

// PauseDaemonSet returns a mutation that pins a DaemonSet's pod template to
// a node selector no node matches. changeID is recorded in an annotation.
func PauseDaemonSet(changeID string) Mutate {
	return func(obj runtime.Object) (string, error) {
		ds, ok := obj.(*appsv1.DaemonSet)
		if !ok {
			return "", fmt.Errorf("not a DaemonSet: %T", obj)
		}
		if _, paused := ds.Spec.Template.Spec.NodeSelector[PauseLabel]; paused {
			return "", ErrNoChange
		}
		if ds.Spec.Template.Spec.NodeSelector == nil {
			ds.Spec.Template.Spec.NodeSelector = map[string]string{}
		}
		ds.Spec.Template.Spec.NodeSelector[PauseLabel] = "true"
		if ds.Annotations == nil {
			ds.Annotations = map[string]string{}
		}
		ds.Annotations[PausedByAnnotation] = changeID
		return fmt.Sprintf("pod template nodeSelector += %s=true (no node matches)", PauseLabel), nil
	}
}

// ResumeDaemonSet returns a mutation that removes what PauseDaemonSet added,
// which gives back the exact previous spec unless someone changed the spec
// while it was paused (their change is kept).
func ResumeDaemonSet() Mutate {
	return func(obj runtime.Object) (string, error) {
		ds, ok := obj.(*appsv1.DaemonSet)
		if !ok {
			return "", fmt.Errorf("not a DaemonSet: %T", obj)
		}
		if _, paused := ds.Spec.Template.Spec.NodeSelector[PauseLabel]; !paused {
			return "", ErrNoChange
		}
		delete(ds.Spec.Template.Spec.NodeSelector, PauseLabel)
		if len(ds.Spec.Template.Spec.NodeSelector) == 0 {
			ds.Spec.Template.Spec.NodeSelector = nil
		}
		delete(ds.Annotations, PausedByAnnotation)
		if len(ds.Annotations) == 0 {
			ds.Annotations = nil
		}
		return fmt.Sprintf("pod template nodeSelector -= %s", PauseLabel), nil
	}
}
