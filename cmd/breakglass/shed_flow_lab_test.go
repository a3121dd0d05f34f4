package main

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// statusCounts sends n requests at once to path with token and counts the
// answers by status code.
func statusCounts(t *testing.T, base *rest.Config, token, path string, n int) map[int]int {
	t.Helper()
	cfg := rest.AnonymousClientConfig(base)
	cfg.BearerToken = token
	cfg.Timeout = 20 * time.Second
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := -1
			if resp, err := hc.Get(strings.TrimSuffix(cfg.Host, "/") + path); err == nil {
				code = resp.StatusCode
				resp.Body.Close()
			}
			mu.Lock()
			counts[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return counts
}

// TestLabShedFlowSchema sheds one service account through the real
// apiserver's API Priority and Fairness, by objects written straight into
// etcd with the real binary: the apiserver answers that identity's
// concurrent requests with 429 while another service account gets 200;
// shed status shows the shed; lift (and, after a second shed, undo) gives
// the identity its 200s back.
func TestLabShedFlowSchema(t *testing.T) {
	e := newLabEnv(t)
	e.kubectl(t, "", "create", "serviceaccount", "-n", e.ns, "victim")
	e.kubectl(t, "", "create", "serviceaccount", "-n", e.ns, "bystander")
	victim := strings.TrimSpace(e.kubectl(t, "", "create", "token", "-n", e.ns, "victim"))
	bystander := strings.TrimSpace(e.kubectl(t, "", "create", "token", "-n", e.ns, "bystander"))
	base, err := clientcmd.BuildConfigFromFlags("", e.st.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	const path, n = "/version", 30
	ok := func(token string) bool { c := statusCounts(t, base, token, path, n); return c[http.StatusOK] == n }
	if !ok(victim) || !ok(bystander) {
		t.Fatal("the service accounts are not answered 200 before any shed")
	}

	shed := func() string {
		t.Helper()
		out, stderr, code := e.run(t, "shed", "flowschema", "--serviceaccount", e.ns+"/victim", "--reject", "--ttl", "5m", "--yes", "-o", "json")
		if code != 0 {
			t.Fatalf("shed flowschema: exit %d\n%s\n%s", code, out, stderr)
		}
		for _, l := range jsonLines(t, out) {
			if l["type"] == "change" && l["id"] != nil {
				return l["id"].(string)
			}
		}
		t.Fatalf("shed flowschema printed no change ID:\n%s", out)
		return ""
	}
	shedded := func() (bool, error) {
		v := statusCounts(t, base, victim, path, n)
		return v[http.StatusTooManyRequests] >= n/2, nil
	}
	shed()
	waitFor(t, "the apiserver answering the shed service account 429", time.Minute, shedded)
	if b := statusCounts(t, base, bystander, path, n); b[http.StatusOK] != n {
		t.Fatalf("the bystander got %v, want %d answers 200", b, n)
	}
	out, _, code := e.run(t, "shed", "status", "--nodes", "cp-1", "--inventory", labInventory(t, e.st, nil), "-o", "json")
	if code != 0 || !strings.Contains(out, `"type":"flowShedStatus"`) || !strings.Contains(out, "serviceaccount "+e.ns+"/victim") {
		t.Fatalf("shed status: exit %d, want the flow-control shed\n%s", code, out)
	}

	if out, stderr, code := e.run(t, "shed", "lift", "--only", "flowschema", "--yes"); code != 0 {
		t.Fatalf("shed lift: exit %d\n%s\n%s", code, out, stderr)
	}
	waitFor(t, "the shed service account answered 200 again after the lift", time.Minute, func() (bool, error) { return ok(victim), nil })

	// Undo of a shed removes both objects, whatever the apiserver wrote in
	// the FlowSchema's status meanwhile.
	id := shed()
	waitFor(t, "the second shed acting", time.Minute, shedded)
	if out, stderr, code := e.run(t, "undo", id, "--yes"); code != 0 {
		t.Fatalf("undo %s: exit %d\n%s\n%s", id, code, out, stderr)
	}
	waitFor(t, "the shed service account answered 200 again after the undo", time.Minute, func() (bool, error) { return ok(victim), nil })
	for _, res := range []string{"flowschemas", "prioritylevelconfigurations"} {
		if out, _, _ := e.run(t, "get", res, "-o", "name"); strings.Contains(out, "breakglass-shed") {
			t.Fatalf("undo left %s: %s", res, out)
		}
	}
}
