package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// promptReader answers a confirmation prompt: before each answer it runs
// the hook for that answer (the racing writer), then gives the answer. No
// answer left reads as end of input (no).
type promptReader struct {
	mu      sync.Mutex
	answers []string
	hooks   []func()
	buf     []byte
}

func (r *promptReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.buf) == 0 {
		if len(r.answers) == 0 {
			return 0, io.EOF
		}
		if len(r.hooks) > 0 {
			if h := r.hooks[0]; h != nil {
				h()
			}
			r.hooks = r.hooks[1:]
		}
		r.buf, r.answers = []byte(r.answers[0]), r.answers[1:]
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// runTTY runs the CLI as an operator at a terminal answering prompts.
func (e *etcdEnv) runTTY(t *testing.T, in io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return e.runIn(t, in, true, args...)
}

func (e *etcdEnv) putDeploy(t *testing.T, ns, name string, replicas int32) {
	t.Helper()
	e.put(t, "deployments", ns, name, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec:       appsv1.DeploymentSpec{Replicas: &replicas},
	}, gvkDeploy)
}

// The operator approved "replicas 3 -> 0"; while the prompt was open
// someone set 7. What is written must be what was confirmed: the change is
// planned again and asked about again, and answering no writes nothing.
func TestScaleWritesOnlyWhatWasConfirmed(t *testing.T) {
	e := newEtcdEnv(t)
	e.putDeploy(t, "shop", "web", 3)
	key := "/registry/deployments/shop/web"
	in := &promptReader{answers: []string{"y\n", "n\n"}, hooks: []func(){func() { e.putDeploy(t, "shop", "web", 7) }}}
	_, errOut, code := e.runTTY(t, in, "scale", "deployment", "shop/web", "--replicas", "0")
	if code != 4 {
		t.Errorf("exit %d, want 4 (the new plan was not confirmed); stderr:\n%s", code, errOut)
	}
	for _, want := range []string{"replicas 3 -> 0", "changed since it was planned", "planned again", "+  replicas: 0", "replicas 7 -> 0"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	d, err := e.store.Codec.Decode(key, e.value(t, key), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := *d.Object.(*appsv1.Deployment).Spec.Replicas; got != 7 {
		t.Errorf("replicas = %d: a change the operator did not confirm was written", got)
	}

	// Answering yes to the new plan applies it, and undo puts back 7.
	in = &promptReader{answers: []string{"y\n", "y\n"}, hooks: []func(){func() { e.putDeploy(t, "shop", "web", 9) }}}
	out, errOut, code := e.runTTY(t, in, "scale", "deployment", "shop/web", "--replicas", "0")
	if code != 0 || !strings.Contains(out, "replicas 9 -> 0") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
}

// Protected objects are refused without --force, naming them, and nothing
// is written; --force lets the operator through.
func TestProtectedObjectsRefused(t *testing.T) {
	e := newEtcdEnv(t)
	e.put(t, "namespaces", "", "prod", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}}, schema.GroupVersionKind{Version: "v1", Kind: "Namespace"})
	e.put(t, "pods", "kube-system", "kube-apiserver-cp-1", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-apiserver-cp-1",
		Annotations: map[string]string{"kubernetes.io/config.mirror": "abc"}}}, schema.GroupVersionKind{Version: "v1", Kind: "Pod"})
	e.put(t, "flowschemas", "", "exempt", &flowcontrolv1.FlowSchema{ObjectMeta: metav1.ObjectMeta{Name: "exempt"}},
		schema.GroupVersionKind{Group: "flowcontrol.apiserver.k8s.io", Version: "v1", Kind: "FlowSchema"})
	e.putDeploy(t, "kube-system", "coredns", 2)
	cases := [][]string{
		{"delete", "namespace", "prod"},
		{"delete", "pod", "kube-system/kube-apiserver-cp-1"},
		{"delete", "flowschema", "exempt"},
		{"delete", "deployment", "kube-system/coredns"},
		{"scale", "deployment", "kube-system/coredns", "--replicas", "0"},
	}
	for _, args := range cases {
		_, errOut, code := e.run(t, append(args, "--yes")...)
		if code != 4 || !strings.Contains(errOut, "--force") {
			t.Errorf("%v: exit %d, want 4 with a --force hint; stderr:\n%s", args, code, errOut)
		}
	}
	if recs, err := journal.Read(e.journal); err == nil && len(recs) > 0 {
		t.Errorf("refused changes were journaled: %+v", recs)
	}
	if _, errOut, code := e.run(t, "delete", "namespace", "prod", "--yes", "--force"); code != 0 {
		t.Errorf("delete --force: exit %d %s", code, errOut)
	}
	if e.value(t, "/registry/namespaces/prod") != nil {
		t.Error("--force did not delete")
	}
}

// The text and the JSON printer read the same events: one change gives one
// sequence, whatever the output.
func TestSameEventsForTextAndJSON(t *testing.T) {
	seqs := map[string]string{}
	for _, output := range []string{"table", "json"} {
		e := newEtcdEnv(t)
		e.putDeploy(t, "shop", "web", 3)
		var names []string
		var mu sync.Mutex
		testEventTap = func(ev change.Event) {
			mu.Lock()
			defer mu.Unlock()
			names = append(names, strings.TrimPrefix(strings.TrimPrefix(typeName(ev), "change."), "*"))
		}
		_, errOut, code := e.run(t, "scale", "deployment", "shop/web", "--replicas", "0", "--yes", "-o", output)
		testEventTap = nil
		if code != 0 {
			t.Fatalf("-o %s: exit %d %s", output, code, errOut)
		}
		seqs[output] = strings.Join(names, " ")
	}
	if seqs["table"] != seqs["json"] || seqs["table"] == "" {
		t.Errorf("text saw %q, json saw %q", seqs["table"], seqs["json"])
	}
	if want := "PlanReady ItemStarted ItemApplied Applied"; seqs["json"] != want {
		t.Errorf("events %q, want %q", seqs["json"], want)
	}
}

func typeName(v any) string { return fmt.Sprintf("%T", v) }
