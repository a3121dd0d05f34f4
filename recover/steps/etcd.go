// Package steps holds the levers breakglass pulls, as planners for the
// change engine (recover/change): each reads the state it needs from etcd
// or the nodes and returns the exact changes. Commands and runbook steps
// both build their changes here.
package steps

import (
	"context"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// OpPriorityClassNeutralise is the op of NeutralisePriorityClass: an etcd
// change, undone (exact bytes back) as every etcd change is.
const OpPriorityClassNeutralise = "priorityclass-neutralise"

// Object names one Kubernetes object in etcd.
type Object struct {
	Resource        etcd.Resource
	Namespace, Name string
}

// Ref is NAMESPACE/NAME, or NAME for a cluster-scoped object.
func (o Object) Ref() string {
	if o.Namespace == "" {
		return o.Name
	}
	return o.Namespace + "/" + o.Name
}

// Scale plans spec.replicas = replicas on a Deployment, StatefulSet or
// ReplicaSet. Control-plane workloads are refused unless force.
func Scale(k *change.Etcd, o Object, replicas int32, force bool) change.Planner {
	return etcdPlanner(k, "scale", fmt.Sprintf("scale %s %s to %d", o.Resource.GroupResource(), o.Ref(), replicas), force,
		func(ctx context.Context, id string, w etcd.WriteOptions) (*etcd.Change, error) {
			return k.Store.PlanUpdate(ctx, o.Resource, o.Namespace, o.Name, etcd.Scale(replicas), w)
		})
}

// PauseDaemonSet plans pinning a DaemonSet's pod template to a node
// selector no node matches; the change's ID is recorded on it so that
// resume can compare with the spec before the pause.
func PauseDaemonSet(k *change.Etcd, o Object, force bool) change.Planner {
	return etcdPlanner(k, "daemonset-pause", fmt.Sprintf("pause daemonset %s", o.Ref()), force,
		func(ctx context.Context, id string, w etcd.WriteOptions) (*etcd.Change, error) {
			return k.Store.PlanUpdate(ctx, o.Resource, o.Namespace, o.Name, etcd.PauseDaemonSet(id), w)
		})
}

// ResumeDaemonSet plans removing the pause selector again. With the
// journal's records, the plan says (a note) when the spec that resume
// leaves differs from the one before the pause: someone changed it while
// it was paused, and their change is kept.
func ResumeDaemonSet(k *change.Etcd, o Object, records []journal.Record) change.Planner {
	plan := etcdPlanner(k, "daemonset-resume", fmt.Sprintf("resume daemonset %s", o.Ref()), true,
		func(ctx context.Context, id string, w etcd.WriteOptions) (*etcd.Change, error) {
			return k.Store.PlanUpdate(ctx, o.Resource, o.Namespace, o.Name, etcd.ResumeDaemonSet(), w)
		})
	return func(ctx context.Context, id string) (*change.Plan, error) {
		p, err := plan(ctx, id)
		if err != nil || len(p.Items) != 1 {
			return p, err
		}
		if c, ok := p.Items[0].Payload.(*etcd.Change); ok {
			if note := resumeNote(k, records, c); note != "" {
				p.Notes = append(p.Notes, note)
			}
		}
		return p, nil
	}
}

// resumeNote compares the spec a resume writes with the spec the journal
// recorded before the pause it undoes (named by the paused-by annotation
// of the object the resume was planned against).
func resumeNote(k *change.Etcd, records []journal.Record, c *etcd.Change) string {
	if len(records) == 0 || c.Before == nil || c.After == nil {
		return ""
	}
	now, err := k.Store.Codec.Decode(c.Key, c.Before, c.BeforeRevision)
	if err != nil {
		return ""
	}
	pausedBy := now.Meta().GetAnnotations()[etcd.PausedByAnnotation]
	if pausedBy == "" {
		return ""
	}
	intent, _, err := journal.Applied(records, pausedBy)
	if err != nil || intent.Before == nil || intent.Before.Absent {
		return ""
	}
	before, err := k.Store.Codec.Decode(intent.Target.Key, intent.Before.Bytes, intent.Before.Revision)
	if err != nil {
		return ""
	}
	after, err := k.Store.Codec.Decode(c.Key, c.After, 0)
	if err != nil {
		return ""
	}
	b, ok1 := before.Object.(*appsv1.DaemonSet)
	a, ok2 := after.Object.(*appsv1.DaemonSet)
	if ok1 && ok2 && !equality.Semantic.DeepEqual(a.Spec, b.Spec) {
		return fmt.Sprintf("the spec differs from the one before pause %s: it was changed while paused (kept)", pausedBy)
	}
	return ""
}

// NeutralisePriorityClass plans globalDefault false and preemptionPolicy
// Never on a PriorityClass (the 2019 cascade's lever). The system-*
// classes (system-node-critical, system-cluster-critical) are refused
// unless force.
func NeutralisePriorityClass(k *change.Etcd, name string, force bool) change.Planner {
	r, _ := etcd.NewLayout("").Lookup("priorityclasses")
	plan := etcdPlanner(k, OpPriorityClassNeutralise, fmt.Sprintf("neutralise priorityclass %s (globalDefault false, preemptionPolicy Never)", name), force,
		func(ctx context.Context, id string, w etcd.WriteOptions) (*etcd.Change, error) {
			return k.Store.PlanUpdate(ctx, r, "", name, etcd.NeutralisePriorityClass(), w)
		})
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if strings.HasPrefix(name, "system-") && !force {
			return nil, change.Refusedf("priorityclass %s is one of the system classes the control plane and node agents run with\nhint: pass --force if this is really what the incident needs", name)
		}
		p, err := plan(ctx, id)
		if err != nil {
			return nil, err
		}
		if len(p.Items) > 0 {
			p.Notes = append(p.Notes,
				"pods that have this class already keep the priority and preemption policy they were admitted with: stop the preempting workload too (scale it in etcd)",
				"pods created from now on: without a class they get no default priority; with this class they wait for room instead of preempting")
		}
		return p, nil
	}
}

// Delete plans removing one object's key. Protected objects (Namespaces,
// CRDs, mirror pods, the control plane's own workloads and flow-control
// objects) are refused unless force.
func Delete(k *change.Etcd, o Object, force bool) change.Planner {
	return etcdPlanner(k, "delete", fmt.Sprintf("delete %s %s from etcd", o.Resource.GroupResource(), o.Ref()), force,
		func(ctx context.Context, id string, w etcd.WriteOptions) (*etcd.Change, error) {
			return k.Store.PlanDelete(ctx, o.Resource, o.Namespace, o.Name, w)
		})
}

// etcdPlanner turns a dry-run write into a planner: the write reads the
// object and computes the exact bytes without writing them. The object as
// read is checked against the protected list (unless force) and for facts
// the operator should see before confirming.
func etcdPlanner(k *change.Etcd, op, title string, force bool, write func(ctx context.Context, id string, w etcd.WriteOptions) (*etcd.Change, error)) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		var planned *etcd.Change
		p, err := k.Plan(id, op, title, func(w etcd.WriteOptions) (*etcd.Change, error) {
			c, err := write(ctx, id, w)
			planned = c
			return c, err
		})
		if err != nil {
			return nil, err
		}
		if planned == nil || planned.Before == nil {
			return p, nil
		}
		d, err := k.Store.Codec.Decode(planned.Key, planned.Before, planned.BeforeRevision)
		if err != nil {
			return p, nil // the write itself refuses what it cannot decode
		}
		if why := Protected(planned.Resource, d); why != "" && !force && len(p.Items) > 0 {
			return nil, change.Refusedf("%s %s: %s\nhint: pass --force if this is really what the incident needs", planned.Resource.GroupResource(), refOf(planned), why)
		}
		if op == "delete" {
			if f := d.Meta().GetFinalizers(); len(f) > 0 {
				p.Notes = append(p.Notes, fmt.Sprintf("%s has finalizers %v: they will not run", refOf(planned), f))
			}
		}
		return p, nil
	}
}

func refOf(c *etcd.Change) string {
	if c.Namespace == "" {
		return c.Name
	}
	return c.Namespace + "/" + c.Name
}
