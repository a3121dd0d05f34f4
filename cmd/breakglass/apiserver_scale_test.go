package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/recover/steps"
)

var gvkSTS = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "StatefulSet"}

// seedHosted puts a hosting cluster's API servers into etcd: one owned by
// a ConfigMap (the stand-in for an operator's object, as in the lab), one
// without an owner, and a StatefulSet one.
func seedHosted(t *testing.T, e *etcdEnv) {
	t.Helper()
	e.put(t, "deployments", "hosted-cp", "kube-apiserver", &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "hosted-cp", Name: "kube-apiserver", Generation: 1,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "hcp", UID: "u1", Controller: ptr.To(true)}}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1))},
	}, gvkDeploy)
	e.put(t, "deployments", "hosted-cp", "kube-apiserver-plain", &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "hosted-cp", Name: "kube-apiserver-plain", Generation: 1},
		Spec:       appsv1.DeploymentSpec{Replicas: ptr.To(int32(1))},
	}, gvkDeploy)
	e.put(t, "statefulsets", "k0s", "kmc-k1", &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "k0s", Name: "kmc-k1", Generation: 1},
		Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To(int32(1))},
	}, gvkSTS)
}

func TestAPIServerScaleCommand(t *testing.T) {
	e := newEtcdEnv(t)
	seedHosted(t, e)
	owned, plain := "/registry/deployments/hosted-cp/kube-apiserver", "/registry/deployments/hosted-cp/kube-apiserver-plain"
	origOwned, origPlain := e.value(t, owned), e.value(t, plain)
	jnl := []string{"--journal", e.journal}
	scale := func(args ...string) (string, string, int) {
		t.Helper()
		return e.run(t, append(append([]string{"apiserver", "scale"}, args...), jnl...)...)
	}

	// Dry runs write nothing; the one on the owned API server shows the
	// warning with the diff.
	out, errOut, code := scale("--object", "hosted-cp/kube-apiserver-plain", "--replicas", "2", "--dry-run")
	if code != 0 || !strings.Contains(out, "+  replicas: 2") || strings.Contains(out, "note:") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = scale("--object", "hosted-cp/kube-apiserver", "--replicas", "3", "--dry-run", "--force")
	if code != 0 || !strings.Contains(out, "+  replicas: 3") || !strings.Contains(out, "note: deployment hosted-cp/kube-apiserver is owned by ConfigMap v1 hosted-cp/hcp") {
		t.Fatalf("dry run --force: exit %d\n%s%s", code, out, errOut)
	}
	if !bytes.Equal(e.value(t, owned), origOwned) || !bytes.Equal(e.value(t, plain), origPlain) {
		t.Fatal("a dry run wrote")
	}

	// The owned one is refused without --force, naming its owner, and
	// nothing is written or journaled.
	_, errOut, code = scale("--object", "hosted-cp/kube-apiserver", "--replicas", "3", "--yes")
	if code != 4 || !strings.Contains(errOut, "is owned by ConfigMap v1 hosted-cp/hcp: its operator will put replicas back") || !strings.Contains(errOut, "pass --force") {
		t.Errorf("owned without --force: exit %d, want 4 naming the owner:\n%s", code, errOut)
	}
	if !bytes.Equal(e.value(t, owned), origOwned) {
		t.Fatal("a refused scale wrote")
	}
	if _, err := os.Stat(e.journal); err == nil {
		t.Fatal("a refused or dry-run scale touched the journal")
	}

	// With --force: written, the warning in the JSON change line.
	out, errOut, code = scale("--object", "deployment/hosted-cp/kube-apiserver", "--replicas", "3", "--yes", "--force", "-o", "json")
	if code != 0 {
		t.Fatalf("--force: exit %d %s", code, errOut)
	}
	ch := changeLine(t, out)
	notes, _ := ch["notes"].([]any)
	if ch["op"] != steps.OpAPIServerScale || ch["summary"] != "replicas 1 -> 3" || len(notes) != 1 || !strings.Contains(notes[0].(string), "it may be reverted") {
		t.Errorf("change line %v", ch)
	}
	var d appsv1.Deployment
	if dd, err := e.store.Codec.Decode(owned, e.value(t, owned), 0); err != nil {
		t.Fatal(err)
	} else {
		d = *dd.Object.(*appsv1.Deployment)
	}
	if *d.Spec.Replicas != 3 || d.Generation != 2 {
		t.Errorf("replicas %d generation %d, want 3 and 2", *d.Spec.Replicas, d.Generation)
	}

	// Undo routes the new op to the etcd kind: the exact bytes are back.
	if _, errOut, code := e.run(t, "undo", ch["id"].(string), "--yes"); code != 0 {
		t.Fatalf("undo: exit %d %s", code, errOut)
	}
	if !bytes.Equal(e.value(t, owned), origOwned) {
		t.Error("undo did not restore the exact bytes")
	}

	// The inventory's apiserver.deployment is the default target.
	inv := filepath.Join(t.TempDir(), "breakglass.yaml")
	if err := os.WriteFile(inv, []byte("apiserver:\n  deployment: hosted-cp/kube-apiserver-plain\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := scale("--inventory", inv, "--replicas", "2", "--yes"); code != 0 || !strings.Contains(out, "replicas 1 -> 2") {
		t.Errorf("from the inventory: exit %d\n%s%s", code, out, errOut)
	}

	// NAMESPACE/NAME finds a StatefulSet when there is no Deployment.
	for _, obj := range []string{"k0s/kmc-k1", "sts/k0s/kmc-k1"} {
		if out, errOut, code := scale("--object", obj, "--replicas", "2", "--yes"); code != 0 || !strings.Contains(out, "statefulsets.apps k0s/kmc-k1") {
			t.Errorf("--object %s: exit %d\n%s%s", obj, code, out, errOut)
		}
	}
	if _, errOut, code := scale("--object", "hosted-cp/nope", "--replicas", "2", "--yes"); code != 1 ||
		!strings.Contains(errOut, "neither deployment hosted-cp/nope nor statefulset hosted-cp/nope") {
		t.Errorf("missing: exit %d, want 1 naming both kinds:\n%s", code, errOut)
	}
}

func TestAPIServerScaleUsage(t *testing.T) {
	e := newEtcdEnv(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--replicas", "2"}, "apiserver.deployment"},
		{[]string{"--object", "ns/name"}, "--replicas is required"},
		{[]string{"--object", "ns/name", "--replicas", "-1"}, "must not be negative"},
		{[]string{"--object", "name", "--replicas", "1"}, "want [deployment|statefulset/]NAMESPACE/NAME"},
		{[]string{"--object", "a/b/c/d", "--replicas", "1"}, "want [deployment|statefulset/]NAMESPACE/NAME"},
		{[]string{"--object", "ns/", "--replicas", "1"}, "want [deployment|statefulset/]NAMESPACE/NAME"},
		{[]string{"--object", "daemonset/ns/x", "--replicas", "1"}, "a deployment or a statefulset, not daemonsets.apps"},
		{[]string{"--object", "nosuch/ns/x", "--replicas", "1"}, `unknown resource "nosuch"`},
	} {
		_, errOut, code := e.run(t, append([]string{"apiserver", "scale"}, tt.args...)...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, want 2 saying %q:\n%s", tt.args, code, tt.want, errOut)
		}
	}
	// The missing target says how to fix it: the flag and the inventory key.
	_, errOut, _ := e.run(t, "apiserver", "scale", "--replicas", "2")
	if !strings.Contains(errOut, "--object") || !strings.Contains(errOut, "hint:") {
		t.Errorf("no target: %s", errOut)
	}
}

// Through the real binary: the exit codes a user meets.
func TestBinaryAPIServerScale(t *testing.T) {
	e := newEtcdEnv(t)
	seedHosted(t, e)
	owned := "/registry/deployments/hosted-cp/kube-apiserver"
	orig := e.value(t, owned)
	ep := []string{"--endpoints", e.srv.Endpoint}

	r := runBinary(t, nil, append([]string{"apiserver", "scale", "--replicas", "3"}, ep...)...)
	if r.code != 2 || !strings.Contains(r.stderr, "apiserver.deployment") || !strings.Contains(r.stderr, "--object") {
		t.Errorf("no target: exit %d, want 2:\n%s", r.code, r.stderr)
	}
	r = runBinary(t, nil, append([]string{"apiserver", "scale", "--object", "hosted-cp/kube-apiserver", "--replicas", "3", "--yes"}, ep...)...)
	if r.code != 4 || !strings.Contains(r.stderr, "ConfigMap v1 hosted-cp/hcp") {
		t.Errorf("owned: exit %d, want 4 naming the owner:\n%s", r.code, r.stderr)
	}
	r = runBinary(t, nil, append([]string{"apiserver", "scale", "--object", "hosted-cp/kube-apiserver", "--replicas", "3", "--force", "--dry-run"}, ep...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "dry run, nothing written") || !strings.Contains(r.stdout, "note: ") {
		t.Errorf("dry run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !bytes.Equal(e.value(t, owned), orig) {
		t.Error("a refused or dry-run scale wrote")
	}
}
