package main

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// An operator at the prompt approved "replicas 0 -> 2" of a Deployment in
// the lab; meanwhile a colleague scaled it to 5 through the real API
// server. breakglass must not write "5 -> 2" on the first answer: it plans
// again from etcd and asks about the new change. Answered no, etcd and the
// API server still show 5.
func TestLabConfirmedPlanRacingAPIServer(t *testing.T) {
	e := newLabEnv(t)
	e.kubectl(t, "", "-n", e.ns, "create", "deployment", "web", "--image", "breakglass.lab/pause:3.10", "--replicas", "0")
	in := &promptReader{answers: []string{"y\n", "n\n"}, hooks: []func(){func() {
		e.kubectl(t, "", "-n", e.ns, "scale", "deployment", "web", "--replicas", "5")
	}}}
	_, errOut, code := e.runTTY(t, in, "scale", "deployment", e.ns+"/web", "--replicas", "2")
	if code != 4 {
		t.Errorf("exit %d, want 4 (the re-planned change was refused); stderr:\n%s", code, errOut)
	}
	for _, want := range []string{"replicas 0 -> 2", "changed since it was planned", "replicas 5 -> 2"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	d, err := e.kube.AppsV1().Deployments(e.ns).Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 5 {
		t.Errorf("the API server shows replicas %d, want the colleague's 5 (nothing the operator did not confirm may be written)", *d.Spec.Replicas)
	}
}
