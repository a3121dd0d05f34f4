package runbook

import (
	"context"
	"fmt"
	"strconv"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

// The step types of the levers that change the control plane's files and
// services on its nodes over SSH: the API server's manifest (apiserver
// tune), kubelets and the controller-manager (kubelet stop and start,
// controller-manager restore). They build the same kinds and planners as
// the commands, through steps.Env.

var serviceParams = []ParamSpec{
	{Name: "controlPlane", Type: "list", Default: steps.ShedNodes, Doc: "the control-plane nodes the controller-manager runs on"},
	{Name: "controllerManagerManifest", Type: "string", Doc: "the controller-manager's file on the control-plane nodes (default: kubeadm's, else its systemd unit)"},
	{Name: "controllerManagerObject", Type: "string", Doc: "a hosted control plane's controller-manager, [deployment|statefulset/]NAMESPACE/NAME in the hosting cluster's etcd: scaled to 0 before kubelets stop, back on restore (default: the inventory's controllerManager.deployment)"},
	{Name: "backupDir", Type: "string", Doc: "where the nodes keep files moved aside (default " + steps.DefaultServiceBackupDir + ")"},
	{Name: "wait", Type: "duration", Default: "2m", Doc: "how long one node may take to stop or start"},
}

func init() {
	RegisterStep(StepType{Name: "kubelet-stop", Summary: "stop kubelets over SSH to take load off the apiserver, after moving the controller-manager aside (no node evicted)",
		Params: append([]ParamSpec{
			{Name: "nodes", Type: "list", Required: true, Doc: "the nodes whose kubelet to stop (control-plane nodes refused without force)"},
			{Name: "fraction", Type: "string", Default: "1", Check: numberIn(0, 1, true, "a number more than 0 and at most 1"), Doc: "stop only this fraction of the selected nodes, the first by name (0 < F <= 1)"},
			{Name: "force", Type: "bool", Doc: "stop control-plane nodes' kubelets too, and go ahead when the controller-manager cannot be moved aside"},
		}, serviceParams...),
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			f, err := strconv.ParseFloat(a.String("fraction"), 64)
			if err != nil || f <= 0 || f > 1 {
				return nil, fmt.Errorf("fraction %q: want a number more than 0 and at most 1", a.String("fraction"))
			}
			force, err := a.Bool("force")
			if err != nil {
				return nil, err
			}
			k, cps, err := serviceKind(ctx, s, a)
			if err != nil {
				return nil, err
			}
			selected, err := s.Nodes(ctx, a.List("nodes"), "")
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: k.kinds(), Planner: steps.PlanKubeletStop(k.Service, cps, selected, f, force), Result: changeResult}, nil
		}})
	RegisterStep(StepType{Name: "kubelet-start", Summary: "start the kubelet again where it does not run, each waited for until it renewed its lease",
		Params: append([]ParamSpec{nodesParam}, serviceParams...),
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			k, _, err := serviceKind(ctx, s, a)
			if err != nil {
				return nil, err
			}
			selected, err := s.Nodes(ctx, a.List("nodes"), "")
			if err != nil {
				return nil, err
			}
			recs, err := s.Records()
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: []change.Kind{k}, Planner: steps.PlanKubeletStart(k.Service, selected, recs), Result: changeResult}, nil
		}})
	RegisterStep(StepType{Name: "controller-manager-restore", Summary: "put the controller-manager back on the control-plane nodes, refused while a kubelet is down",
		Params: append([]ParamSpec{
			{Name: "nodes", Type: "list", Doc: "the nodes whose kubelet must run first (default: all)"},
			{Name: "force", Type: "bool", Doc: "put it back even while some kubelets do not run (their nodes will be evicted)"},
		}, serviceParams...),
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			force, err := a.Bool("force")
			if err != nil {
				return nil, err
			}
			k, cps, err := serviceKind(ctx, s, a)
			if err != nil {
				return nil, err
			}
			workers, err := s.Nodes(ctx, a.List("nodes"), "")
			if err != nil {
				return nil, err
			}
			recs, err := s.Records()
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: k.kinds(), Planner: steps.PlanControllerManagerRestore(k.Service, cps, workers, recs, force), Result: changeResult}, nil
		}})
	RegisterStep(StepType{Name: "apiserver-tune", Summary: "edit the API server's static-pod manifest on the control-plane nodes, one node at a time, each rolled back if it does not come back",
		Params: []ParamSpec{
			{Name: "maxRequestsInflight", Type: "int", Check: nonNegative, Doc: "the API server's --max-requests-inflight (0: no limit)"},
			{Name: "maxMutatingRequestsInflight", Type: "int", Check: nonNegative, Doc: "the API server's --max-mutating-requests-inflight (0: no limit)"},
			{Name: "goawayChance", Type: "string", Check: numberIn(0, 0.02, false, "a number from 0 to 0.02"), Doc: "the API server's --goaway-chance (0 to 0.02)"},
			{Name: "cpu", Type: "string", Check: quantity, Doc: "the kube-apiserver container's CPU request (a quantity: 2, 1500m)"},
			{Name: "memory", Type: "string", Check: quantity, Doc: "the kube-apiserver container's memory request (4Gi)"},
			{Name: "flags", Type: "list", Doc: "any API server flags, NAME=VALUE without the --"},
			{Name: "nodes", Type: "list", Doc: "the control-plane nodes (default role=control-plane)"},
			{Name: "manifest", Type: "string", Doc: "the manifest on the nodes (default: the inventory's apiserver.manifest, else kubeadm's)"},
			{Name: "backupDir", Type: "string", Doc: "where the nodes keep the manifests replaced (default: breakglass-backup next to the manifests directory)"},
			{Name: "wait", Type: "duration", Default: "3m", Doc: "how long one node's API server may take to restart and answer before it is rolled back"},
			{Name: "force", Type: "bool", Doc: "restart an API server that does not answer /livez and /readyz now, or is starved of CPU, too (refused otherwise: saturated, it may not come back)"},
		},
		Prepare: prepareTune})
}

// serviceKind is the service kind over every node (an undo needs them
// by name) and the control-plane nodes, with leases read from etcd where
// it is configured.
func serviceKind(ctx context.Context, s *Session, a Args) (runbookService, []nodeops.Target, error) {
	wait, err := a.Duration("wait")
	if err != nil {
		return runbookService{}, nil, err
	}
	if wait <= 0 {
		return runbookService{}, nil, fmt.Errorf("wait %s: must be more than 0", a.String("wait"))
	}
	cps, err := s.Nodes(ctx, a.List("controlPlane"), steps.ShedNodes)
	if err != nil {
		return runbookService{}, nil, fmt.Errorf("controlPlane: %w", err)
	}
	hosted, err := s.Env.HostedControllerManager("controllerManagerObject", a.String("controllerManagerObject"))
	if err != nil {
		return runbookService{}, nil, err
	}
	if _, err := s.Store(ctx); err != nil {
		if hosted != nil {
			return runbookService{}, nil, fmt.Errorf("the hosted controller-manager %s is scaled through etcd: %w", hosted.Ref(), err)
		}
		s.Note("kubelets' leases are not checked (%v): a started kubelet counts as back once it runs", firstLine(err.Error()))
	}
	k := s.Env.Service(s.allNodes(ctx), steps.ServiceOptions{ControllerManagerManifest: a.String("controllerManagerManifest"),
		BackupDir: a.String("backupDir"), Wait: wait, HostedControllerManager: hosted})
	if err := k.Check(); err != nil {
		return runbookService{}, nil, err
	}
	return runbookService{k}, cps, nil
}

func prepareTune(ctx context.Context, s *Session, a Args) (*Action, error) {
	var e manifest.Edits
	for _, p := range []struct {
		name string
		into **int
	}{{"maxRequestsInflight", &e.MaxRequestsInflight}, {"maxMutatingRequestsInflight", &e.MaxMutatingRequestsInflight}} {
		if !a.Has(p.name) {
			continue
		}
		n, err := a.Int(p.name)
		if err != nil {
			return nil, err
		}
		*p.into = &n
	}
	if a.Has("goawayChance") {
		g, err := strconv.ParseFloat(a.String("goawayChance"), 64)
		if err != nil {
			return nil, fmt.Errorf("goawayChance %q: not a number", a.String("goawayChance"))
		}
		e.GoawayChance = &g
	}
	for _, q := range []struct {
		name string
		into **resource.Quantity
	}{{"cpu", &e.CPU}, {"memory", &e.Memory}} {
		if !a.Has(q.name) {
			continue
		}
		v, err := resource.ParseQuantity(a.String(q.name))
		if err != nil {
			return nil, fmt.Errorf("%s %q: %v", q.name, a.String(q.name), err)
		}
		*q.into = &v
	}
	for _, f := range a.List("flags") {
		fl, err := manifest.ParseFlag(f)
		if err != nil {
			return nil, fmt.Errorf("flags: %w", err)
		}
		e.Flags = append(e.Flags, fl)
	}
	if e.MaxRequestsInflight == nil && e.MaxMutatingRequestsInflight == nil && e.GoawayChance == nil && e.CPU == nil && e.Memory == nil && len(e.Flags) == 0 {
		return nil, fmt.Errorf("nothing to change: give maxRequestsInflight, maxMutatingRequestsInflight, goawayChance, cpu, memory or flags")
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	wait, err := a.Duration("wait")
	if err != nil {
		return nil, err
	}
	if wait <= 0 {
		return nil, fmt.Errorf("wait %s: must be more than 0", a.String("wait"))
	}
	targets, err := s.Nodes(ctx, a.List("nodes"), steps.ShedNodes)
	if err != nil {
		return nil, err
	}
	force, err := a.Bool("force")
	if err != nil {
		return nil, err
	}
	k := s.Env.Manifest(targets, a.String("manifest"), a.String("backupDir"))
	k.Wait, k.Force = wait, force
	if err := k.Check(); err != nil {
		return nil, err
	}
	return &Action{Kinds: []change.Kind{runbookManifest{k}}, Planner: steps.PlanTune(k, targets, e), Result: changeResult}, nil
}

// runbookService and runbookManifest are the kinds in a runbook's change
// engines, which hold other kinds too: they own their own ops only, not
// every "undo" as they do in a command's engine of their own.
type runbookService struct{ *steps.Service }

// kinds are the service kind and, where etcd is open, the etcd kind a
// hosted controller-manager's replicas are written with.
func (k runbookService) kinds() []change.Kind {
	if k.Etcd != nil {
		return []change.Kind{k, k.Etcd}
	}
	return []change.Kind{k}
}

func (runbookService) OwnsOp(op string) bool {
	switch op {
	case steps.OpKubeletStop, steps.OpKubeletStart, steps.OpControllerManagerRestore:
		return true
	}
	return false
}

type runbookManifest struct{ *steps.Manifest }

func (runbookManifest) OwnsOp(op string) bool { return op == steps.OpAPIServerTune }
