package runbook

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

// The step types of apiserver add and remove: the replica count of a
// kubeadm control plane, on the same kind and planners as the commands.

var memberParams = []ParamSpec{
	{Name: "manifest", Type: "string", Doc: "the API server's manifest on the nodes (default: the inventory's apiserver.manifest, else kubeadm's)"},
	{Name: "backupDir", Type: "string", Doc: "where a removed manifest goes on the node (default: breakglass-backup next to the manifests directory)"},
	{Name: "wait", Type: "duration", Default: "3m", Doc: "how long the node's API server may take to come up or to stop"},
}

func init() {
	RegisterStep(StepType{Name: "apiserver-add", Summary: "bring an API server up on a standby control-plane host, its manifest and PKI copied from a healthy one; taken away again if it does not come up",
		Params: append([]ParamSpec{
			{Name: "node", Type: "string", Required: true, Doc: "the standby host (its inventory name)"},
			{Name: "from", Type: "string", Doc: "the healthy control-plane node to copy from (default: the first whose API server answers)"},
			{Name: "advertiseAddress", Type: "string", Check: ipAddress, Doc: "the node's address for the API server (default: its inventory address)"},
		}, memberParams...),
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			k, err := memberKind(ctx, s, a)
			if err != nil {
				return nil, err
			}
			to, err := k.Host(a.String("node"), "node")
			if err != nil {
				return nil, err
			}
			var from = to
			if a.Has("from") {
				from, err = k.Host(a.String("from"), "from")
			} else {
				from, err = k.HealthySource(ctx, to.Name)
			}
			if err != nil {
				return nil, err
			}
			adv := a.String("advertiseAddress")
			if adv == "" {
				if _, err := netip.ParseAddr(to.Address); err != nil {
					return nil, fmt.Errorf("%s's inventory address %q is not an IP address: give advertiseAddress", to.Name, to.Address)
				}
			}
			return &Action{Kinds: []change.Kind{runbookMember{k}}, Planner: steps.PlanAdd(k, from, to, adv), Result: changeResult}, nil
		}})
	RegisterStep(StepType{Name: "apiserver-remove", Summary: "take one API server away (its manifest moved out of the manifests directory), refused when it is the last that answers",
		Params: append([]ParamSpec{
			{Name: "node", Type: "string", Required: true, Doc: "the node whose API server to take away"},
			{Name: "force", Type: "bool", Doc: "take it away even when no other API server answers"},
		}, memberParams...),
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			force, err := a.Bool("force")
			if err != nil {
				return nil, err
			}
			k, err := memberKind(ctx, s, a)
			if err != nil {
				return nil, err
			}
			t, err := k.Host(a.String("node"), "node")
			if err != nil {
				return nil, err
			}
			return &Action{Kinds: []change.Kind{runbookMember{k}}, Planner: steps.PlanRemove(k, t, force), Result: changeResult}, nil
		}})
}

func memberKind(ctx context.Context, s *Session, a Args) (*steps.APIServerMember, error) {
	wait, err := a.Duration("wait")
	if err != nil {
		return nil, err
	}
	if wait <= 0 {
		return nil, fmt.Errorf("wait %s: must be more than 0", a.String("wait"))
	}
	k := s.Env.APIServerMember(steps.MemberPeers(s.allNodes(ctx), a.String("node")), a.String("manifest"), a.String("backupDir"))
	k.Wait = wait
	if err := k.Check(); err != nil {
		return nil, err
	}
	return k, nil
}

func ipAddress(v string) error {
	if _, err := netip.ParseAddr(v); err != nil {
		return fmt.Errorf("%q: want an IP address", v)
	}
	return nil
}

// runbookMember is the member kind in a runbook's change engines: it owns
// its own ops only.
type runbookMember struct{ *steps.APIServerMember }

func (runbookMember) OwnsOp(op string) bool {
	return op == steps.OpAPIServerAdd || op == steps.OpAPIServerRemove
}
