package runbook

import (
	"context"
	"fmt"
	"strings"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/nodeops/selector"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/recover/diagnose"
	"github.com/breakglass/breakglass/recover/steps"
)

// The diagnose step: read-only, so a dry run runs it too. Its results name
// the top suspect for later steps: {{ .steps.ID.daemonset }} (or
// deployment, statefulset, priorityclass), kind, ref, serviceaccount,
// runbook and selector; all empty when no suspect is above threshold.
// priorityclass and preemptor name the cascade's class and workload from
// any suspect above threshold (addPreemption).
func init() {
	RegisterStep(StepType{Name: "diagnose", Summary: "name the offender from etcd and the nodes (read-only): its results select it for later steps",
		Params: []ParamSpec{
			{Name: "since", Type: "duration", Default: "6h", Doc: "how recent a workload counts as new"},
			{Name: "nodes", Type: "list", Doc: "nodes to read (default: every node)"},
			{Name: "nodeTimeout", Type: "duration", Default: "8s", Doc: "how long each node may take"},
			{Name: "via", Type: "string", Check: oneOf("auto", "forward", "sudo"), Doc: "how to reach containerd: auto, forward or sudo"},
			{Name: "require", Type: "bool", Doc: "fail the step when no suspect is above threshold"},
			{Name: "requireKind", Type: "string", Check: oneOf("daemonset", "deployment", "statefulset", "priorityclass"), Doc: "fail the step unless a suspect above threshold is of this kind (daemonset, deployment, statefulset or priorityclass; empty: no such need): its result names the best of them"},
		},
		Prepare: prepareDiagnose})
}

func prepareDiagnose(ctx context.Context, s *Session, a Args) (*Action, error) {
	since, err := a.Duration("since")
	if err != nil {
		return nil, err
	}
	timeout, err := a.Duration("nodeTimeout")
	if err != nil {
		return nil, err
	}
	require, err := a.Bool("require")
	if err != nil {
		return nil, err
	}
	needKind := strings.ToLower(a.String("requireKind"))
	switch needKind {
	case "", "daemonset", "deployment", "statefulset", "priorityclass":
	default:
		return nil, fmt.Errorf("requireKind %q: want daemonset, deployment, statefulset or priorityclass", a.String("requireKind"))
	}
	return &Action{Do: func(ctx context.Context, _ bool) (map[string]string, error) {
		store, err := s.Store(ctx)
		if err != nil {
			return nil, err
		}
		env := diagnose.Env{Store: store, Since: since, NodeTimeout: timeout, Concurrency: s.Env.Fanout.Concurrency, Now: s.Env.Now}
		if s.Env.Inventory != nil {
			env.APIServerPort = s.Env.Inventory.APIServer.Port
		}
		if s.Env.Runner != nil {
			// No node known (an inventory without nodes, no node source):
			// etcd is read alone. Nodes asked for must match.
			nodes, _, err := s.Env.Nodes(ctx, selector.Options{Nodes: a.List("nodes")})
			if err != nil && !a.Has("nodes") {
				s.Note("nodes not read (%s)", firstLine(err.Error()))
				nodes, err = nil, nil
			}
			if err == nil && len(nodes) == 0 && a.Has("nodes") {
				err = fmt.Errorf("nodes %s: no node matches", strings.Join(a.List("nodes"), ","))
			}
			if err != nil {
				return nil, err
			}
			if len(nodes) == 0 {
				s.Note("no nodes known: diagnose reads etcd only")
			}
			env.Runner, env.Nodes = s.Env.Runner, nodes
			if s.Env.SSH != nil {
				via, err := steps.ContainerdVia(s.Env.Inventory, a.String("via"))
				if err != nil {
					return nil, err
				}
				k := s.Env.Pods(nodes, via)
				env.Containerd = func(ctx context.Context, t nodeops.Target) (*pods.Node, error) {
					n, _, err := k.Connect(ctx, t)
					return n, err
				}
				// The SSH client opens tunnels too (a test's dialer may not).
				if tu, ok := s.Env.SSH.(interface {
					OpenTunnel(context.Context, nodeops.Target) (*sshclient.Tunnel, error)
				}); ok {
					env.Tunnel = func(ctx context.Context, t nodeops.Target) (diagnose.Tunnel, error) {
						return tu.OpenTunnel(ctx, t)
					}
				}
			}
		}
		rep, err := diagnose.Run(ctx, env)
		if err != nil {
			return nil, err
		}
		s.Note("diagnose read %d etcd ranges and %d nodes (%d failed)", rep.Reads.Ranges, rep.SSH.Nodes, rep.SSH.Failed)
		if rep.DNS != nil {
			s.Note("%s", rep.DNS.Line())
		}
		res := suspectResult(rep.Suspect)
		addPreemption(res, rep.Suspects)
		if needKind != "" && !addKind(res, rep.Suspects, needKind) {
			return res, fmt.Errorf("diagnose: no %s among the suspects above threshold (%s): name it in the step's parameters", needKind, topSuspect(rep.Suspect))
		}
		if rep.Suspect == nil {
			if require {
				return res, fmt.Errorf("diagnose: no suspect above threshold")
			}
			s.Note("no suspect above threshold")
			return res, nil
		}
		s.Note("top suspect: %s %s (score %.0f): %s", rep.Suspect.Kind, rep.Suspect.Ref(), rep.Suspect.Score, strings.Join(rep.Suspect.Why, "; "))
		return res, nil
	}}, nil
}

// addPreemption fills the results of the 2019 cascade from every suspect
// above threshold, not only the top one: priorityclass is the best
// PriorityClass suspect's name, preemptor the best preempting workload's
// NAMESPACE/NAME (a Deployment or StatefulSet: what a scale step takes),
// both empty when there is none.
func addPreemption(res map[string]string, suspects []diagnose.Suspect) {
	for _, sp := range suspects {
		if !sp.AboveThreshold {
			continue
		}
		switch {
		case sp.Kind == "PriorityClass" && res["priorityclass"] == "":
			res["priorityclass"] = sp.Ref()
		case sp.Runbook == "stop-preemptor" && (sp.Kind == "Deployment" || sp.Kind == "StatefulSet") && res["preemptor"] == "":
			res["preemptor"] = sp.Ref()
		}
	}
}

// addKind makes sure res[kind] names a suspect above threshold of that
// kind: the top suspect's own when it is one, otherwise the best of them.
// It says whether there is one.
func addKind(res map[string]string, suspects []diagnose.Suspect, kind string) bool {
	if res[kind] != "" {
		return true
	}
	for _, sp := range suspects {
		if sp.AboveThreshold && strings.EqualFold(sp.Kind, kind) {
			res[kind] = sp.Ref()
			return true
		}
	}
	return false
}

// topSuspect says what the top suspect is, for an error.
func topSuspect(sp *diagnose.Suspect) string {
	if sp == nil {
		return "there is no suspect"
	}
	return "the top one is " + sp.Kind + " " + sp.Ref()
}

// suspectResult is the step's results for a suspect (every key, empty
// for none, so that later templates always render).
func suspectResult(sp *diagnose.Suspect) map[string]string {
	res := map[string]string{"kind": "", "ref": "", "serviceaccount": "", "runbook": "", "selector": "",
		"daemonset": "", "deployment": "", "statefulset": "", "priorityclass": "", "preemptor": ""}
	if sp == nil {
		return res
	}
	res["kind"], res["ref"], res["serviceaccount"], res["runbook"] = sp.Kind, sp.Ref(), sp.ServiceAccount, sp.Runbook
	res["selector"] = strings.Join(sp.Selector, " ")
	if key := strings.ToLower(sp.Kind); key == "daemonset" || key == "deployment" || key == "statefulset" || key == "priorityclass" {
		res[key] = sp.Ref()
	}
	return res
}
