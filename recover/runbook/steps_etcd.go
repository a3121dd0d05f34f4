package runbook

import (
	"context"
	"fmt"
	"strings"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

// The step types of the levers that write Kubernetes objects straight
// into etcd, and exec.

func init() {
	RegisterStep(StepType{Name: "shed-flowschema", Summary: "shed one identity through the apiserver's own flow control (a FlowSchema and priority level written in etcd)",
		Params: []ParamSpec{
			{Name: "serviceAccount", Type: "string", Check: namespacedName, Doc: "the service account (NAMESPACE/NAME, or NAMESPACE/*)"},
			{Name: "user", Type: "string", Doc: "the user"},
			{Name: "group", Type: "string", Doc: "the group"},
			{Name: "reject", Type: "bool", Doc: "answer its requests 429 (at most one runs at a time)"},
			{Name: "shares", Type: "int", Check: nonNegative, Doc: "concurrency shares instead of reject"},
			{Name: "ttl", Type: "duration", Required: true, Doc: "how long the shed is meant to hold (kept on the objects)"},
			{Name: "force", Type: "bool", Doc: "shed a control-plane identity too (never system:masters)"},
		},
		Prepare: prepareFlowShed})
	RegisterStep(StepType{Name: "flowschema-lift", Summary: "delete breakglass's flow-control sheds from etcd (all, or those named)",
		Params: []ParamSpec{{Name: "flowschemas", Type: "list", Doc: "the sheds to lift (as shed status names them; default: all)"}},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			k, err := etcdKind(ctx, s)
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: []change.Kind{k, &steps.FlowControl{Etcd: k}}, Planner: steps.PlanFlowLift(k, a.List("flowschemas"))}, nil
		}})
	RegisterStep(StepType{Name: "daemonset-pause", Summary: "pause a DaemonSet in etcd (its pod template gets a node selector no node matches)",
		Params: []ParamSpec{
			{Name: "daemonset", Type: "string", Required: true, Check: namespacedName, Doc: "the DaemonSet, NAMESPACE/NAME"},
			{Name: "force", Type: "bool", Doc: "pause a control-plane DaemonSet in kube-system too"},
		},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			k, obj, err := etcdObject(ctx, s, "daemonsets", a.String("daemonset"), "daemonset")
			if err != nil {
				return nil, err
			}
			force, err := a.Bool("force")
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: []change.Kind{k}, Planner: steps.PauseDaemonSet(k, obj, force)}, nil
		}})
	RegisterStep(StepType{Name: "daemonset-resume", Summary: "resume a paused DaemonSet in etcd",
		Params: []ParamSpec{{Name: "daemonset", Type: "string", Required: true, Check: namespacedName, Doc: "the DaemonSet, NAMESPACE/NAME"}},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			k, obj, err := etcdObject(ctx, s, "daemonsets", a.String("daemonset"), "daemonset")
			if err != nil {
				return nil, err
			}
			// A journal that cannot be read only loses the note that the
			// spec changed while paused.
			recs, _ := s.Records()
			return &Action{Kinds: []change.Kind{k}, Planner: steps.ResumeDaemonSet(k, obj, recs)}, nil
		}})
	RegisterStep(StepType{Name: "priorityclass-neutralise", Summary: "set globalDefault false and preemptionPolicy Never on a PriorityClass in etcd (the preemption cascade)",
		Params: []ParamSpec{
			{Name: "priorityClass", Type: "string", Required: true, Check: clusterName, Doc: "the PriorityClass's name ({{ .steps.ID.priorityclass }} of a diagnose step)"},
			{Name: "force", Type: "bool", Doc: "neutralise a system-* class too"},
		},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			name := a.String("priorityClass")
			if name == "" || strings.Contains(name, "/") {
				return nil, fmt.Errorf("priorityClass %q: want the name of a PriorityClass (cluster-scoped, no namespace)", name)
			}
			force, err := a.Bool("force")
			if err != nil {
				return nil, err
			}
			k, err := etcdKind(ctx, s)
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: []change.Kind{k}, Planner: steps.NeutralisePriorityClass(k, name, force), Result: changeResult}, nil
		}})
	RegisterStep(StepType{Name: "scale", Summary: "set spec.replicas of a Deployment, StatefulSet or ReplicaSet in etcd",
		Params: []ParamSpec{
			{Name: "resource", Type: "string", Default: "deployments", Doc: "deployments, statefulsets or replicasets"},
			{Name: "object", Type: "string", Required: true, Check: namespacedName, Doc: "the workload, NAMESPACE/NAME"},
			{Name: "replicas", Type: "int", Required: true, Check: nonNegative, Doc: "the new number of replicas"},
			{Name: "force", Type: "bool", Doc: "scale a control-plane workload in kube-system too"},
		},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			k, obj, err := etcdObject(ctx, s, a.String("resource"), a.String("object"), "object")
			if err != nil {
				return nil, err
			}
			switch obj.Resource.GroupResource() {
			case "deployments.apps", "statefulsets.apps", "replicasets.apps":
			default:
				return nil, fmt.Errorf("resource: cannot scale %s: only deployments, statefulsets and replicasets", obj.Resource.GroupResource())
			}
			n, err := a.Int("replicas")
			if err != nil {
				return nil, err
			}
			if n < 0 {
				return nil, fmt.Errorf("replicas %d: must not be negative", n)
			}
			force, err := a.Bool("force")
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: []change.Kind{k}, Planner: steps.Scale(k, obj, int32(n), force)}, nil
		}})
	RegisterStep(StepType{Name: "exec", Summary: "run a command on nodes (journaled as an audit record; it cannot be undone)",
		Params: []ParamSpec{
			{Name: "command", Type: "string", Required: true, Doc: "the shell command"},
			nodesParam,
		},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			nodes, err := s.Nodes(ctx, a.List("nodes"), "")
			if err != nil {
				return nil, err
			}
			k := &steps.Exec{Runner: s.Env.Runner, Options: s.Env.Fanout}
			return &Action{Kinds: []change.Kind{k}, Planner: steps.PlanExec(a.String("command"), nodes)}, nil
		}})
}

func etcdKind(ctx context.Context, s *Session) (*change.Etcd, error) {
	st, err := s.Store(ctx)
	if err != nil {
		return nil, err
	}
	return &change.Etcd{Store: st}, nil
}

// etcdObject resolves NAMESPACE/NAME of resource.
func etcdObject(ctx context.Context, s *Session, resource, ref, param string) (*change.Etcd, steps.Object, error) {
	r, err := etcd.NewLayout("").Lookup(resource)
	if err != nil {
		return nil, steps.Object{}, fmt.Errorf("resource: %w", err)
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return nil, steps.Object{}, fmt.Errorf("%s %q: want NAMESPACE/NAME", param, ref)
	}
	k, err := etcdKind(ctx, s)
	if err != nil {
		return nil, steps.Object{}, err
	}
	return k, steps.Object{Resource: r, Namespace: ns, Name: name}, nil
}

func prepareFlowShed(ctx context.Context, s *Session, a Args) (*Action, error) {
	reject, err := a.Bool("reject")
	if err != nil {
		return nil, err
	}
	shares, err := a.Int("shares")
	if err != nil {
		return nil, err
	}
	ttl, err := a.Duration("ttl")
	if err != nil {
		return nil, err
	}
	force, err := a.Bool("force")
	if err != nil {
		return nil, err
	}
	f := steps.FlowShed{ServiceAccount: a.String("serviceAccount"), User: a.String("user"), Group: a.String("group"),
		Reject: reject, Shares: int32(shares), TTL: ttl, Force: force, Now: s.Env.Now()}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	k, err := etcdKind(ctx, s)
	if err != nil {
		return nil, err
	}
	return &Action{Kinds: []change.Kind{k, &steps.FlowControl{Etcd: k}}, Planner: steps.PlanFlowShed(k, f)}, nil
}
