package steps_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/breakglass/breakglass/recover/steps"
)

// TestLiftOwnerDeletedSinceTheHold: a hold paused its DaemonSet in etcd
// (real etcd, the pause journaled as a hold's records are); the DaemonSet
// was deleted since (its namespace removed, say). The lift's plan says so
// in a note and goes on (the images on the nodes must still be released),
// instead of failing on the missing object; with the DaemonSet there it
// resumes it.
func TestLiftOwnerDeletedSinceTheHold(t *testing.T) {
	e := newHostedEnv(t)
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "telemetry", UID: "u1"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "agent"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "reg/agent:1"}}}}}}
	key := e.put(t, "daemonsets", ds, appsv1.SchemeGroupVersion.WithKind("DaemonSet"))
	r, err := e.store.Layout.Lookup("daemonsets")
	if err != nil {
		t.Fatal(err)
	}
	obj := steps.Object{Resource: r, Namespace: "telemetry", Name: "agent"}
	if _, err := e.eng.Run(context.Background(), steps.PauseDaemonSet(e.kind, obj, false)); err != nil {
		t.Fatal(err)
	}
	recs := e.records(t)
	if len(recs) == 0 {
		t.Fatal("the pause journaled nothing")
	}
	// As a hold journals its owner's pause: under the hold's ID and op.
	for i := range recs {
		recs[i].ID, recs[i].Op = "hold-1", steps.OpPodsHold
	}
	lift := func() ([]string, int) {
		t.Helper()
		p, err := steps.PlanLift(&steps.Pods{}, e.kind, e.store, nil, recs, "hold-1", steps.LiftOptions{})(context.Background(), "lift-1")
		if err != nil {
			t.Fatalf("lift: %v", err)
		}
		return p.Notes, len(p.Items)
	}
	if notes, items := lift(); items != 1 {
		t.Fatalf("the paused DaemonSet there: %d items, want its resume (notes %q)", items, notes)
	}

	if _, err := e.srv.Client.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	notes, items := lift()
	if items != 0 || !slices.ContainsFunc(notes, func(n string) bool {
		return strings.Contains(n, "daemonsets.apps telemetry/agent was deleted since the hold") && strings.Contains(n, "images on the nodes are released")
	}) {
		t.Fatalf("the DaemonSet deleted: %d items, notes %q; want none and a note that says so", items, notes)
	}
}
