package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
	"github.com/breakglass/breakglass/recover/journal"
)

// labEnv runs breakglass against the lab's real etcd, and kubectl and
// client-go against its real API server.
type labEnv struct {
	*etcdEnv
	st   *lab.State
	kube *kubernetes.Clientset
	cli  *clientv3.Client
	ns   string
}

func newLabEnv(t *testing.T) *labEnv {
	t.Helper()
	st := labtest.Lab(t)
	for _, v := range []string{"ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "BREAKGLASS_INVENTORY"} {
		t.Setenv(v, "")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ec := etcd.Config{Endpoints: st.Etcd.Endpoints, CACert: st.Etcd.CACert, Cert: st.Etcd.Cert, Key: st.Etcd.Key}
	s, err := etcd.Open(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var b [3]byte
	rand.Read(b[:])
	e := &labEnv{
		etcdEnv: &etcdEnv{store: s, journal: t.TempDir() + "/journal.jsonl",
			flags: []string{"--endpoints", strings.Join(st.Etcd.Endpoints, ","), "--cacert", st.Etcd.CACert, "--cert", st.Etcd.Cert, "--key", st.Etcd.Key}},
		st: st, kube: kube, cli: s.Client(), ns: "bg-" + strings.ToLower(strings.ReplaceAll(t.Name(), "_", "-"))[:min(len(t.Name()), 30)] + "-" + hex.EncodeToString(b[:]),
	}
	e.ns = strings.ToLower(e.ns)
	e.kubectl(t, "", "create", "namespace", e.ns)
	t.Cleanup(func() { e.kubectl(t, "", "delete", "namespace", e.ns, "--wait=false") })
	// Pods need the namespace's default service account, which the
	// controller-manager creates.
	waitFor(t, "the default service account", 30*time.Second, func() (bool, error) {
		_, err := kube.CoreV1().ServiceAccounts(e.ns).Get(context.Background(), "default", metav1.GetOptions{})
		return err == nil, err
	})
	return e
}

func (e *labEnv) kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.st.Binaries.Kubectl, append([]string{"--kubeconfig", e.st.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last error: %v)", d, what, last)
}

// TestLabGetMatchesAPIServer creates objects through the real API server and
// reads them back with breakglass get -o json: same object, same
// resourceVersion, as the API server's own GET.
func TestLabGetMatchesAPIServer(t *testing.T) {
	e := newLabEnv(t)
	suffix := e.ns
	group := strings.ReplaceAll(suffix, "-", "") + ".breakglass.test"
	manifest := fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: %[1]s, labels: {app: web}}
spec:
  containers: [{name: c, image: %[2]s, imagePullPolicy: Never}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %[1]s}
spec:
  replicas: 0
  selector: {matchLabels: {app: dep}}
  template:
    metadata: {labels: {app: dep}}
    spec: {containers: [{name: c, image: %[2]s, imagePullPolicy: Never}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: %[1]s}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {nodeSelector: {nowhere: "true"}, containers: [{name: c, image: %[2]s, imagePullPolicy: Never}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: %[1]s}
data: {a: b}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: %[1]s}
value: 1000
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: %[1]s}
spec:
  priorityLevelConfiguration: {name: global-default}
  matchingPrecedence: 9000
  rules:
  - subjects: [{kind: User, user: {name: nobody-%[1]s}}]
    resourceRules: [{verbs: [get], apiGroups: [""], resources: [pods], namespaces: ["*"]}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.%[3]s}
spec:
  group: %[3]s
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
`, e.ns, lab.PauseImage, group)
	e.kubectl(t, manifest, "apply", "-f", "-")
	t.Cleanup(func() {
		e.kubectl(t, "", "delete", "priorityclass,flowschema", e.ns, "--ignore-not-found")
		e.kubectl(t, "", "delete", "crd", "widgets."+group, "--ignore-not-found", "--wait=false")
	})
	e.kubectl(t, "", "wait", "--for", "condition=Established", "crd/widgets."+group, "--timeout", "60s")
	e.kubectl(t, fmt.Sprintf(`{"apiVersion":"%s/v1","kind":"Widget","metadata":{"name":"w1","namespace":"%s"},"spec":{"size":3,"tags":["a","b"]}}`, group, e.ns), "apply", "-f", "-")

	node := e.kubectl(t, "", "get", "nodes", "-o", "jsonpath={.items[0].metadata.name}")
	cases := []struct {
		kubectl []string
		bg      []string
		partial bool // compare metadata only
	}{
		{[]string{"pod", "p1", "-n", e.ns}, []string{"pods", "p1", "-n", e.ns}, false},
		{[]string{"deployment", "web", "-n", e.ns}, []string{"deploy", "web", "-n", e.ns}, false},
		{[]string{"daemonset", "agent", "-n", e.ns}, []string{"ds", "agent", "-n", e.ns}, false},
		{[]string{"configmap", "cm", "-n", e.ns}, []string{"cm", "cm", "-n", e.ns}, false},
		{[]string{"node", node}, []string{"nodes", node}, false},
		{[]string{"priorityclass", e.ns}, []string{"pc", e.ns}, false},
		{[]string{"flowschema", e.ns}, []string{"flowschemas", e.ns}, false},
		{[]string{"widgets." + group, "w1", "-n", e.ns}, []string{"widgets." + group, "w1", "-n", e.ns}, false},
		// CRDs are stored as JSON of apiextensions.k8s.io/v1beta1 and served
		// as v1: breakglass shows the stored version, so only the metadata
		// can be compared.
		{[]string{"crd", "widgets." + group}, []string{"crd", "widgets." + group}, true},
	}
	for _, c := range cases {
		t.Run(c.bg[0], func(t *testing.T) {
			// Controllers may update an object between the two reads:
			// compare when both saw the same resourceVersion.
			var api, bg map[string]any
			waitFor(t, "same resourceVersion from the API server and etcd", 30*time.Second, func() (bool, error) {
				api = map[string]any{}
				if err := json.Unmarshal([]byte(e.kubectl(t, "", append([]string{"get", "-o", "json", "--show-managed-fields"}, c.kubectl...)...)), &api); err != nil {
					return false, err
				}
				// get -o json prints what kubectl prints: the object itself.
				out, errOut, code := e.run(t, append(append([]string{"get"}, c.bg...), "-o", "json", "--show-managed-fields")...)
				if code != 0 {
					return false, fmt.Errorf("breakglass get: exit %d: %s", code, errOut)
				}
				bg = map[string]any{}
				if err := json.Unmarshal([]byte(out), &bg); err != nil {
					return false, fmt.Errorf("breakglass get -o json is not one object: %v: %s", err, out)
				}
				rv := func(m map[string]any) any { return m["metadata"].(map[string]any)["resourceVersion"] }
				return rv(api) == rv(bg), fmt.Errorf("resourceVersion %v (api) vs %v (etcd)", rv(api), rv(bg))
			})
			if c.partial {
				api = map[string]any{"metadata": api["metadata"]}
				bg = map[string]any{"metadata": bg["metadata"]}
			}
			if !reflect.DeepEqual(api, bg) {
				a, _ := json.MarshalIndent(api, "", " ")
				b, _ := json.MarshalIndent(bg, "", " ")
				t.Errorf("breakglass get differs from the API server:\n%s", etcd.UnifiedDiff("apiserver", "breakglass", string(a)+"\n", string(b)+"\n", 3))
			}
		})
	}

	// Listing with selectors, as kubectl would.
	out, _, code := e.run(t, "get", "pods", "-A", "-l", "app=web", "--field-selector", "metadata.namespace="+e.ns, "-o", "name")
	if code != 0 || strings.TrimSpace(out) != "pod/p1" {
		t.Errorf("selector listing: exit %d %q", code, out)
	}
}

// TestLabScaleDeployment scales through etcd and checks that the API server
// sees it (GET and a watch opened before the write) and that the real
// controller-manager acts on it.
func TestLabScaleDeployment(t *testing.T) {
	e := newLabEnv(t)
	ctx := context.Background()
	e.kubectl(t, fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: %[2]s, imagePullPolicy: Never}]}
`, e.ns, lab.PauseImage), "apply", "-f", "-")
	deps := e.kube.AppsV1().Deployments(e.ns)
	var rsName string
	waitFor(t, "the ReplicaSet of 1", 60*time.Second, func() (bool, error) {
		rss, err := e.kube.AppsV1().ReplicaSets(e.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(rss.Items) != 1 {
			return false, err
		}
		rsName = rss.Items[0].Name
		return *rss.Items[0].Spec.Replicas == 1, nil
	})
	before, err := deps.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := deps.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=web", ResourceVersion: before.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	out, errOut, code := e.run(t, "scale", "deployment", e.ns+"/web", "--replicas", "3", "--yes", "-o", "json")
	if code != 0 {
		t.Fatalf("scale: exit %d %s", code, errOut)
	}
	ch := changeLine(t, out)
	rev := fmt.Sprint(int64(ch["revision"].(float64)))

	// The watch opened before the write sees it, with the write's revision.
	timeout := time.After(30 * time.Second)
	for seen := false; !seen; {
		select {
		case ev := <-w.ResultChan():
			d, ok := ev.Object.(*appsv1.Deployment)
			if ev.Type == watch.Modified && ok && d.ResourceVersion == rev {
				if *d.Spec.Replicas != 3 || d.Generation != before.Generation+1 {
					t.Errorf("watch: replicas %d generation %d", *d.Spec.Replicas, d.Generation)
				}
				seen = true
			}
		case <-timeout:
			t.Fatal("the watch did not see the write")
		}
	}
	got, err := deps.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *got.Spec.Replicas != 3 || got.ResourceVersion == before.ResourceVersion {
		t.Errorf("API server GET: replicas %d rv %s (before %s)", *got.Spec.Replicas, got.ResourceVersion, before.ResourceVersion)
	}
	// The controller-manager scales the ReplicaSet.
	waitFor(t, "the deployment controller to scale the ReplicaSet to 3", 60*time.Second, func() (bool, error) {
		rs, err := e.kube.AppsV1().ReplicaSets(e.ns).Get(ctx, rsName, metav1.GetOptions{})
		return err == nil && *rs.Spec.Replicas == 3, err
	})

	// The deployment controller writes the Deployment's status after it
	// scales the ReplicaSet; once it has, the key has changed since the
	// scale: undo refuses, then --force restores the exact bytes the scale
	// replaced.
	waitFor(t, "the deployment controller to write the Deployment after the scale", 60*time.Second, func() (bool, error) {
		d, err := deps.Get(ctx, "web", metav1.GetOptions{})
		return err == nil && d.ResourceVersion != rev && d.Status.ObservedGeneration >= before.Generation+1, err
	})
	id := ch["id"].(string)
	if _, errOut, code := e.run(t, "undo", id, "--yes"); code != 4 || !strings.Contains(errOut, "changed since") {
		t.Errorf("undo after the controller's update: exit %d %s", code, errOut)
	}
	if _, errOut, code := e.run(t, "undo", id, "--yes", "--force"); code != 0 {
		t.Fatalf("undo --force: exit %d %s", code, errOut)
	}
	// The controller writes again as soon as it sees the undo, so read the
	// key at the revision the undo produced.
	recs := readJournal(t, e.journal)
	key := "/registry/deployments/" + e.ns + "/web"
	// The scale may have retried after a conflict with the controller: the
	// bytes it replaced are those of its applied attempt's intent.
	intent, _, err := journal.Applied(recs, id)
	if err != nil {
		t.Fatal(err)
	}
	replaced := intent.Before.Bytes
	var undoRev int64
	for _, r := range recs {
		if r.Op == "undo" && r.Type == "outcome" && r.Status == "applied" {
			undoRev = r.After.Revision
		}
	}
	resp, err := e.cli.Get(ctx, key, clientv3.WithRev(undoRev))
	if err != nil || undoRev == 0 || len(resp.Kvs) != 1 {
		t.Fatalf("read at the undo's revision %d: %v", undoRev, err)
	}
	if !bytes.Equal(resp.Kvs[0].Value, replaced) {
		t.Error("undo did not restore the exact bytes the scale replaced")
	}
	waitFor(t, "the API server to see the undo", 30*time.Second, func() (bool, error) {
		d, err := deps.Get(ctx, "web", metav1.GetOptions{})
		return err == nil && *d.Spec.Replicas == 1, err
	})
}

// TestLabUndoDeleteExact deletes an object no controller touches and undoes
// the delete: the key comes back with the exact bytes, and the API server
// serves it again.
func TestLabUndoDeleteExact(t *testing.T) {
	e := newLabEnv(t)
	e.kubectl(t, "", "create", "configmap", "cm", "-n", e.ns, "--from-literal", "k=v")
	key := "/registry/configmaps/" + e.ns + "/cm"
	orig := e.etcdValue(t, key)
	out, errOut, code := e.run(t, "delete", "configmap", e.ns+"/cm", "--yes", "-o", "json")
	if code != 0 {
		t.Fatalf("delete: exit %d %s", code, errOut)
	}
	id := changeLine(t, out)["id"].(string)
	waitFor(t, "the API server to see the delete", 30*time.Second, func() (bool, error) {
		_, err := e.kube.CoreV1().ConfigMaps(e.ns).Get(context.Background(), "cm", metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), err
	})
	if _, errOut, code := e.run(t, "undo", id, "--yes"); code != 0 {
		t.Fatalf("undo: exit %d %s", code, errOut)
	}
	if got := e.etcdValue(t, key); !bytes.Equal(got, orig) {
		t.Error("undo of delete: bytes differ")
	}
	waitFor(t, "the API server to serve the configmap again", 30*time.Second, func() (bool, error) {
		cm, err := e.kube.CoreV1().ConfigMaps(e.ns).Get(context.Background(), "cm", metav1.GetOptions{})
		return err == nil && cm.Data["k"] == "v", err
	})
}

// TestLabDaemonSetPauseResume pauses a real DaemonSet: the DaemonSet
// controller removes its pods; resume brings them back.
func TestLabDaemonSetPauseResume(t *testing.T) {
	e := newLabEnv(t)
	ctx := context.Background()
	e.kubectl(t, fmt.Sprintf(`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: %[1]s}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations: [{operator: Exists}]
      containers: [{name: c, image: %[2]s, imagePullPolicy: Never}]
`, e.ns, lab.PauseImage), "apply", "-f", "-")
	livePods := func() (int, error) {
		pods, err := e.kube.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=agent"})
		if err != nil {
			return 0, err
		}
		n := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				n++
			}
		}
		return n, nil
	}
	var desired int32
	waitFor(t, "the DaemonSet's pods", 90*time.Second, func() (bool, error) {
		ds, err := e.kube.AppsV1().DaemonSets(e.ns).Get(ctx, "agent", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		desired = ds.Status.DesiredNumberScheduled
		n, err := livePods()
		return desired > 0 && n == int(desired), err
	})
	if _, errOut, code := e.run(t, "daemonset", "pause", e.ns+"/agent", "--yes"); code != 0 {
		t.Fatalf("pause: exit %d %s", code, errOut)
	}
	waitFor(t, "the DaemonSet controller to remove the pods", 90*time.Second, func() (bool, error) {
		n, err := livePods()
		return n == 0, err
	})
	if _, errOut, code := e.run(t, "daemonset", "resume", e.ns+"/agent", "--yes"); code != 0 {
		t.Fatalf("resume: exit %d %s", code, errOut)
	}
	waitFor(t, "the pods to come back", 90*time.Second, func() (bool, error) {
		n, err := livePods()
		return n == int(desired), err
	})
	ds, err := e.kube.AppsV1().DaemonSets(e.ns).Get(ctx, "agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ds.Spec.Template.Spec.NodeSelector[etcd.PauseLabel]; ok || ds.Annotations[etcd.PausedByAnnotation] != "" {
		t.Errorf("after resume: %v %v", ds.Spec.Template.Spec.NodeSelector, ds.Annotations)
	}
}

func (e *labEnv) etcdValue(t *testing.T, key string) []byte {
	t.Helper()
	resp, err := e.cli.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0].Value
}
