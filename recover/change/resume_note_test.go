package change_test

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// TestResumeNoteInPlan: resuming a DaemonSet whose spec was changed while
// it was paused says so in the plan (so every printer shows it, before the
// question), and says nothing when the spec is the one before the pause.
func TestResumeNoteInPlan(t *testing.T) {
	e := newEnv(t, 1)
	r, _ := e.store.Layout.Lookup("daemonsets")
	obj := steps.Object{Resource: r, Namespace: "mon", Name: "agent"}
	key := "/registry/daemonsets/mon/agent"
	put := func(image string, ds *appsv1.DaemonSet) {
		t.Helper()
		if ds == nil {
			ds = &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "mon", Name: "agent", Generation: 1}}
		}
		ds.Spec.Template.Spec.Containers = []corev1.Container{{Name: "a", Image: image}}
		b, err := e.store.Codec.Encode(ds, schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"}, etcd.EncodingProtobuf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.srv.Client.Put(context.Background(), key, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	for _, changed := range []bool{false, true} {
		put("agent:1", nil)
		eng := e.engine(nil)
		if _, err := eng.Run(context.Background(), steps.PauseDaemonSet(e.kind, obj, false)); err != nil {
			t.Fatal(err)
		}
		if changed {
			// Someone edits the paused DaemonSet's image.
			o, err := e.store.GetObject(context.Background(), r, "mon", "agent", etcd.Linearizable)
			if err != nil {
				t.Fatal(err)
			}
			put("agent:2", o.Decoded.Object.(*appsv1.DaemonSet))
		}
		recs, err := journal.Read(e.journal)
		if err != nil {
			t.Fatal(err)
		}
		var notes []string
		eng = e.engine(nil)
		eng.Emit = func(ev change.Event) {
			if pr, ok := ev.(change.PlanReady); ok {
				notes = pr.Plan.Notes
			}
		}
		if _, err := eng.Run(context.Background(), steps.ResumeDaemonSet(e.kind, obj, recs)); err != nil {
			t.Fatal(err)
		}
		got := strings.Join(notes, "\n")
		if changed != strings.Contains(got, "changed while paused") {
			t.Fatalf("spec changed while paused: %v; plan notes %q", changed, got)
		}
	}
}
