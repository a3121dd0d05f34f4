package lab_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// hostedNS is the namespace that stands in for a hosted control plane's
// namespace in the hosting cluster.
const hostedNS = "hosted-cp"

// tryKubectl is kubectl that returns its error, for polls that retry.
func tryKubectl(st *lab.State, args ...string) (string, error) {
	cmd := exec.Command(st.Binaries.Kubectl, append([]string{"--kubeconfig", st.Kubeconfig, "--request-timeout=30s"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// workloadState is what the tests read of a Deployment and its ReplicaSets
// through the apiserver.
type workloadState struct {
	replicas, generation, observed int64
	// rsReplicas is spec.replicas of the ReplicaSets the Deployment owns,
	// by name.
	rsReplicas map[string]int64
}

func readWorkload(st *lab.State, name string) (workloadState, error) {
	var w workloadState
	out, err := tryKubectl(st, "get", "deployment", "-n", hostedNS, name, "-o", "json")
	if err != nil {
		return w, err
	}
	var d struct {
		Metadata struct {
			Generation int64  `json:"generation"`
			UID        string `json:"uid"`
		} `json:"metadata"`
		Spec struct {
			Replicas int64 `json:"replicas"`
		} `json:"spec"`
		Status struct {
			ObservedGeneration int64 `json:"observedGeneration"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		return w, err
	}
	w.replicas, w.generation, w.observed = d.Spec.Replicas, d.Metadata.Generation, d.Status.ObservedGeneration
	out, err = tryKubectl(st, "get", "replicasets", "-n", hostedNS, "-o", "json")
	if err != nil {
		return w, err
	}
	var rs struct {
		Items []struct {
			Metadata struct {
				Name            string `json:"name"`
				OwnerReferences []struct {
					UID string `json:"uid"`
				} `json:"ownerReferences"`
			} `json:"metadata"`
			Spec struct {
				Replicas int64 `json:"replicas"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return w, err
	}
	w.rsReplicas = map[string]int64{}
	for _, it := range rs.Items {
		for _, o := range it.Metadata.OwnerReferences {
			if o.UID == d.Metadata.UID {
				w.rsReplicas[it.Metadata.Name] = it.Spec.Replicas
			}
		}
	}
	return w, nil
}

// waitWorkload polls the apiserver (bounded) until cond holds for the
// Deployment name.
func waitWorkload(t *testing.T, st *lab.State, name, what string, cond func(workloadState) bool) workloadState {
	t.Helper()
	var last workloadState
	waitCond(t, what, 2*time.Minute, func() (bool, string) {
		w, err := readWorkload(st, name)
		if err != nil {
			return false, err.Error()
		}
		last = w
		return cond(w), fmt.Sprintf("%+v", w)
	})
	return last
}

// deployJSON is a Deployment of pods no node can run (a node selector no
// node matches): the controllers act on it, nothing is scheduled.
func deployJSON(name, ownerUID string) string { return deployJSONIn(hostedNS, name, ownerUID) }

// deployJSONIn is deployJSON in the namespace ns.
func deployJSONIn(ns, name, ownerUID string) string {
	owner := ""
	if ownerUID != "" {
		owner = fmt.Sprintf(`,"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"hcp","uid":%q,"controller":true}]`, ownerUID)
	}
	return fmt.Sprintf(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":%q,"namespace":%q%s},
"spec":{"replicas":1,"selector":{"matchLabels":{"app":%q}},"template":{"metadata":{"labels":{"app":%q}},
"spec":{"nodeSelector":{"breakglass.io/no-such-node":"true"},"containers":[{"name":"kube-apiserver","image":%q,"imagePullPolicy":"Never"}]}}}}`,
		name, ns, owner, name, name, lab.PauseImage)
}

// TestLabHostedAPIServerScale is issue 11's hosted scale on the real
// apiserver and controller-manager, through the real binary: an API server
// Deployment owned by an "operator object" (a ConfigMap stands in for a
// HostedControlPlane) is refused without --force, naming the owner, and
// scaled with --force and a warning; a Deployment without an owner is
// scaled, the real deployment controller acts on it (its ReplicaSet gets
// the replicas), and undo puts it back.
func TestLabHostedAPIServerScale(t *testing.T) {
	st := labtest.Lab(t)
	b := newBGRun(t, st)
	t.Cleanup(func() {
		kubectl(t, st, "", "delete", "namespace", hostedNS, "--wait=false", "--ignore-not-found")
	})
	// A namespace left by an earlier run is gone first.
	kubectl(t, st, "", "delete", "namespace", hostedNS, "--ignore-not-found", "--wait=true", "--timeout=2m")
	kubectl(t, st, "", "create", "namespace", hostedNS)
	kubectl(t, st, `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"hcp","namespace":"`+hostedNS+`"},"data":{"replicas":"1"}}`, "apply", "-f", "-")
	uid := strings.TrimSpace(kubectl(t, st, "", "get", "configmap", "-n", hostedNS, "hcp", "-o", "jsonpath={.metadata.uid}"))
	if uid == "" {
		t.Fatal("the ConfigMap has no uid")
	}
	kubectl(t, st, deployJSON("kube-apiserver", uid), "apply", "-f", "-")
	kubectl(t, st, deployJSON("kube-apiserver-plain", ""), "apply", "-f", "-")
	for _, name := range []string{"kube-apiserver", "kube-apiserver-plain"} {
		waitWorkload(t, st, name, name+" rolled out by the deployment controller (a ReplicaSet of 1)", func(w workloadState) bool {
			return w.observed == w.generation && len(w.rsReplicas) == 1 && sumReplicas(w.rsReplicas) == 1
		})
	}

	// Owned: refused without --force, naming the owner; nothing written.
	r := b.run("apiserver", "scale", "--object", hostedNS+"/kube-apiserver", "--replicas", "3", "--yes", "--journal", b.jnl)
	if r.code != 4 || !strings.Contains(r.stderr, "is owned by ConfigMap v1 "+hostedNS+"/hcp") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("scale of the owned API server: exit %d, want 4 naming ConfigMap %s/hcp and --force", r.code, hostedNS)
	}
	if w, err := readWorkload(st, "kube-apiserver"); err != nil || w.replicas != 1 {
		t.Fatalf("after the refusal: %+v, %v: want replicas 1", w, err)
	}
	if _, err := os.Stat(b.jnl); err == nil {
		t.Fatal("a refused scale wrote the journal")
	}

	// With --force: scaled, with the warning.
	r = b.run("apiserver", "scale", "--object", hostedNS+"/kube-apiserver", "--replicas", "3", "--yes", "--force", "--journal", b.jnl)
	if r.code != 0 || !strings.Contains(r.stderr, "note: deployment "+hostedNS+"/kube-apiserver is owned by ConfigMap v1 "+hostedNS+"/hcp") ||
		!strings.Contains(r.stderr, "(--force)") || !strings.Contains(r.stdout, "replicas 1 -> 3") {
		t.Fatalf("scale --force: exit %d, want 0, the change and the warning", r.code)
	}
	waitWorkload(t, st, "kube-apiserver", "the apiserver to serve spec.replicas 3 of the owned Deployment", func(w workloadState) bool {
		return w.replicas == 3
	})
	// And in etcd itself, read by breakglass.
	r = b.run("get", "deployment", "-n", hostedNS, "kube-apiserver", "-o", "json")
	var stored struct {
		Spec struct {
			Replicas int64 `json:"replicas"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &stored); r.code != 0 || err != nil || stored.Spec.Replicas != 3 {
		t.Errorf("breakglass get from etcd: exit %d (%v), spec.replicas %d, want 3", r.code, err, stored.Spec.Replicas)
	}

	// Plain: scaled, and the real controller-manager acts on it.
	r = b.run("apiserver", "scale", "--object", hostedNS+"/kube-apiserver-plain", "--replicas", "2", "--yes", "-o", "json", "--journal", b.jnl)
	var ch struct {
		Type, ID, Op, Summary string
		Notes                 []string
	}
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.Contains(l, `"type":"change"`) {
			if err := json.Unmarshal([]byte(l), &ch); err != nil {
				t.Fatalf("change line %q: %v", l, err)
			}
		}
	}
	if r.code != 0 || ch.ID == "" || ch.Op != "apiserver-scale" || ch.Summary != "replicas 1 -> 2" || len(ch.Notes) != 0 {
		t.Fatalf("scale of the plain API server: exit %d, change %+v", r.code, ch)
	}
	waitWorkload(t, st, "kube-apiserver-plain", "the deployment controller to scale the ReplicaSet to 2", func(w workloadState) bool {
		return w.replicas == 2 && w.observed == w.generation && len(w.rsReplicas) == 1 && sumReplicas(w.rsReplicas) == 2
	})

	// The controller updated the Deployment's status since the scale, so
	// undo refuses without --force (as every undo of an object a
	// controller wrote since does), and --force puts the bytes back.
	r = b.run("undo", ch.ID, "--yes", "--journal", b.jnl)
	if r.code == 4 {
		if !strings.Contains(r.stderr, "changed since") {
			t.Fatalf("undo: exit 4 without saying the object changed since")
		}
		r = b.run("undo", ch.ID, "--yes", "--force", "--journal", b.jnl)
	}
	if r.code != 0 {
		t.Fatalf("undo %s: exit %d", ch.ID, r.code)
	}
	waitWorkload(t, st, "kube-apiserver-plain", "replicas back to 1 and the ReplicaSet scaled back by the controller", func(w workloadState) bool {
		return w.replicas == 1 && len(w.rsReplicas) == 1 && sumReplicas(w.rsReplicas) == 1
	})
}

func sumReplicas(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
