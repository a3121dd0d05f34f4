package steps

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// A hosted control plane runs its kube-controller-manager as a Deployment
// or StatefulSet in a hosting cluster: there is no file on a node to move
// aside. kubelet stop scales it to 0 in the hosting cluster's etcd first
// (an etcd item, with the owner checks of apiserver scale), and waits
// until the hosting cluster's controllers removed its pods, before any
// kubelet stops; the undo and controller-manager restore put its replicas
// back from the journal, after the kubelets run again.

// hostedRole names the hosted controller-manager in plans and errors.
const hostedRole = "controller-manager"

// planHostedStop is the etcd item that scales the hosted
// controller-manager to 0: owners that will put replicas back are refused
// unless force (then a note).
func (k *Service) planHostedStop(ctx context.Context, id string, force bool) (*change.Plan, error) {
	if k.Etcd == nil {
		return nil, fmt.Errorf("the hosted controller-manager %s needs etcd (the hosting cluster's): give the etcd flags or an inventory with etcd", k.HostedControllerManager.Ref())
	}
	return scaleHosted(k.Etcd, *k.HostedControllerManager, 0, force, hostedRole, OpKubeletStop, false)(ctx, id)
}

// waitHostedGone waits (up to Wait) until no pod of the hosted
// controller-manager is left in the hosting cluster's etcd: its
// workload's selector matches no pod that has not terminated. A pod being
// deleted still counts: its container may still run, and with it the
// controller-manager's leader.
func (k *Service) waitHostedGone(ctx context.Context) error {
	o, err := ResolveHosted(ctx, k.Etcd.Store, *k.HostedControllerManager, hostedRole)
	if err != nil {
		return err
	}
	what := o.Resource.Singular + " " + o.Ref()
	deadline := time.Now().Add(k.wait())
	for {
		left, err := k.hostedPods(ctx, o)
		switch {
		case err == nil && len(left) == 0:
			return nil
		case err == nil:
			err = fmt.Errorf("%d pod%s left: %s", len(left), plural(len(left)), strings.Join(left, ", "))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the hosted %s %s was scaled to 0, but its pods are not gone after %s (%v): the hosting cluster's controllers did not remove them, so no kubelet was stopped\nhint: look at the hosting cluster; breakglass undo CHANGE-ID puts its replicas back", hostedRole, what, k.wait(), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(k.poll()):
		}
	}
}

// hostedPods names the pods of the workload o that have not terminated,
// read from etcd.
func (k *Service) hostedPods(ctx context.Context, o Object) ([]string, error) {
	s := k.Etcd.Store
	w, err := s.GetObject(ctx, o.Resource, o.Namespace, o.Name, etcd.Linearizable)
	if err != nil {
		return nil, err
	}
	if w.Err != nil {
		return nil, w.Err
	}
	var ls *metav1.LabelSelector
	switch x := w.Decoded.Object.(type) {
	case *appsv1.Deployment:
		ls = x.Spec.Selector
	case *appsv1.StatefulSet:
		ls = x.Spec.Selector
	default:
		return nil, fmt.Errorf("%s: not a Deployment or a StatefulSet", w.Key)
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fmt.Errorf("%s: its selector: %w", w.Key, err)
	}
	if sel.Empty() {
		sel = labels.Nothing() // a workload selects its pods; an empty selector would be every pod
	}
	pods, err := s.Layout.Lookup("pods")
	if err != nil {
		return nil, err
	}
	var left []string
	_, err = s.List(ctx, pods, etcd.ListOptions{Namespace: o.Namespace, Consistency: etcd.Linearizable}, func(p *etcd.Object) error {
		if p.Err != nil {
			return nil
		}
		pod, ok := p.Decoded.Object.(*corev1.Pod)
		if !ok || !sel.Matches(labels.Set(pod.Labels)) {
			return nil
		}
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			return nil
		}
		left = append(left, pod.Name)
		return nil
	})
	return left, err
}

// hostedUndo plans putting back the replicas the change's etcd records
// took away (the journal's value before the scale), compared with the
// object as it is now: its controller has written its status since.
func (k *Service) hostedUndo(ctx context.Context, recs []journal.Record, id string) ([]*change.Item, []string, error) {
	if !hasEtcd(recs) {
		return nil, nil, nil
	}
	if k.Etcd == nil {
		return nil, nil, fmt.Errorf("change %s scaled a hosted controller-manager in etcd, and etcd is not configured here\nhint: give the etcd flags (the hosting cluster's etcd) or an inventory with etcd", id)
	}
	var mine []journal.Record
	for _, r := range recs {
		if r.Kind == journal.KindEtcd {
			mine = append(mine, r)
		}
	}
	return liftOwners(ctx, k.Etcd, k.Etcd.Store, mine, id)
}

// hostedRestore plans the hosted controller-manager's replicas back from
// the newest kubelet stop in the journal that scaled it; none found, and
// the workload at 0, is an error that says how to scale it by hand.
func (k *Service) hostedRestore(ctx context.Context, records []journal.Record, id string) ([]*change.Item, []string, error) {
	if k.Etcd == nil {
		return nil, nil, fmt.Errorf("the hosted controller-manager %s needs etcd (the hosting cluster's): give the etcd flags or an inventory with etcd", k.HostedControllerManager.Ref())
	}
	o, err := ResolveHosted(ctx, k.Etcd.Store, *k.HostedControllerManager, hostedRole)
	if err != nil {
		return nil, nil, err
	}
	key := k.Etcd.Store.Layout.Key(o.Resource, o.Namespace, o.Name)
	var last []journal.Record
	for i := range records {
		r := &records[i]
		if r.Op == OpKubeletStop && r.Kind == journal.KindEtcd && r.Target.Key == key && r.Type == journal.TypeOutcome && r.Status == journal.StatusApplied {
			last = journal.Find(records, r.ID)
		}
	}
	if last != nil {
		var mine []journal.Record
		for _, r := range last {
			if r.Kind == journal.KindEtcd && r.Target.Key == key {
				mine = append(mine, r)
			}
		}
		items, notes, err := liftOwners(ctx, k.Etcd, k.Etcd.Store, mine, id)
		if err != nil || len(items) > 0 {
			return items, notes, err
		}
		return nil, append(notes, fmt.Sprintf("the hosted %s %s has the replicas it had before %s already", hostedRole, o.Ref(), last[0].ID)), nil
	}
	w, err := k.Etcd.Store.GetObject(ctx, o.Resource, o.Namespace, o.Name, etcd.Linearizable)
	if err != nil {
		return nil, nil, err
	}
	if w.Err != nil {
		return nil, nil, w.Err
	}
	if n, ok := replicasOf(w.Decoded); ok && n == 0 {
		return nil, nil, fmt.Errorf("the hosted %s %s has 0 replicas, and the journal has no kubelet stop that scaled it: the replicas to put back are not known\nhint: breakglass scale %s %s --replicas N (check --journal)", hostedRole, o.Ref(), o.Resource.Singular, o.Ref())
	}
	return nil, []string{fmt.Sprintf("the hosted %s %s is not at 0 replicas: left as it is", hostedRole, o.Ref())}, nil
}

func hasEtcd(recs []journal.Record) bool {
	return slices.ContainsFunc(recs, func(r journal.Record) bool { return r.Kind == journal.KindEtcd })
}
