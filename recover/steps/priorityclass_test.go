package steps_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// Neutralising a PriorityClass in a real etcd: globalDefault false and
// preemptionPolicy Never written, the value kept, journaled; planned again
// it is unchanged; undo puts the exact bytes back; a system class is
// refused without force and nothing is written.
func TestNeutralisePriorityClass(t *testing.T) {
	e := newHostedEnv(t)
	gvk := schedulingv1.SchemeGroupVersion.WithKind("PriorityClass")
	key := e.put(t, "priorityclasses", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "medium"}, Value: 1000, GlobalDefault: true}, gvk)
	sysKey := e.put(t, "priorityclasses", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "system-cluster-critical"}, Value: 2000000000}, gvk)
	before, sysBefore := e.value(t, key), e.value(t, sysKey)

	_, err := e.eng.Run(context.Background(), steps.NeutralisePriorityClass(e.kind, "system-cluster-critical", false))
	var refused *change.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("system class: %v, want refused", err)
	}
	if !bytes.Equal(e.value(t, sysKey), sysBefore) {
		t.Fatal("the refused neutralise wrote the system class")
	}

	p, err := e.eng.Run(context.Background(), steps.NeutralisePriorityClass(e.kind, "medium", false))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Items) != 1 || p.Items[0].Summary == "" || len(p.Notes) == 0 {
		t.Fatalf("plan: %d items, notes %v", len(p.Items), p.Notes)
	}
	d, err := e.store.Codec.Decode(key, e.value(t, key), 0)
	if err != nil {
		t.Fatal(err)
	}
	pc := d.Object.(*schedulingv1.PriorityClass)
	if pc.GlobalDefault || pc.PreemptionPolicy == nil || *pc.PreemptionPolicy != corev1.PreemptNever || pc.Value != 1000 {
		t.Fatalf("after: globalDefault %v, preemptionPolicy %v, value %d", pc.GlobalDefault, pc.PreemptionPolicy, pc.Value)
	}
	again, err := e.eng.Run(context.Background(), steps.NeutralisePriorityClass(e.kind, "medium", false))
	if err != nil || len(again.Items) != 0 {
		t.Fatalf("again: %v, %d items, want nothing to change", err, len(again.Items))
	}

	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || recs[0].Op != steps.OpPriorityClassNeutralise {
		t.Fatalf("journal: %+v", recs)
	}
	if _, err := e.eng.Undo(context.Background(), recs, p.ID, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.value(t, key), before) {
		t.Fatal("undo did not put the exact bytes back")
	}
	if _, err := e.eng.Run(context.Background(), steps.NeutralisePriorityClass(e.kind, "nope", false)); err == nil {
		t.Fatal("a class that is not there: nil error")
	}
}
