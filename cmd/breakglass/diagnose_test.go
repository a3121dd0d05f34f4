package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestDiagnoseFlags(t *testing.T) {
	var got *diagnoseOptions
	d := testDeps()
	d.Global.Output = "table"
	cmd := newCmdDiagnose(d, func(o *diagnoseOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"--since", "2h", "--node-timeout", "3s", "--port", "7443", "--dns-service", "dns/coredns", "--cluster-domain", "k8s.example"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.since != 2*time.Hour || got.nodeTimeout != 3*time.Second || got.port != 7443 || got.dnsService != "dns/coredns" || got.domain != "k8s.example" {
		t.Errorf("options: %+v", got)
	}
	for _, args := range [][]string{{"diagnose", "--since", "0s"}, {"diagnose", "-o", "yaml"}, {"diagnose", "extra"},
		{"diagnose", "--dns-service", "kube-dns"}, {"diagnose", "--dns-service", "a/b/c"}, {"diagnose", "--dns-service", "/kube-dns"}, {"diagnose", "--cluster-domain", "Cluster_Local"}} {
		code, _, errOut := run(t, testDeps(), args...)
		if code != 2 {
			t.Errorf("%v: exit %d (%s)", args, code, errOut)
		}
		if strings.HasPrefix(args[1], "--") && args[1] != "--since" && !strings.Contains(errOut, args[1]) {
			t.Errorf("%v: the error does not name the flag: %s", args, errOut)
		}
	}
}

// Against a real (embedded) etcd and no nodes: the preemption evidence is
// enough, and the JSON carries the suspects, the census and the reads.
func TestDiagnoseJSONFromEtcd(t *testing.T) {
	e := newEtcdEnv(t)
	recent := metav1.NewTime(time.Now().Add(-time.Minute))
	e.put(t, "priorityclasses", "", "medium", &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: "medium", CreationTimestamp: recent}, Value: 1000, GlobalDefault: true},
		schema.GroupVersionKind{Group: "scheduling.k8s.io", Version: "v1", Kind: "PriorityClass"})
	e.put(t, "events", "cortex", "x.1", &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "cortex", Name: "x.1", CreationTimestamp: recent},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "cortex", Name: "x"}, Reason: "Preempted", EventTime: metav1.NewMicroTime(recent.Time)},
		schema.GroupVersionKind{Version: "v1", Kind: "Event"})
	out, errOut, code := e.run(t, append([]string{"diagnose", "-o", "json"}, e.flags...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var rep struct {
		Type     string `json:"type"`
		Suspects []struct {
			Kind, Name     string
			AboveThreshold bool
		} `json:"suspects"`
		Top    *struct{ Name string }     `json:"top"`
		Reads  struct{ Ranges, Txns int } `json:"etcdReads"`
		SSH    struct{ Sessions int }     `json:"ssh"`
		Census struct {
			Resources []struct{ Resource string } `json:"resources"`
		} `json:"census"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rep.Type != "diagnosis" || rep.Top == nil || rep.Top.Name != "medium" || len(rep.Suspects) == 0 || rep.Suspects[0].Kind != "PriorityClass" {
		t.Errorf("report: %+v", rep)
	}
	if rep.Reads.Ranges == 0 || rep.Reads.Txns != 0 || rep.SSH.Sessions != 0 || len(rep.Census.Resources) != 2 {
		t.Errorf("cost or census: %+v", rep)
	}
	out, _, code = e.run(t, append([]string{"diagnose"}, e.flags...)...)
	if code != 0 || !strings.Contains(out, "TOP SUSPECT  PriorityClass medium") {
		t.Errorf("text (exit %d):\n%s", code, out)
	}
}
