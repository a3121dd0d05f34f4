package steps

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// PlanFlowLift plans deleting sheds: for each name its FlowSchema, then
// its PriorityLevelConfiguration; with no names, every breakglass shed in
// etcd. Objects without the shed label, and the mandatory exempt and
// catch-all, are refused. The sheds are found when the plan is made (and
// made again), not when the planner is built.
func PlanFlowLift(k *change.Etcd, names []string) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		p := &change.Plan{ID: id, Op: OpFlowLift, Title: "lift shed " + strings.Join(names, ", ")}
		todo := names
		if len(names) == 0 {
			sheds, err := listFlowSheds(ctx, k.Store, time.Time{}, etcd.Linearizable)
			if err != nil {
				return nil, err
			}
			for _, s := range sheds {
				todo = append(todo, s.Name)
			}
			p.Title = fmt.Sprintf("lift every breakglass shed (%d)", len(todo))
			if len(todo) == 0 {
				p.Notes = append(p.Notes, "no breakglass shed in etcd")
			}
		}
		for _, name := range todo {
			items, err := liftFlowShed(ctx, k, id, OpFlowLift, name, "", false)
			if err != nil {
				return nil, err
			}
			if len(items) == 0 && len(names) > 0 {
				return nil, fmt.Errorf("no shed named %s (no flowschema nor prioritylevelconfiguration of that name)\nhint: `shed list` shows the sheds", name)
			}
			p.Items = append(p.Items, items...)
		}
		return p, nil
	}
}

// liftFlowShed plans deleting the shed's FlowSchema and then its priority
// level, each compared with the revision read; a missing one is left
// out. With byChange set, an object another change created is refused
// unless force.
func liftFlowShed(ctx context.Context, k *change.Etcd, id, op, name, byChange string, force bool) ([]*change.Item, error) {
	if mandatoryFlowControl[name] {
		return nil, change.Refusedf("%s is one of the apiserver's mandatory flow-control objects, not a shed\nhint: `shed list` shows the sheds", name)
	}
	fsR, plcR, err := flowResources(k.Store)
	if err != nil {
		return nil, err
	}
	var items []*change.Item
	for _, r := range []etcd.Resource{fsR, plcR} {
		key := k.Store.Layout.Key(r, "", name)
		c, err := k.Store.PlanWrite(ctx, r, key, func(cur *mvccpb.KeyValue) ([]byte, bool, string, error) {
			if cur == nil {
				return nil, true, "", nil // nothing to delete: Write says ErrNoChange
			}
			d, err := k.Store.Codec.DecodeMetadata(key, cur.Value, cur.ModRevision)
			if err != nil {
				return nil, false, "", change.Refusedf("%s %s cannot be read: %v", r.Singular, name, err)
			}
			if why := Protected(r, d); why != "" {
				return nil, false, "", change.Refusedf("%s %s: %s", r.Singular, name, why)
			}
			if d.Meta().GetLabels()[FlowShedLabel] != "true" {
				return nil, false, "", change.Refusedf("%s %s is not a breakglass shed (no label %s=true): not deleted\nhint: breakglass delete removes other objects, with its own checks", r.Singular, name, FlowShedLabel)
			}
			if by := d.Meta().GetAnnotations()[FlowChangeAnnotation]; byChange != "" && by != byChange && !force {
				return nil, false, "", change.Refusedf("%s %s now belongs to change %s, not %s\nhint: undo %s instead, or pass --force", r.Singular, name, by, byChange, by)
			}
			return nil, true, fmt.Sprintf("delete %s %s", r.Singular, name), nil
		}, etcd.WriteOptions{ID: id, Op: op})
		if errors.Is(err, etcd.ErrNoChange) {
			continue
		}
		if err != nil {
			return nil, err
		}
		items = append(items, k.EtcdItem(c, byChange))
	}
	return items, nil
}

// FlowShedStatus is one shed as found in etcd.
type FlowShedStatus struct {
	Name, Identity string
	Reject         bool
	Shares         int32
	// Created and ExpiresAt come from the objects; TTL is their difference.
	Created, ExpiresAt time.Time
	// Expired is set once ExpiresAt has passed. The shed still acts:
	// nothing removes it but a lift.
	Expired bool
	// Change is the ID of the change that created it.
	Change string
	// Problem says when the shed is half there ("no flowschema"): a
	// FlowSchema without its level is ignored by the apiserver.
	Problem string
}

// ListFlowSheds returns the breakglass sheds in etcd, by name, as of now.
func ListFlowSheds(ctx context.Context, s *etcd.Store, now time.Time) ([]FlowShedStatus, error) {
	return listFlowSheds(ctx, s, now, etcd.Serializable)
}

func listFlowSheds(ctx context.Context, s *etcd.Store, now time.Time, c etcd.Consistency) ([]FlowShedStatus, error) {
	fsR, plcR, err := flowResources(s)
	if err != nil {
		return nil, err
	}
	byName := map[string]*FlowShedStatus{}
	has := map[string]map[string]bool{}
	opts := etcd.ListOptions{Consistency: c, MetaFilter: func(o *etcd.Object) bool { return o.Decoded.Meta().GetLabels()[FlowShedLabel] == "true" }}
	for _, r := range []etcd.Resource{fsR, plcR} {
		_, err := s.List(ctx, r, opts, func(o *etcd.Object) error {
			if o.Err != nil {
				return nil // not known to be ours
			}
			st := byName[o.Name]
			if st == nil {
				st = &FlowShedStatus{Name: o.Name}
				byName[o.Name], has[o.Name] = st, map[string]bool{}
			}
			has[o.Name][r.Kind] = true
			m := o.Decoded.Meta()
			if st.Created.IsZero() {
				st.Created = m.GetCreationTimestamp().Time
				st.Change = m.GetAnnotations()[FlowChangeAnnotation]
				st.ExpiresAt, _ = time.Parse(time.RFC3339, m.GetAnnotations()[FlowExpiresAnnotation])
			}
			switch obj := o.Decoded.Object.(type) {
			case *flowcontrolv1.FlowSchema:
				st.Identity = flowIdentity(obj)
			case *flowcontrolv1.PriorityLevelConfiguration:
				st.Reject, st.Shares = flowLimit(obj)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list breakglass sheds: %w", err)
		}
	}
	out := make([]FlowShedStatus, 0, len(byName))
	for name, st := range byName {
		switch {
		case !has[name]["FlowSchema"]:
			st.Problem = "no flowschema: nothing is shed"
		case !has[name]["PriorityLevelConfiguration"]:
			st.Problem = "no prioritylevelconfiguration: the apiserver ignores the flowschema"
		case st.ExpiresAt.IsZero():
			st.Problem = "no valid " + FlowExpiresAnnotation
		}
		st.Expired = !st.ExpiresAt.IsZero() && !now.Before(st.ExpiresAt)
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// FlowControl undoes flow-control changes whole (it owns their ops; its
// items are etcd items, applied by the etcd kind). Undoing a shed is a lift
// of what the shed created, compared with the objects as they are then,
// not a byte-for-byte restore: the apiserver writes the FlowSchema's status
// as soon as it sees it, so the revision the shed wrote is soon gone.
// Undoing a lift is the etcd kind's undo (the deleted bytes put back).
type FlowControl struct{ Etcd *change.Etcd }

// Name implements change.Kind.
func (k *FlowControl) Name() string { return "flowcontrol" }

// OwnsOp implements change.ChangeOwner.
func (k *FlowControl) OwnsOp(op string) bool { return op == OpFlowShed || op == OpFlowLift }

// Apply implements change.Kind; the items it plans are etcd items.
func (k *FlowControl) Apply(context.Context, *change.Plan, *change.Item, *journal.Journal) error {
	return errors.New("internal: flow-control items are applied by the etcd kind")
}

// Undo implements change.Kind. A shed is undone by lifting it; a lift by
// the etcd kind's own undo, which puts back the bytes it deleted.
func (k *FlowControl) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	writes, err := journal.AppliedWrites(records, id)
	if err != nil {
		return nil, err
	}
	if writes[0].Intent.Op != OpFlowShed {
		return k.Etcd.Undo(ctx, records, id, force)
	}
	var items []*change.Item
	done := map[string]bool{}
	for _, w := range writes {
		name := w.Intent.Target.Name
		if done[name] {
			continue
		}
		done[name] = true
		its, err := liftFlowShed(ctx, k.Etcd, "", "undo", name, id, force)
		if err != nil {
			return nil, err
		}
		items = append(items, its...)
	}
	return items, nil
}
