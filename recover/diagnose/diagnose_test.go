package diagnose_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/etcd/etcdtest"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
	"github.com/breakglass/breakglass/recover/diagnose"
)

type cluster struct {
	t     *testing.T
	store *etcd.Store
	srv   *etcdtest.Server
}

func newCluster(t *testing.T) *cluster {
	srv := etcdtest.Start(t)
	s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &cluster{t: t, store: s, srv: srv}
}

func (c *cluster) put(resource, ns, name string, obj runtime.Object, group, version, kind string) {
	c.t.Helper()
	r, err := c.store.Layout.Lookup(resource)
	if err != nil {
		c.t.Fatal(err)
	}
	b, err := c.store.Codec.Encode(obj, schema.GroupVersionKind{Group: group, Version: version, Kind: kind}, etcd.EncodingProtobuf)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.srv.Client.Put(context.Background(), c.store.Layout.Key(r, ns, name), string(b)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) node(name string) {
	c.put("nodes", "", name, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}, "", "v1", "Node")
}

// holdConns opens n connections from this process to a listener of its
// own, the test's "API server", and returns its port.
func holdConns(t *testing.T, n int) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	for range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	return l.Addr().(*net.TCPAddr).Port
}

func sshEnv(t *testing.T, nodes int) (*sshclient.Client, []nodeops.Target) {
	fx := sshdtest.Start(t, nodes, sshdtest.Options{})
	c, err := sshclient.New(sshclient.Options{User: "root", IdentityFiles: []string{fx.ClientKey}, KnownHosts: []string{fx.KnownHosts},
		GlobalKnownHosts: []string{filepath.Join(fx.Dir, "ssh_known_hosts")},
		DialTimeout:      5 * time.Second, HandshakeTimeout: 5 * time.Second, AuthTimeout: 5 * time.Second, SessionTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var targets []nodeops.Target
	for i, s := range fx.Servers {
		tg := nodeops.Target{Name: s.Name, Address: s.Host, Port: s.Port, Roles: []string{"worker"}}
		if i == 0 {
			tg.Roles = []string{"control-plane"}
		}
		targets = append(targets, tg)
	}
	return c, targets
}

// Real etcd, real sshd, real /proc: a process of this machine holding many
// connections to the port is the top suspect, named with its connections
// from every node, and the diagnosis counts its own reads and sessions.
func TestRunNamesTheProcessThatHoldsConnections(t *testing.T) {
	c := newCluster(t)
	c.node("n1")
	port := holdConns(t, 12)
	ssh, targets := sshEnv(t, 2)
	rep, err := diagnose.Run(context.Background(), diagnose.Env{Store: c.store, Runner: ssh, Nodes: targets, APIServerPort: port, NodeTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Suspect == nil {
		t.Fatalf("no suspect: %+v", rep.Suspects)
	}
	s := rep.Suspect
	if s.Kind != "Process" || s.Rank != 1 || s.Evidence.Conns != 24 || len(s.Evidence.PerNode) != 2 || s.Evidence.PerNode[0].Conns != 12 {
		t.Errorf("top suspect: %+v", s)
	}
	if len(rep.ControlPlane) != 1 || rep.ControlPlane[0].Inbound != 12 || rep.ControlPlane[0].Health == nil {
		t.Errorf("control plane: %+v", rep.ControlPlane)
	}
	// Two nodes: one command each, and the control-plane node's probe.
	if rep.SSH.Sessions != 3 || rep.SSH.Nodes != 2 || rep.SSH.Failed != 0 || rep.Reads.Ranges == 0 || rep.Reads.Txns != 0 {
		t.Errorf("cost: ssh %+v, reads %+v", rep.SSH, rep.Reads)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "TOP SUSPECT  Process") || !strings.Contains(text.String(), "ssh 3 sessions") {
		t.Errorf("text:\n%s", text.String())
	}
	b, err := json.Marshal(rep)
	if err != nil || !bytes.Contains(b, []byte(`"suspects":[{"rank":1`)) {
		t.Errorf("json: %v %.300s", err, b)
	}
	t.Logf("took %dms\n%s", rep.TookMs, text.String())
}

// A client with one or two connections, as kubelets and controllers hold,
// is below threshold.
func TestRunHealthyHasNoSuspect(t *testing.T) {
	c := newCluster(t)
	c.node("n1")
	port := holdConns(t, 2)
	ssh, targets := sshEnv(t, 1)
	rep, err := diagnose.Run(context.Background(), diagnose.Env{Store: c.store, Runner: ssh, Nodes: targets[:1], APIServerPort: port, NodeTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Suspect != nil {
		t.Errorf("suspect on a healthy cluster: %+v", rep.Suspect)
	}
	for _, s := range rep.Suspects {
		if s.AboveThreshold {
			t.Errorf("above threshold: %+v", s)
		}
	}
	if len(rep.Talkers) != 1 || rep.Talkers[0].Conns != 2 {
		t.Errorf("talkers: %+v", rep.Talkers)
	}
}

// The 2019 cascade from etcd alone: a new globalDefault PriorityClass is
// the top suspect and the Deployment whose pods preempt is next.
func TestRunNamesPriorityClassAndPreemptor(t *testing.T) {
	c := newCluster(t)
	now := time.Now()
	recent := metav1.NewTime(now.Add(-5 * time.Minute))
	c.put("priorityclasses", "", "medium", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "medium", CreationTimestamp: recent}, Value: 1000, GlobalDefault: true}, "scheduling.k8s.io", "v1", "PriorityClass")
	c.put("priorityclasses", "", "system-node-critical", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "system-node-critical", CreationTimestamp: metav1.NewTime(now.Add(-time.Hour * 24))}, Value: 2000001000}, "scheduling.k8s.io", "v1", "PriorityClass")
	lbl := map[string]string{"app": "new-cluster"}
	c.put("deployments", "cortex-new", "new-cluster", &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "cortex-new", Name: "new-cluster", CreationTimestamp: recent},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](3), Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}},
		Status: appsv1.DeploymentStatus{Replicas: 3}}, "apps", "v1", "Deployment")
	for i, victim := range []string{"ingester-a", "ingester-b", "ingester-c"} {
		c.put("events", "cortex", victim+".1", &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "cortex", Name: victim + ".1", CreationTimestamp: recent},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "cortex", Name: victim},
			Related:        &corev1.ObjectReference{Kind: "Pod", Namespace: "cortex-new", Name: []string{"new-cluster-6d9f7c5b8-abcde", "new-cluster-6d9f7c5b8-fghij", "new-cluster-6d9f7c5b8-abcde"}[i]},
			Reason:         "Preempted", EventTime: metav1.NewMicroTime(recent.Time)}, "", "v1", "Event")
	}
	// The cascade itself: the ingesters' replacements (now with the
	// default priority) preempt the next old ingester, more often than
	// the new workload did; the new workload still ranks first.
	ing := map[string]string{"app": "ingester"}
	c.put("deployments", "cortex", "ingester", &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "cortex", Name: "ingester", CreationTimestamp: recent},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](6), Selector: &metav1.LabelSelector{MatchLabels: ing},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: ing}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}},
		Status: appsv1.DeploymentStatus{Replicas: 6}}, "apps", "v1", "Deployment")
	for _, victim := range []string{"ingester-d", "ingester-e", "ingester-f", "ingester-g"} {
		c.put("events", "cortex", victim+".1", &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "cortex", Name: victim + ".1", CreationTimestamp: recent},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "cortex", Name: victim},
			Related:        &corev1.ObjectReference{Kind: "Pod", Namespace: "cortex", Name: "ingester-5f8d9c7b6-" + victim[len(victim)-1:] + "zzzz"},
			Reason:         "Preempted", EventTime: metav1.NewMicroTime(recent.Time)}, "", "v1", "Event")
	}
	rep, err := diagnose.Run(context.Background(), diagnose.Env{Store: c.store, Since: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Suspects) < 3 {
		t.Fatalf("suspects: %+v", rep.Suspects)
	}
	top, next := rep.Suspects[0], rep.Suspects[1]
	if rep.Suspects[2].Ref() != "cortex/ingester" || rep.Suspects[2].Evidence.Preemptions != 4 {
		t.Errorf("third: %+v", rep.Suspects[2])
	}
	if top.Kind != "PriorityClass" || top.Name != "medium" || !top.AboveThreshold || top.Evidence.Preemptions != 7 || !top.Evidence.GlobalDefault {
		t.Errorf("top: %+v", top)
	}
	if next.Kind != "Deployment" || next.Ref() != "cortex-new/new-cluster" || !next.AboveThreshold || next.Evidence.Preemptions != 3 || next.Selector[1] != "cortex-new/new-cluster" {
		t.Errorf("next: %+v", next)
	}
	for _, s := range rep.Suspects {
		if s.Name == "system-node-critical" {
			t.Errorf("a system PriorityClass is a suspect: %+v", s)
		}
	}
	// Without preemptions the same classes are no suspects.
	c2 := newCluster(t)
	c2.put("priorityclasses", "", "medium", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "medium", CreationTimestamp: recent}, Value: 1000, GlobalDefault: true}, "scheduling.k8s.io", "v1", "PriorityClass")
	rep, err = diagnose.Run(context.Background(), diagnose.Env{Store: c2.store, Since: time.Hour})
	if err != nil || rep.Suspect != nil {
		t.Errorf("no preemptions: %v %+v", err, rep.Suspect)
	}
}
