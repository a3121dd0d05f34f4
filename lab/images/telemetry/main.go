// Command telemetry is the lab's copy of the agent behind the December 2024
// outage: run as a DaemonSet, every pod LISTs pods, nodes and endpoints of
// the whole cluster in a tight loop, so the API server's load grows with the
// number of nodes times the size of the cluster.
//
// It talks to the API server named by APISERVER (the lab runs it with
// hostNetwork) with the pod's service-account token, and it answers 429s
// as a client-go informer does: the REST client waits as long as each
// 429's Retry-After says and asks again, up to 10 times (client-go's
// rest.Request maxRetries); then the LIST has failed, and the reflector
// backs off before its next LIST, 0.8 s doubling to 30 s, jittered by up
// to as much again, starting over at 0.8 s once two minutes passed since
// it last began to back off (client-go's reflector:
// NewExponentialBackoffManager(800ms, 30s, 2m, 2.0, 1.0)).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	server := os.Getenv("APISERVER")
	if server == "" {
		log.Fatal("APISERVER is not set")
	}
	workers, _ := strconv.Atoi(os.Getenv("CONCURRENCY"))
	if workers < 1 {
		workers = 8
	}
	paths := strings.Split(envOr("PATHS", "/api/v1/pods,/api/v1/nodes,/api/v1/endpoints"), ",")

	pool := x509.NewCertPool()
	if ca, err := os.ReadFile(saDir + "/ca.crt"); err == nil {
		pool.AppendCertsFromPEM(ca)
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			MaxIdleConnsPerHost: workers,
		},
	}
	page, _ := strconv.Atoi(os.Getenv("PAGE"))
	var ok, throttled, failed atomic.Int64
	for i := 0; i < workers; i++ {
		go func(i int) {
			// Each loop LISTs one collection whole, in pages of PAGE
			// objects when PAGE is set (as informers and kubectl do), then
			// the next.
			cont := ""
			var retries int
			var bo backoff
			for n := i; ; {
				path := paths[n%len(paths)]
				if page > 0 {
					path += "?limit=" + strconv.Itoa(page)
					if cont != "" {
						path += "&continue=" + url.QueryEscape(cont)
					}
				}
				// The token is re-read: kubelet rotates projected tokens.
				token, _ := os.ReadFile(saDir + "/token")
				req, _ := http.NewRequest("GET", server+path, nil)
				req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
				req.Header.Set("User-Agent", "telemetry-agent/1.0")
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					retries, cont = 0, ""
					time.Sleep(100 * time.Millisecond)
					continue
				}
				var list struct {
					Metadata struct {
						Continue string `json:"continue"`
					} `json:"metadata"`
				}
				if resp.StatusCode == http.StatusOK {
					err = json.NewDecoder(resp.Body).Decode(&list)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusTooManyRequests:
					// As client-go does: wait as long as the apiserver
					// asks (Retry-After), then ask for the same page again.
					throttled.Add(1)
					if retries++; retries > maxRetries {
						retries, cont = 0, ""
						bo.wait()
						continue
					}
					wait, err := strconv.Atoi(resp.Header.Get("Retry-After"))
					if err != nil || wait < 1 {
						wait = 1
					}
					time.Sleep(time.Duration(wait) * time.Second)
				case resp.StatusCode >= 300 || err != nil:
					failed.Add(1)
					retries, cont = 0, ""
					time.Sleep(100 * time.Millisecond)
				default:
					ok.Add(1)
					retries = 0
					if cont = list.Metadata.Continue; cont == "" {
						n++
					}
				}
			}
		}(i)
	}
	for range time.Tick(10 * time.Second) {
		fmt.Printf("telemetry: lists ok=%d throttled=%d failed=%d\n", ok.Load(), throttled.Load(), failed.Load())
	}
}

// maxRetries is how many times client-go's REST client asks again after a
// 429 before the request fails.
const maxRetries = 10

// backoff is client-go's reflector backoff between failed LISTs.
type backoff struct {
	d    time.Duration
	last time.Time
}

func (b *backoff) wait() { time.Sleep(b.next(time.Now(), rand.Int64N)) }

// next is how long to wait before the next LIST, at now; jitter(n) is a
// random number in [0, n).
func (b *backoff) next(now time.Time, jitter func(int64) int64) time.Duration {
	const initial, limit, reset = 800 * time.Millisecond, 30 * time.Second, 2 * time.Minute
	switch {
	case b.d == 0 || now.Sub(b.last) > reset:
		b.d = initial
	default:
		b.d = min(2*b.d, limit)
	}
	b.last = now
	return b.d + time.Duration(jitter(int64(b.d)))
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
