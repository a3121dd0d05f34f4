package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// listVariant is one API server LIST of the table: a selector the same as
// a breakglass row's, in one request (limit 0) or in pages.
type listVariant struct {
	name     string
	selector string // "label:app=app-7" or "field:spec.nodeName=node-0001"
	limit    int
}

// apiserver starts kube-apiserver processes against the bench's etcd, one
// for each LIST, so that the API server's peak RSS in each row is that
// LIST's alone (a Go heap that grew for one LIST stays large for minutes).
type apiserver struct {
	bin, dir, etcdEndpoint string
	keyFile, tokFile       string
	token                  string
	self                   string // this program, which runs the LIST clients
	broken                 error  // set when one did not start: the rest are not tried
}

func newAPIServer(dir, bin, etcdEndpoint string) (*apiserver, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	a := &apiserver{bin: bin, dir: dir, etcdEndpoint: etcdEndpoint, token: "bench-token", self: self,
		keyFile: filepath.Join(dir, "sa.key"), tokFile: filepath.Join(dir, "tokens.csv")}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(a.keyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(a.tokFile, []byte(a.token+`,bench,bench,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, err
	}
	return a, nil
}

// server is one running kube-apiserver.
type server struct {
	pid  int
	url  string
	stop func()
}

// start starts a kube-apiserver and waits until it is ready and its
// bootstrap controllers have settled.
func (a *apiserver) start(ctx context.Context) (*server, error) {
	port := freePort()
	actx, acancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(actx, a.bin,
		"--etcd-servers", a.etcdEndpoint, "--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(port),
		"--cert-dir", filepath.Join(a.dir, "apiserver-certs"), "--token-auth-file", a.tokFile, "--authorization-mode", "AlwaysAllow",
		"--service-account-issuer", "https://bench.invalid", "--service-account-key-file", a.keyFile, "--service-account-signing-key-file", a.keyFile,
		// The watch cache off, so that a LIST reads etcd as breakglass
		// does (and as an API server does while its cache is not filled).
		"--service-cluster-ip-range", "10.96.0.0/16", "--watch-cache=false", "--enable-priority-and-fairness=false",
		"--max-requests-inflight", "0", "--max-mutating-requests-inflight", "0",
		// A LIST of 150,000 pods in one request takes longer than the
		// default minute on 2 cores.
		"--request-timeout", "10m")
	alog, _ := os.OpenFile(filepath.Join(a.dir, "apiserver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	cmd.Stdout, cmd.Stderr = alog, alog
	if err := cmd.Start(); err != nil {
		acancel()
		return nil, err
	}
	s := &server{pid: cmd.Process.Pid, url: fmt.Sprintf("https://127.0.0.1:%d", port),
		stop: func() { acancel(); cmd.Wait(); alog.Close() }}
	// Readiness only: the LIST itself goes through client-go.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+a.token)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, fmt.Errorf("kube-apiserver not ready after 2m (log: %s)", alog.Name())
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // let its bootstrap controllers settle
	return s, nil
}

// list measures one LIST: a fresh API server, and the LIST client in a
// process of its own (this program with -list-client).
func (a *apiserver) list(ctx context.Context, v listVariant, env []string, etcdPID int) sample {
	if a.broken != nil {
		return sample{err: a.broken}
	}
	srv, err := a.start(ctx)
	if err != nil {
		a.broken = err
		return sample{err: err}
	}
	defer srv.stop()
	argv := []string{a.self, "-list-client", srv.url, "-list-token", a.token, "-list-selector", v.selector, "-list-limit", strconv.Itoa(v.limit)}
	var out bytes.Buffer
	s0 := procCPU(srv.pid)
	s := measure(ctx, argv, env, etcdPID, &out)
	s.serverCPU = procCPU(srv.pid) - s0
	s.serverRSS = procHWM(srv.pid)
	if s.err != nil {
		return s
	}
	var r listResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		s.err = fmt.Errorf("LIST client output %q: %v", out.String(), err)
		return s
	}
	s.output = fmt.Sprintf("%d pods, %d request(s), %s", r.Pods, r.Requests, r.ContentType)
	return s
}

// listResult is what a LIST client prints.
type listResult struct {
	Pods        int    `json:"pods"`
	Requests    int    `json:"requests"`
	ContentType string `json:"contentType"`
}

// listClient is the LIST client process: client-go asking for protobuf, as
// kubectl and informers do, with the selector of the breakglass row it is
// compared with, and following continue tokens when paged (as kubectl get
// does with its default --chunk-size=500). Each page is decoded into a
// PodList and dropped, as kubectl get prints a page and drops it.
func listClient(url, token, selector string, limit int) error {
	cfg := &rest.Config{Host: url, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		ContentConfig: rest.ContentConfig{
			ContentType:        runtime.ContentTypeProtobuf,
			AcceptContentTypes: runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON,
		},
		QPS:     -1, // no client-side rate limit between pages
		Timeout: 10 * time.Minute}
	// Record what the API server answered in, for the table.
	var got string
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if err == nil {
				got = resp.Header.Get("Content-Type")
			}
			return resp, err
		})
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	opts := metav1.ListOptions{Limit: int64(limit)}
	switch kind, sel, _ := strings.Cut(selector, ":"); kind {
	case "label":
		opts.LabelSelector = sel
	case "field":
		opts.FieldSelector = sel
	default:
		return fmt.Errorf("-list-selector %q: label:SELECTOR or field:SELECTOR", selector)
	}
	var r listResult
	for {
		l, err := cs.CoreV1().Pods("").List(context.Background(), opts)
		if err != nil {
			return fmt.Errorf("LIST after %d requests: %w", r.Requests, err)
		}
		r.Requests++
		r.Pods += len(l.Items)
		if limit == 0 || l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	r.ContentType = got
	return json.NewEncoder(os.Stdout).Encode(r)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
