package change

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/journal"
)

// KindEtcd is the kind of a change to one etcd key (a Kubernetes object).
const KindEtcd = journal.KindEtcd

// Etcd applies and undoes changes to Kubernetes objects in etcd:
// compare-and-swap on the ModRevision the change was planned against,
// journaled before and after.
type Etcd struct{ Store *etcd.Store }

// Name implements Kind.
func (k *Etcd) Name() string { return KindEtcd }

// EtcdItem wraps a planned etcd change (from a DryRun write, which reads
// and computes without writing) as an item. The diff is rendered from the
// exact bytes that will be written.
func (k *Etcd) EtcdItem(c *etcd.Change, undoes string) *Item {
	return &Item{
		Kind:      KindEtcd,
		Target:    journal.Target{Key: c.Key, Resource: c.Resource.GroupResource(), Namespace: c.Namespace, Name: c.Name},
		Summary:   c.Summary,
		Diff:      k.Store.Codec.DiffChange(c),
		PlannedAt: revision(c.BeforeRevision),
		Undoes:    undoes,
		Payload:   c,
	}
}

// Plan runs a DryRun write and returns its plan: one item, or none when
// the object is already as wanted.
func (k *Etcd) Plan(id, op, title string, write func(etcd.WriteOptions) (*etcd.Change, error)) (*Plan, error) {
	p := &Plan{ID: id, Op: op, Title: title}
	c, err := write(etcd.WriteOptions{ID: id, Op: op})
	if errors.Is(err, etcd.ErrNoChange) {
		if c != nil {
			it := k.EtcdItem(c, "")
			it.Diff, it.Payload = "", nil
			p.Unchanged = []*Item{it}
		}
		return p, nil
	}
	if err != nil {
		return nil, err
	}
	p.Items = []*Item{k.EtcdItem(c, "")}
	return p, nil
}

// Apply implements Kind: the planned bytes, and only if the key still has
// the ModRevision they were planned against.
func (k *Etcd) Apply(ctx context.Context, p *Plan, it *Item, j *journal.Journal) error {
	c, ok := it.Payload.(*etcd.Change)
	if !ok {
		return fmt.Errorf("internal: etcd item without an etcd change")
	}
	c.ID, c.Op, c.Attempt = p.ID, p.Op, it.Attempt
	now, err := k.Store.Apply(ctx, c, j.ForEtcd(it.Undoes))
	var conflict *etcd.ConflictError
	if errors.As(err, &conflict) {
		var rev int64
		if now != nil {
			rev = now.ModRevision
		}
		return &StaleError{Target: it.Target, Planned: "revision " + revision(c.BeforeRevision), Now: "revision " + revision(rev)}
	}
	if err != nil {
		return err
	}
	it.Result = strconv.FormatInt(c.Revision, 10)
	return nil
}

// Undo implements Kind: the exact bytes the change replaced, for every key
// it wrote (the last written first), if each key still has the revision the
// change wrote (or with force, whatever it has).
func (k *Etcd) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*Item, error) {
	cs, err := journal.PlanUndo(ctx, k.Store, records, journal.UndoOptions{ID: id, Force: force})
	if errors.Is(err, etcd.ErrNoChange) {
		return nil, nil
	}
	var refused *etcd.RefusedError
	if errors.As(err, &refused) {
		return nil, &RefusedError{err}
	}
	if err != nil {
		return nil, err
	}
	items := make([]*Item, len(cs))
	for i, c := range cs {
		items[i] = k.EtcdItem(c, id)
	}
	return items, nil
}

func revision(r int64) string {
	if r == 0 {
		return "absent"
	}
	return strconv.FormatInt(r, 10)
}
