package main

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/recover/runbook"
	"github.com/breakglass/breakglass/recover/steps"
)

// healthRunbook names its kubeconfig in an apiserver check, as the
// built-in apiserver-overload does.
const healthRunbook = `name: health
parameters:
  kubeconfig: {type: string, default: ""}
steps:
  - id: healthy
    type: wait-until
    params:
      check: apiserver
      kubeconfig: "{{ .params.kubeconfig }}"
      path: /api/v1/pods?limit=500
      timeout: 1m
`

// fakeAPIServer answers /readyz with status; it records what it was asked
// and with which Authorization header.
type fakeAPIServer struct {
	mu     sync.Mutex
	status int
	asked  []string
}

func (f *fakeAPIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, r.URL.RequestURI()+" auth="+r.Header.Get("Authorization"))
	w.WriteHeader(f.status)
}

func (f *fakeAPIServer) set(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = status
}

func (f *fakeAPIServer) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

func healthEngine(inv *inventory.Inventory) *runbookEngine {
	return &runbookEngine{Engine: &runbook.Engine{Session: &runbook.Session{Env: &steps.Env{Inventory: inv}}}}
}

// noDefaultKubeconfig keeps the operator's own kubeconfig out of a test.
func noDefaultKubeconfig(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KUBECONFIG", filepath.Join(dir, "none"))
	t.Setenv("HOME", dir)
}

// The TUI's poll is the apiserver check's own request: to /readyz, with
// the kubeconfig the runbook's apiserver check names (its CA, its token),
// once per probe; a non-2xx answer is not OK, and its detail names the
// status, not the token.
func TestHealthProbeUsesTheChecksClient(t *testing.T) {
	noDefaultKubeconfig(t)
	api := &fakeAPIServer{status: http.StatusOK}
	srv := httptest.NewTLSServer(api)
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	kc := writeFile(t, "oncall.kubeconfig", fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %q}}]
users: [{name: oncall, user: {token: s3cr3t-token}}]
contexts: [{name: c, context: {cluster: c, user: oncall}}]
current-context: c
`, srv.URL, base64.StdEncoding.EncodeToString(ca)))
	rb, err := runbook.Load("health.yaml", []byte(healthRunbook))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h := healthProbe(ctx, healthEngine(&inventory.Inventory{}), rb, map[string]string{"kubeconfig": kc})
	if h.Probe == nil {
		t.Fatalf("no probe: %s", h.Reason)
	}
	if h.What != "/readyz" {
		t.Errorf("probe of %q, want /readyz", h.What)
	}
	if r := h.Probe(ctx); !r.OK || r.Latency <= 0 || r.Detail != "" {
		t.Errorf("probe of a ready apiserver: %+v", r)
	}
	api.set(http.StatusServiceUnavailable)
	r := h.Probe(ctx)
	if r.OK || !strings.Contains(r.Detail, "503") || strings.Contains(r.Detail, "request 1 of 1") || strings.Contains(r.Detail, "s3cr3t") {
		t.Errorf("probe of an apiserver not ready: %+v", r)
	}
	want := []string{"/readyz auth=Bearer s3cr3t-token", "/readyz auth=Bearer s3cr3t-token"}
	if got := api.requests(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the apiserver was asked:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// With no kubeconfig named, none found, the probe goes as the check does:
// anonymous, to the inventory's apiserver.url.
func TestHealthProbeFallsBackToTheInventory(t *testing.T) {
	noDefaultKubeconfig(t)
	api := &fakeAPIServer{status: http.StatusOK}
	srv := httptest.NewServer(api)
	defer srv.Close()
	rb, err := runbook.Load("health.yaml", []byte(healthRunbook))
	if err != nil {
		t.Fatal(err)
	}
	inv := &inventory.Inventory{APIServer: inventory.APIServer{URL: srv.URL}}
	h := healthProbe(context.Background(), healthEngine(inv), rb, nil)
	if h.Probe == nil {
		t.Fatalf("no probe: %s", h.Reason)
	}
	if r := h.Probe(context.Background()); !r.OK {
		t.Errorf("probe: %+v", r)
	}
	if got := api.requests(); len(got) != 1 || got[0] != "/readyz auth=" {
		t.Errorf("the apiserver was asked %q", got)
	}
}

// No kubeconfig, none found, no apiserver.url: no probe, and why (the
// TUI shows "apiserver: not configured" and polls nothing).
func TestHealthProbeNotConfigured(t *testing.T) {
	noDefaultKubeconfig(t)
	rb, err := runbook.Load("health.yaml", []byte(healthRunbook))
	if err != nil {
		t.Fatal(err)
	}
	h := healthProbe(context.Background(), healthEngine(&inventory.Inventory{}), rb, nil)
	if h.Probe != nil {
		t.Fatal("a probe with no apiserver configured")
	}
	if !strings.Contains(h.Reason, "no kubeconfig given") || strings.Contains(h.Reason, "\n") {
		t.Errorf("reason %q", h.Reason)
	}
}

// The kubeconfig of the runbook's apiserver checks, rendered from its
// parameters: a step's verify counts, and a template of an earlier
// step's result (unknown before the run) is passed over.
func TestRunbookAPIServerKubeconfig(t *testing.T) {
	rb, err := runbook.Load("kc.yaml", []byte(`name: kc
parameters:
  kubeconfig: {type: string, default: /etc/oncall.kubeconfig}
steps:
  - id: find
    type: note
    params: {message: hi}
  - id: first
    type: verify
    params:
      check: apiserver
      kubeconfig: "{{ .steps.find.kubeconfig }}"
  - id: second
    type: note
    params: {message: hi}
    verify:
      check: apiserver
      params: {kubeconfig: "{{ .params.kubeconfig }}"}
`))
	if err != nil {
		t.Fatal(err)
	}
	params, err := rb.ResolveParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rb.APIServerKubeconfig(params); got != "/etc/oncall.kubeconfig" {
		t.Errorf("kubeconfig %q", got)
	}
	params["kubeconfig"] = ""
	if got := rb.APIServerKubeconfig(params); got != "" {
		t.Errorf("kubeconfig %q with the parameter empty", got)
	}
}
