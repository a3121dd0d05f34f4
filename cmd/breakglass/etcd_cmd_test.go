package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
	"github.com/breakglass/breakglass/recover/journal"
)

// etcdEnv is an embedded etcd seeded with a few objects, and the flags that
// point the commands at it.
type etcdEnv struct {
	srv     *etcdtest.Server
	store   *etcd.Store
	journal string
	flags   []string
}

func newEtcdEnv(t *testing.T) *etcdEnv {
	t.Helper()
	for _, v := range []string{"ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "BREAKGLASS_INVENTORY"} {
		t.Setenv(v, "")
	}
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	srv := etcdtest.Start(t)
	s := etcd.NewStoreFromClient(srv.Client, etcd.Config{})
	e := &etcdEnv{srv: srv, store: s, journal: filepath.Join(t.TempDir(), "journal.jsonl")}
	e.flags = []string{"--endpoints", srv.Endpoint}
	return e
}

func (e *etcdEnv) put(t *testing.T, resource, ns, name string, obj runtime.Object, gvk schema.GroupVersionKind) {
	t.Helper()
	r, err := e.store.Layout.Lookup(resource)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.store.Codec.Encode(obj, gvk, etcd.EncodingProtobuf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.Client.Put(context.Background(), e.store.Layout.Key(r, ns, name), string(b)); err != nil {
		t.Fatal(err)
	}
}

func (e *etcdEnv) value(t *testing.T, key string) []byte {
	t.Helper()
	resp, err := e.srv.Client.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0].Value
}

// run runs the CLI in process against the embedded etcd, with no terminal.
func (e *etcdEnv) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return e.runIn(t, strings.NewReader(""), false, args...)
}

// runIn runs the CLI with in as stdin, a terminal or not.
func (e *etcdEnv) runIn(t *testing.T, in io.Reader, tty bool, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	d := newDeps()
	d.In, d.Out, d.ErrOut = in, &out, &errOut
	d.InIsTTY, d.OutIsTTY, d.ErrIsTTY = tty, false, false
	ctx := context.Background()
	root := newRootCmd(d)
	root.SetArgs(append(append(args, e.flags...), extraJournal(args, e.journal)...))
	err := root.ExecuteContext(ctx)
	code = reportError(&errOut, err, ctx)
	return out.String(), errOut.String(), code
}

// extraJournal adds --journal to the commands that write.
func extraJournal(args []string, path string) []string {
	switch args[0] {
	case "scale", "delete", "undo", "daemonset":
		return []string{"--journal", path}
	case "shed":
		if len(args) > 1 && args[1] != "status" {
			return []string{"--journal", path}
		}
	}
	return nil
}

// changeLine returns the one "change" line of a write's -o json output. A
// "replanned" line may come before it when a controller wrote the object
// between the plan and its apply.
func changeLine(t *testing.T, s string) map[string]any {
	t.Helper()
	var found map[string]any
	for _, l := range jsonLines(t, s) {
		if l["type"] == "change" {
			if found != nil {
				t.Fatalf("two change lines:\n%s", s)
			}
			found = l
		}
	}
	if found == nil {
		t.Fatalf("no change line:\n%s", s)
	}
	return found
}

func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

var (
	gvkPod    = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	gvkDeploy = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	gvkDS     = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"}
)

func seedPods(t *testing.T, e *etcdEnv) {
	for _, p := range []struct{ ns, name, node, app string }{
		{"shop", "web-1", "n1", "web"}, {"shop", "web-2", "n2", "web"}, {"shop", "db-1", "n1", "db"}, {"kube-system", "dns-1", "n2", "dns"},
	} {
		e.put(t, "pods", p.ns, p.name, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: map[string]string{"app": p.app}, CreationTimestamp: metav1.Now()},
			Spec:       corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: "c", Ready: true}}},
		}, gvkPod)
	}
	e.srv.Client.Put(context.Background(), "/registry/pods/shop/zz-sealed", "k8s:enc:aescbc:v1:key1:\x01\x02")
}

func TestGetCommand(t *testing.T) {
	e := newEtcdEnv(t)
	seedPods(t, e)

	out, errOut, code := e.run(t, "get", "pods", "-n", "shop")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "web-1") || strings.Contains(out, "dns-1") || !strings.Contains(out, "Running") {
		t.Errorf("table:\n%s", out)
	}
	if !strings.Contains(errOut, "encrypted at rest (aescbc:v1:key1)") || !strings.Contains(out, "zz-sealed") {
		t.Errorf("the encrypted value must be reported per key: stdout\n%s\nstderr\n%s", out, errOut)
	}

	out, _, code = e.run(t, "get", "po", "-A", "-l", "app=web", "--field-selector", "spec.nodeName=n1", "-o", "name")
	if code != 0 || strings.TrimSpace(out) != "pod/web-1" {
		t.Errorf("selectors: exit %d, %q", code, out)
	}

	// The storage view: one type-tagged line per key, the encrypted one
	// included.
	out, _, code = e.run(t, "get", "pods", "-A", "-o", "json", "--show-storage")
	lines := jsonLines(t, out)
	if code != 0 || len(lines) != 5 {
		t.Fatalf("json --show-storage: exit %d, %d lines", code, len(lines))
	}
	var errs, objs int
	for _, l := range lines {
		switch l["type"] {
		case "object":
			objs++
			obj := l["object"].(map[string]any)
			md := obj["metadata"].(map[string]any)
			if obj["kind"] != "Pod" || md["resourceVersion"] != jsonNumberString(l["modRevision"]) {
				t.Errorf("object line: %v", l)
			}
		case "error":
			errs++
			if l["encoding"] != "encrypted" || l["provider"] != "aescbc:v1:key1" {
				t.Errorf("error line: %v", l)
			}
		}
	}
	if objs != 4 || errs != 1 {
		t.Errorf("%d objects, %d errors", objs, errs)
	}

	out, errOut, code = e.run(t, "get", "pods", "dns-1", "-n", "kube-system", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "nodeName: n2") || !strings.HasPrefix(out, "apiVersion: v1\n") || !strings.Contains(out, "\nkind: Pod\n") || strings.Contains(out, "type: object") {
		t.Errorf("get NAME -o yaml: exit %d\n%s\n%s", code, out, errOut)
	}
	if _, errOut, code := e.run(t, "get", "pods", "nope"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("missing object: exit %d %s", code, errOut)
	}
	if _, _, code := e.run(t, "get", "frobnicators"); code != 1 {
		t.Errorf("unknown resource: exit %d", code)
	}

	// Custom resources: JSON values under /registry/<group>/<plural>/, found
	// through their CRD.
	crdOM := metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "widgets.example.com"}}
	raw, _ := crdOM.Marshal()
	unk := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"}, Raw: raw}
	ub, _ := unk.Marshal()
	e.srv.Client.Put(context.Background(), "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com", "k8s\x00"+string(ub))
	e.srv.Client.Put(context.Background(), "/registry/example.com/widgets/shop/w1", `{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1","namespace":"shop"},"spec":{"size":2}}`)
	out, errOut, code = e.run(t, "get", "widgets", "-n", "shop", "-o", "json")
	if code != 0 || !strings.Contains(out, `"size": 2`) || !strings.Contains(out, `"kind": "Widget"`) {
		t.Errorf("custom resource: exit %d %s %s", code, out, errOut)
	}
	out, _, code = e.run(t, "get", "crd")
	if code != 0 || !strings.Contains(out, "widgets.example.com") {
		t.Errorf("crd: exit %d %s", code, out)
	}

	out, _, code = e.run(t, "count", "pods", "--by-namespace", "-o", "json")
	lines = jsonLines(t, out)
	if code != 0 || len(lines) != 1 || lines[0]["objects"].(float64) != 5 || len(lines[0]["namespaces"].([]any)) != 2 {
		t.Errorf("count: exit %d %s", code, out)
	}
	out, _, code = e.run(t, "count")
	if code != 0 || !strings.Contains(out, "TOTAL") || !strings.Contains(out, "example.com") {
		t.Errorf("count all: exit %d\n%s", code, out)
	}
}

func jsonNumberString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestScaleUndoCommands(t *testing.T) {
	e := newEtcdEnv(t)
	replicas := int32(3)
	e.put(t, "deployments", "shop", "web", &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Generation: 2},
		Spec:       appsv1.DeploymentSpec{Replicas: &replicas},
	}, gvkDeploy)
	key := "/registry/deployments/shop/web"
	orig := e.value(t, key)

	out, _, code := e.run(t, "scale", "deployment", "shop/web", "--replicas", "0", "--dry-run")
	if code != 0 || !strings.Contains(out, "+  replicas: 0") || !bytes.Equal(e.value(t, key), orig) {
		t.Fatalf("dry run: exit %d\n%s", code, out)
	}
	if _, errOut, code := e.run(t, "scale", "deployment", "shop/web", "--replicas", "0"); code != 4 || !strings.Contains(errOut, "--yes") {
		t.Errorf("unconfirmed scale without a terminal: exit %d %s", code, errOut)
	}
	if _, err := os.Stat(e.journal); err == nil {
		t.Error("an unconfirmed write touched the journal")
	}

	out, errOut, code := e.run(t, "scale", "deploy", "shop/web", "--replicas", "0", "--yes", "-o", "json")
	if code != 0 {
		t.Fatalf("scale: exit %d %s", code, errOut)
	}
	ch := changeLine(t, out)
	id := ch["id"].(string)
	if ch["type"] != "change" || ch["summary"] != "replicas 3 -> 0" || id == "" {
		t.Errorf("change: %v", ch)
	}
	recs, err := journal.Read(e.journal)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Type != "intent" || recs[1].Status != "applied" || !bytes.Equal(recs[0].Before.Bytes, orig) {
		t.Fatalf("journal: %+v", recs)
	}
	if !bytes.Equal(recs[0].After.Bytes, e.value(t, key)) {
		t.Error("journal after bytes differ from etcd")
	}

	// Undo restores the exact bytes.
	out, errOut, code = e.run(t, "undo", id, "--yes")
	if code != 0 {
		t.Fatalf("undo: exit %d %s", code, errOut)
	}
	if !strings.Contains(out, "restore previous value of "+key) {
		t.Errorf("undo output does not say what it restored: %q", out)
	}
	if !bytes.Equal(e.value(t, key), orig) {
		t.Error("undo did not restore the exact previous bytes")
	}

	// Scale again, then someone else changes the object: undo refuses
	// (exit 4) unless --force.
	out, _, _ = e.run(t, "scale", "deploy", "shop/web", "--replicas", "1", "--yes", "-o", "json")
	id2 := changeLine(t, out)["id"].(string)
	other := int32(7)
	e.put(t, "deployments", "shop", "web", &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}, Spec: appsv1.DeploymentSpec{Replicas: &other}}, gvkDeploy)
	if _, errOut, code := e.run(t, "undo", id2, "--yes"); code != 4 || !strings.Contains(errOut, "changed since") {
		t.Errorf("undo after a change: exit %d %s", code, errOut)
	}
	if _, errOut, code := e.run(t, "undo", id2, "--yes", "--force"); code != 0 {
		t.Errorf("undo --force: exit %d %s", code, errOut)
	}
	if !bytes.Equal(e.value(t, key), orig) {
		t.Error("undo --force did not restore the bytes before the second scale")
	}
	if _, errOut, code := e.run(t, "undo", "no-such-id", "--yes"); code != 1 || !strings.Contains(errOut, "not in the journal") {
		t.Errorf("unknown id: exit %d %s", code, errOut)
	}

	// Delete and undo (recreate).
	out, errOut, code = e.run(t, "delete", "deployments.apps", "shop/web", "--yes", "-o", "json")
	if code != 0 || e.value(t, key) != nil {
		t.Fatalf("delete: exit %d %s", code, errOut)
	}
	did := changeLine(t, out)["id"].(string)
	if _, errOut, code := e.run(t, "undo", did, "--yes"); code != 0 || !bytes.Equal(e.value(t, key), orig) {
		t.Errorf("undo delete: exit %d %s", code, errOut)
	}

	// Secrets are refused with exit 4.
	e.srv.Client.Put(context.Background(), "/registry/secrets/shop/s", "k8s:enc:aescbc:v1:k:x")
	if _, errOut, code := e.run(t, "delete", "secret", "shop/s", "--yes"); code != 4 || !strings.Contains(errOut, "does not write Secrets") {
		t.Errorf("delete secret: exit %d %s", code, errOut)
	}
	if _, _, code := e.run(t, "scale", "daemonset", "shop/x", "--replicas", "1"); code != 2 {
		t.Errorf("scale daemonset: exit %d, want 2", code)
	}
}

func TestDaemonSetCommands(t *testing.T) {
	e := newEtcdEnv(t)
	e.put(t, "daemonsets", "kube-system", "agent", &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "agent", Generation: 1},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/os": "linux"}, Containers: []corev1.Container{{Name: "a", Image: "a"}}}}},
	}, gvkDS)
	key := "/registry/daemonsets/kube-system/agent"
	orig := e.value(t, key)
	out, _, code := e.run(t, "daemonset", "pause", "kube-system/agent", "--dry-run")
	if code != 0 || !strings.Contains(out, "+        "+etcd.PauseLabel+": \"true\"") {
		t.Errorf("pause dry run: exit %d\n%s", code, out)
	}
	if _, errOut, code := e.run(t, "daemonset", "pause", "kube-system/agent", "--yes"); code != 0 {
		t.Fatalf("pause: exit %d %s", code, errOut)
	}
	out, _, _ = e.run(t, "get", "ds", "-n", "kube-system")
	if !strings.Contains(out, etcd.PauseLabel+"=true") {
		t.Errorf("get ds after pause:\n%s", out)
	}
	if out, _, code := e.run(t, "daemonset", "pause", "kube-system/agent", "--yes"); code != 0 || !strings.Contains(out, "unchanged") {
		t.Errorf("second pause: exit %d %s", code, out)
	}
	if _, errOut, code := e.run(t, "daemonset", "resume", "kube-system/agent", "--yes"); code != 0 || strings.Contains(errOut, "differs") {
		t.Fatalf("resume: exit %d %s", code, errOut)
	}
	o, err := e.store.GetObject(context.Background(), etcd.Resource{Name: "daemonsets", Namespaced: true, Path: "daemonsets", Group: "apps", Kind: "DaemonSet"}, "kube-system", "agent", etcd.Linearizable)
	if err != nil {
		t.Fatal(err)
	}
	ds := o.Decoded.Object.(*appsv1.DaemonSet)
	if ds.Generation != 3 {
		t.Errorf("generation %d, want 3", ds.Generation)
	}
	ds.Generation = 1
	b, _ := e.store.Codec.Encode(ds, gvkDS, etcd.EncodingProtobuf)
	if !bytes.Equal(b, orig) {
		t.Error("resume did not restore the previous spec exactly")
	}
}

func readJournal(t *testing.T, path string) []journal.Record {
	t.Helper()
	recs, err := journal.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}
