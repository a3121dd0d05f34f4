package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
)

// Change is one write to one key, as journaled before it is made and again
// once its outcome is known.
type Change struct {
	// ID names the change in the journal (set by the caller; every attempt
	// of the same change shares it).
	ID string
	// Op says what the change is for: "scale", "daemonset-pause", "delete",
	// "undo"...
	Op       string
	Key      string
	Resource Resource
	// Namespace and Name of the object.
	Namespace, Name string
	// Before is the exact value replaced (nil when the key did not exist)
	// and BeforeRevision its ModRevision (0 when absent): what a CAS
	// compares with and what undo restores.
	Before         []byte
	BeforeRevision int64
	// After is the value written; Delete marks a deletion.
	After  []byte
	Delete bool
	// Attempt counts the plans of the change, from 1 (the engine plans
	// again when the key moved before the compare-and-swap).
	Attempt int
	// Revision is the etcd revision the write produced (0 until applied).
	Revision int64
	// Summary says in a few words what changes ("replicas 3 -> 0").
	Summary string
}

// Journal records changes. Intent must be durable before it returns: the
// write happens only after it succeeds. Outcome records how it ended (err
// nil = applied).
type Journal interface {
	Intent(ctx context.Context, c *Change) error
	Outcome(ctx context.Context, c *Change, err error) error
}

// WriteOptions label a planned change: its ID and op, as the journal will
// record them when it is applied.
type WriteOptions struct {
	ID string
	Op string
}

// ErrNoChange is returned by an intent when the object is already as wanted.
var ErrNoChange = errors.New("no change needed")

// ConflictError is a write whose key moved between the plan and the
// compare-and-swap: nothing was written.
type ConflictError struct {
	Key      string
	Attempts int
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s changed since it was planned (attempt %d): nothing written", e.Key, e.Attempts)
}

// RefusedError is a write breakglass will not make (exit code 4).
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return e.Reason }

// ExitCode makes a refusal exit with code 4.
func (e *RefusedError) ExitCode() int { return 4 }

// UnknownOutcomeError is a transaction whose result was lost (a timeout or
// a broken connection after sending it): the write may or may not have been
// applied.
type UnknownOutcomeError struct {
	Key string
	Err error
}

func (e *UnknownOutcomeError) Error() string {
	return fmt.Sprintf("%s: the write may or may not have been applied: %v\nhint: read the object again (breakglass get) before retrying; the journal has the previous value", e.Key, e.Err)
}

func (e *UnknownOutcomeError) Unwrap() error { return e.Err }

// Intent computes the new value from the current one (nil when the key does
// not exist). It returns the value to write, or del=true to delete the key,
// or ErrNoChange.
type Intent func(cur *mvccpb.KeyValue) (after []byte, del bool, summary string, err error)

// PlanWrite reads key and plans the change intent makes to it: the exact
// bytes to write (or the deletion) and the ModRevision they are planned
// against. It writes nothing: Apply writes a planned change, with
// compare-and-swap on that revision, after the operator confirmed it.
func (s *Store) PlanWrite(ctx context.Context, r Resource, key string, intent Intent, o WriteOptions) (*Change, error) {
	if r.Name == "secrets" && r.Group == "" || strings.HasPrefix(key, s.Layout.Prefix+"/secrets/") {
		return nil, &RefusedError{Reason: fmt.Sprintf("%s: breakglass does not write Secrets: their values would be journaled and shown in clear\nhint: change Secrets with kubectl once the API server answers", key)}
	}
	ns, name, _ := s.Layout.Parse(r, key)
	cur, _, err := s.Get(ctx, key, Linearizable)
	if err != nil {
		return nil, err
	}
	after, del, summary, err := intent(cur)
	c := &Change{ID: o.ID, Op: o.Op, Key: key, Resource: r, Namespace: ns, Name: name, After: after, Delete: del, Attempt: 1, Summary: summary}
	if cur != nil {
		c.Before, c.BeforeRevision = cur.Value, cur.ModRevision
	}
	switch {
	case errors.Is(err, ErrNoChange):
		return c, ErrNoChange
	case err != nil:
		return nil, err
	case !del && c.Before != nil && bytes.Equal(after, c.Before):
		return c, ErrNoChange
	case del && cur == nil:
		return c, ErrNoChange
	}
	return c, nil
}

// Apply makes exactly the planned change c: it journals the intent, writes
// c.After (or deletes) in a transaction that compares the key's ModRevision
// with c.BeforeRevision, and journals the outcome. It never re-reads and
// re-applies: when the key moved since c was planned it writes nothing and
// returns a *ConflictError, with the key's value now (nil when it is gone),
// so that the caller can plan again and show the operator the new change.
func (s *Store) Apply(ctx context.Context, c *Change, j Journal) (now *mvccpb.KeyValue, err error) {
	if j == nil {
		return nil, errors.New("internal: a write needs a journal")
	}
	if c.Resource.Name == "secrets" && c.Resource.Group == "" || strings.HasPrefix(c.Key, s.Layout.Prefix+"/secrets/") {
		return nil, &RefusedError{Reason: fmt.Sprintf("%s: breakglass does not write Secrets: their values would be journaled and shown in clear\nhint: change Secrets with kubectl once the API server answers", c.Key)}
	}
	if c.Attempt == 0 {
		c.Attempt = 1
	}
	if err := j.Intent(ctx, c); err != nil {
		return nil, fmt.Errorf("journal: %w\nhint: nothing was written; fix the journal (--journal FILE) and retry", err)
	}
	ok, now, err := s.cas(ctx, c)
	if err != nil {
		uerr := &UnknownOutcomeError{Key: c.Key, Err: err}
		if jerr := j.Outcome(context.WithoutCancel(ctx), c, uerr); jerr != nil {
			return nil, errors.Join(uerr, fmt.Errorf("journal: %w", jerr))
		}
		return nil, uerr
	}
	if ok {
		return nil, j.Outcome(ctx, c, nil)
	}
	conflict := &ConflictError{Key: c.Key, Attempts: c.Attempt}
	if err := j.Outcome(ctx, c, conflict); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return now, conflict
}

// cas runs the transaction of one attempt. On a lost race it returns the
// key's value now (nil if it is gone), read in the same transaction.
func (s *Store) cas(ctx context.Context, c *Change) (ok bool, now *mvccpb.KeyValue, err error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	cmp := clientv3.Compare(clientv3.ModRevision(c.Key), "=", c.BeforeRevision)
	op := clientv3.OpPut(c.Key, string(c.After))
	if c.Delete {
		op = clientv3.OpDelete(c.Key)
	}
	resp, err := s.kv.Txn(ctx).If(cmp).Then(op).Else(clientv3.OpGet(c.Key)).Commit()
	if err != nil {
		return false, nil, err
	}
	if resp.Succeeded {
		c.Revision = resp.Header.Revision
		return true, nil, nil
	}
	if rr := resp.Responses[0].GetResponseRange(); rr != nil && len(rr.Kvs) > 0 {
		now = (*mvccpb.KeyValue)(rr.Kvs[0])
	}
	return false, now, nil
}

// Mutate changes a decoded object in place. It returns a summary of the
// change ("replicas 3 -> 0") or ErrNoChange.
type Mutate func(obj runtime.Object) (summary string, err error)

// PlanUpdate decodes the object, applies mutate to it, and plans writing it
// back in the encoding and API version it was stored in, with
// metadata.generation bumped when the spec changed, as the API server does.
func (s *Store) PlanUpdate(ctx context.Context, r Resource, ns, name string, mutate Mutate, o WriteOptions) (*Change, error) {
	key := s.Layout.Key(r, ns, name)
	return s.PlanWrite(ctx, r, key, func(cur *mvccpb.KeyValue) ([]byte, bool, string, error) {
		if cur == nil {
			return nil, false, "", &NotFoundError{Resource: r, Namespace: ns, Name: name, Key: key}
		}
		d, err := s.Codec.Decode(key, cur.Value, cur.ModRevision)
		if err != nil {
			return nil, false, "", &RefusedError{Reason: fmt.Sprintf("%v\nhint: breakglass only changes values it can decode and encode again", err)}
		}
		if d.Partial {
			return nil, false, "", &RefusedError{Reason: fmt.Sprintf("%s: %s is not a type breakglass can re-encode", key, d.GVK)}
		}
		obj := d.Object.DeepCopyObject()
		summary, err := mutate(obj)
		if err != nil {
			return nil, false, "", err
		}
		if specChanged(d.Object, obj) {
			if m, err := meta.Accessor(obj); err == nil {
				m.SetGeneration(m.GetGeneration() + 1)
			}
		}
		after, err := s.Codec.Encode(obj, d.GVK, d.Encoding)
		if err != nil {
			return nil, false, "", fmt.Errorf("%s: encode: %w", key, err)
		}
		return after, false, summary, nil
	}, o)
}

// specChanged compares the Spec fields of two objects of the same type, as
// the API server's update strategies do before bumping the generation.
func specChanged(a, b runtime.Object) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Kind() == reflect.Pointer {
		va, vb = va.Elem(), vb.Elem()
	}
	if va.Kind() != reflect.Struct {
		return false
	}
	fa, fb := va.FieldByName("Spec"), vb.FieldByName("Spec")
	if !fa.IsValid() || !fb.IsValid() {
		return false
	}
	return !equality.Semantic.DeepEqual(fa.Interface(), fb.Interface())
}

// PlanDelete plans removing one object's key. Finalizers and owner
// references are not honoured: once applied, the key is gone.
func (s *Store) PlanDelete(ctx context.Context, r Resource, ns, name string, o WriteOptions) (*Change, error) {
	key := s.Layout.Key(r, ns, name)
	return s.PlanWrite(ctx, r, key, func(cur *mvccpb.KeyValue) ([]byte, bool, string, error) {
		if cur == nil {
			return nil, false, "", &NotFoundError{Resource: r, Namespace: ns, Name: name, Key: key}
		}
		return nil, true, "delete " + key, nil
	}, o)
}

// PlanRestore plans putting back a previous value byte for byte (nil = the key did not
// exist, so delete it). expectRevision is the ModRevision the key must have
// now (0 = absent); with force, any current revision is accepted and the
// value read is what gets replaced (and journaled).
func (s *Store) PlanRestore(ctx context.Context, r Resource, key string, value []byte, expectRevision int64, force bool, o WriteOptions) (*Change, error) {
	return s.PlanWrite(ctx, r, key, func(cur *mvccpb.KeyValue) ([]byte, bool, string, error) {
		var now int64
		if cur != nil {
			now = cur.ModRevision
		}
		if now != expectRevision && !force {
			return nil, false, "", &RefusedError{Reason: fmt.Sprintf("%s changed since (revision %s, expected %s)\nhint: look at it with breakglass get; pass --force to restore the previous value anyway", key, revString(now), revString(expectRevision))}
		}
		if value == nil {
			if cur == nil {
				return nil, false, "", ErrNoChange
			}
			return nil, true, "delete " + key, nil
		}
		return value, false, "restore previous value of " + key, nil
	}, o)
}

func revString(r int64) string {
	if r == 0 {
		return "absent"
	}
	return strconv.FormatInt(r, 10)
}
