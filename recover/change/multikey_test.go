package change_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// twoScales is one change that writes two keys: web and api scaled to 0.
func twoScales(e *env, api steps.Object) change.Planner {
	web := steps.Scale(e.kind, e.obj, 0, false)
	other := steps.Scale(e.kind, api, 0, false)
	return func(ctx context.Context, id string) (*change.Plan, error) {
		p, err := web(ctx, id)
		if err != nil {
			return nil, err
		}
		q, err := other(ctx, id)
		if err != nil {
			return nil, err
		}
		p.Items = append(p.Items, q.Items...)
		return p, nil
	}
}

// An etcd change that wrote several keys is undone on every key, byte for
// byte, the last written first (the undo used to restore only the first).
func TestUndoRestoresEveryKeyOfAChange(t *testing.T) {
	e := newEnv(t, 3)
	api := e.obj
	api.Name = "api"
	apiKey := "/registry/deployments/shop/api"
	webBefore := e.value(t)
	if _, err := e.srv.Client.Put(context.Background(), apiKey, string(webBefore)); err != nil {
		t.Fatal(err)
	}
	eng := e.engine(nil)
	p, err := eng.Run(context.Background(), twoScales(e, api))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Items) != 2 {
		t.Fatalf("plan has %d items, want 2", len(p.Items))
	}
	get := func(key string) []byte {
		resp, err := e.srv.Client.Get(context.Background(), key)
		if err != nil || len(resp.Kvs) == 0 {
			t.Fatalf("get %s: %v", key, err)
		}
		return resp.Kvs[0].Value
	}
	if bytes.Equal(get(apiKey), webBefore) || bytes.Equal(e.value(t), webBefore) {
		t.Fatal("the change did not write both keys")
	}
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	writes, err := journal.AppliedWrites(recs, p.ID)
	if err != nil || len(writes) != 2 {
		t.Fatalf("AppliedWrites = %d writes, %v; want 2", len(writes), err)
	}
	u, err := eng.Undo(context.Background(), recs, p.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Items) != 2 || u.Items[0].Target.Key != apiKey {
		t.Errorf("undo items %v, want both keys, api (written last) first", u.Items)
	}
	if !bytes.Equal(e.value(t), webBefore) || !bytes.Equal(get(apiKey), webBefore) {
		t.Error("undo did not restore both keys byte for byte")
	}
}

// When one key of the change moved since, the undo refuses and restores
// none of them: half an undo is worse than none.
func TestUndoOfMultiKeyChangeRefusesWhole(t *testing.T) {
	e := newEnv(t, 3)
	api := e.obj
	api.Name = "api"
	apiKey := "/registry/deployments/shop/api"
	if _, err := e.srv.Client.Put(context.Background(), apiKey, string(e.value(t))); err != nil {
		t.Fatal(err)
	}
	eng := e.engine(nil)
	p, err := eng.Run(context.Background(), twoScales(e, api))
	if err != nil {
		t.Fatal(err)
	}
	e.setReplicas(t, 5) // web moved since the change
	apiAfter := func() []byte {
		resp, _ := e.srv.Client.Get(context.Background(), apiKey)
		return resp.Kvs[0].Value
	}
	before := apiAfter()
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	_, err = eng.Undo(context.Background(), recs, p.ID, false)
	var refused *change.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("undo err = %v, want a refusal", err)
	}
	if !bytes.Equal(apiAfter(), before) {
		t.Error("api was restored although the undo was refused")
	}
	if e.replicas(t) != 5 {
		t.Error("web was touched by a refused undo")
	}
}
