package apiprobe_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops/apiprobe"
)

func TestParseSample(t *testing.T) {
	s, err := apiprobe.ParseSample(`apiserver_flowcontrol_rejected_requests_total{flow_schema="service-accounts",priority_level="workload-low",reason="queue-full"} 12 1700000000`)
	if err != nil || s.Name != "apiserver_flowcontrol_rejected_requests_total" || s.Value != 12 || s.Labels["priority_level"] != "workload-low" || s.Labels["reason"] != "queue-full" {
		t.Errorf("%+v %v", s, err)
	}
	s, err = apiprobe.ParseSample(`apiserver_current_inflight_requests{request_kind="readOnly"} 4`)
	if err != nil || s.Value != 4 || s.Labels["request_kind"] != "readOnly" {
		t.Errorf("%+v %v", s, err)
	}
	s, err = apiprobe.ParseSample(`x{a="q\"uote"} 1e3`)
	if err != nil || s.Labels["a"] != `q"uote` || s.Value != 1000 {
		t.Errorf("%+v %v", s, err)
	}
	for _, bad := range []string{"", "{a=\"b\"} 1", "x{a=\"b} 1", "x{a=\"b\"}", "x nan-ish"} {
		if _, err := apiprobe.ParseSample(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

type pair struct{ cert, key []byte }

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (pair, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	parent, signer := ca, caKey
	if ca == nil {
		parent, signer = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalECPrivateKey(key)
	return pair{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})}, c, key
}

// A real HTTPS server that asks for a client certificate from the CA, as
// the API server does, and a kubeadm-style kubeconfig with the credentials
// embedded: the script (real sh, awk, base64, curl) must get /readyz and
// the metrics, and print nothing of the credentials.
func TestScriptAgainstTLSServer(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	caPair, ca, caKey := issue(t, nil, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "kubernetes"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign})
	srvPair, _, _ := issue(t, ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, DNSNames: []string{"kubernetes"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	cliPair, _, _ := issue(t, ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})

	srvCert, err := tls.X509KeyPair(srvPair.cert, srvPair.key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `# HELP apiserver_current_inflight_requests x
apiserver_current_inflight_requests{request_kind="mutating"} 1
apiserver_current_inflight_requests{request_kind="readOnly"} 4
apiserver_request_total{code="200",resource="pods",verb="LIST"} 100
apiserver_request_total{code="429",resource="pods",verb="LIST"} 30
apiserver_request_total{code="429",resource="nodes",verb="LIST"} 5
apiserver_flowcontrol_current_executing_requests{flow_schema="service-accounts",priority_level="workload-low"} 7
apiserver_flowcontrol_dispatched_requests_total{flow_schema="service-accounts",priority_level="workload-low"} 900
apiserver_flowcontrol_dispatched_requests_total{flow_schema="system-nodes",priority_level="system"} 50
apiserver_flowcontrol_rejected_requests_total{flow_schema="service-accounts",priority_level="workload-low",reason="queue-full"} 40
apiserver_flowcontrol_nominal_limit_seats{priority_level="workload-low"} 24
etcd_request_duration_seconds_bucket{le="1"} 3
`)
	})
	srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(l)
	t.Cleanup(func() { l.Close() })
	port := l.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	b64 := base64.StdEncoding.EncodeToString
	kc := filepath.Join(dir, "admin.conf")
	os.WriteFile(kc, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    server: https://10.0.0.1:%d
    certificate-authority-data: %s
users:
- name: kubernetes-admin
  user:
    client-certificate-data: %s
    client-key-data: %s
`, port, b64(caPair.cert), b64(cliPair.cert), b64(cliPair.key))), 0o600)

	script := apiprobe.Script(apiprobe.Options{Port: port, Kubeconfigs: []string{filepath.Join(dir, "super-admin.conf"), kc}})
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, secret := range []string{b64(cliPair.key), string(cliPair.key), "PRIVATE KEY"} {
		if strings.Contains(string(out), secret) {
			t.Fatalf("the script printed the client key:\n%s", out)
		}
	}
	h, err := apiprobe.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if h.Kubeconfig != kc || !h.Ready || h.Code != 200 || h.Body != "ok" || len(h.Problems) != 0 {
		t.Fatalf("health: %+v\n%s", h, out)
	}
	if h.Inflight["readOnly"] != 4 || h.Inflight["mutating"] != 1 || h.Rejected429 != 35 || !h.APF || !h.Metrics {
		t.Errorf("figures: %+v", h)
	}
	if len(h.Flows) != 2 || h.Flows[0].FlowSchema != "service-accounts" || h.Flows[0].Rejected != 40 || h.Flows[0].Dispatched != 900 {
		t.Errorf("flows: %+v", h.Flows)
	}
	if len(h.Levels) != 1 || h.Levels[0].Name != "workload-low" || h.Levels[0].Seats != 24 || h.Levels[0].Executing != 7 || h.Levels[0].Rejected != 40 {
		t.Errorf("levels: %+v", h.Levels)
	}

	// With both, super-admin.conf (system:masters on kubeadm 1.29+, which
	// APF exempts) is the one asked.
	super := filepath.Join(dir, "super-admin.conf")
	b, _ := os.ReadFile(kc)
	os.WriteFile(super, b, 0o600)
	out, _ = exec.Command("sh", "-c", script).CombinedOutput()
	if h, err = apiprobe.Parse(out); err != nil || h.Kubeconfig != super || !h.Ready {
		t.Errorf("with super-admin.conf and admin.conf: %+v %v, want %s asked\n%s", h, err, super, out)
	}
	os.Remove(super)

	// Without a client certificate the server refuses: the problem is
	// reported, the probe does not fail.
	os.WriteFile(kc, []byte(fmt.Sprintf("clusters:\n- cluster:\n    certificate-authority-data: %s\n", b64(caPair.cert))), 0o600)
	out, _ = exec.Command("sh", "-c", script).CombinedOutput()
	if h, err = apiprobe.Parse(out); err != nil || h.Ready || h.Metrics || len(h.Problems) == 0 {
		t.Errorf("no client cert: %+v %v\n%s", h, err, out)
	}
	// No kubeconfig at all.
	out, _ = exec.Command("sh", "-c", apiprobe.Script(apiprobe.Options{Port: port, Kubeconfigs: []string{filepath.Join(dir, "none")}})).CombinedOutput()
	if h, err = apiprobe.Parse(out); err != nil || h.Ready || len(h.Problems) != 1 || h.Problems[0] != "no-kubeconfig" {
		t.Errorf("no kubeconfig: %+v %v\n%s", h, err, out)
	}
}
