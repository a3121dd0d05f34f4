package etcd_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// TestLabWriteRacesAPIServer makes a change through the real API server
// between breakglass's plan and its transaction: the compare-and-swap fails
// and nothing is written; planned again from the new value, the change
// applies, losing neither write.
func TestLabWriteRacesAPIServer(t *testing.T) {
	st := labtest.Lab(t)
	kubectl := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(st.Binaries.Kubectl, append([]string{"--kubeconfig", st.Kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	var b [3]byte
	rand.Read(b[:])
	ns := "bg-race-" + hex.EncodeToString(b[:])
	kubectl("", "create", "namespace", ns)
	t.Cleanup(func() { kubectl("", "delete", "namespace", ns, "--wait=false") })
	kubectl(fmt.Sprintf(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":%q},
"spec":{"replicas":0,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},
"spec":{"containers":[{"name":"c","image":%q,"imagePullPolicy":"Never"}]}}}}`, ns, lab.PauseImage), "apply", "-f", "-")

	s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: st.Etcd.Endpoints, CACert: st.Etcd.CACert, Cert: st.Etcd.Cert, Key: st.Etcd.Key})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cli := s.Client()
	etcd.SetKVForTest(s, &racingKV{KV: cli.KV, cli: cli, race: func(n int) {
		if n == 1 {
			kubectl("", "annotate", "deployment", "web", "-n", ns, "raced=by-apiserver")
		}
	}})
	r, _ := s.Layout.Lookup("deployments")
	j := &recJournal{t: t, cli: cli}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	planned, err := s.PlanUpdate(ctx, r, ns, "web", etcd.Scale(2), etcd.WriteOptions{ID: "race", Op: "scale"})
	if err != nil {
		t.Fatal(err)
	}
	var ce *etcd.ConflictError
	if _, err := s.Apply(ctx, planned, j); !errors.As(err, &ce) {
		t.Fatalf("apply after the apiserver wrote: %v, want a ConflictError", err)
	}
	if o, err := s.GetObject(ctx, r, ns, "web", etcd.Linearizable); err != nil || *o.Decoded.Object.(*appsv1.Deployment).Spec.Replicas != 0 {
		t.Fatalf("a conflicting apply wrote (or %v)", err)
	}
	// Planned again from what is there now, as the change engine does; the
	// real controllers may write the object meanwhile, so this may take a
	// few plans.
	var ch *etcd.Change
	for attempt := 2; ; attempt++ {
		ch, err = s.PlanUpdate(ctx, r, ns, "web", etcd.Scale(2), etcd.WriteOptions{ID: "race", Op: "scale"})
		if err != nil {
			t.Fatal(err)
		}
		ch.Attempt = attempt
		if _, err = s.Apply(ctx, ch, j); err == nil {
			break
		}
		if !errors.As(err, &ce) || attempt == 6 {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
	}
	want := []string{"intent:1", "conflict:1"}
	for i := 2; i <= ch.Attempt; i++ {
		want = append(want, fmt.Sprintf("intent:%d", i))
		if i < ch.Attempt {
			want = append(want, fmt.Sprintf("conflict:%d", i))
		}
	}
	want = append(want, fmt.Sprintf("applied:%d", ch.Attempt))
	if strings.Join(j.events, " ") != strings.Join(want, " ") {
		t.Errorf("journal %v: want %v", j.events, want)
	}
	o, err := s.GetObject(ctx, r, ns, "web", etcd.Linearizable)
	if err != nil {
		t.Fatal(err)
	}
	d := o.Decoded.Object.(*appsv1.Deployment)
	if *d.Spec.Replicas != 2 || d.Annotations["raced"] != "by-apiserver" {
		t.Errorf("in etcd: replicas %d annotations %v", *d.Spec.Replicas, d.Annotations)
	}
	// The API server agrees, once its watch cache has seen our write (the
	// deployment controller may have written the status after it, so the
	// resourceVersion may be past ours).
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := kubectl("", "get", "deployment", "web", "-n", ns, "-o", "jsonpath={.spec.replicas} {.metadata.annotations.raced} {.metadata.resourceVersion}")
		f := strings.Fields(out)
		var rv int64
		if len(f) == 3 {
			rv, _ = strconv.ParseInt(f[2], 10, 64)
		}
		if rv >= ch.Revision || !time.Now().Before(deadline) {
			if len(f) < 2 || f[0] != "2" || f[1] != "by-apiserver" {
				t.Errorf("API server GET: %q (our write: revision %d)", out, ch.Revision)
			}
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
}
