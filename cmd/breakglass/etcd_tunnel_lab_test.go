package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/lab/labtest"
)

// TestLabEtcdThroughSSHTunnel reads from the lab's etcd at 127.0.0.1:2379,
// which only cp-1 itself can reach: through an SSH tunnel to cp-1 it works,
// without the tunnel it cannot.
func TestLabEtcdThroughSSHTunnel(t *testing.T) {
	s := labtest.Lab(t)
	src, err := os.ReadFile(s.Inventory)
	if err != nil {
		t.Fatal(err)
	}
	direct := strings.Replace(string(src), "endpoints: ["+strings.Join(s.Etcd.Endpoints, ", ")+"]", "endpoints: [https://127.0.0.1:2379]", 1)
	if direct == string(src) {
		t.Fatalf("could not rewrite the endpoints of %s", s.Inventory)
	}
	tunnelled := strings.Replace(direct, "endpoints: [https://127.0.0.1:2379]", "endpoints: [https://127.0.0.1:2379]\n  tunnel: cp-1", 1)
	dir := filepath.Dir(s.Inventory) // relative paths in the inventory resolve here
	for _, tc := range []struct {
		name, body string
		wantOK     bool
	}{{"tunnel", tunnelled, true}, {"direct", direct, false}} {
		path := filepath.Join(dir, "test-"+tc.name+".yaml")
		writeTestFile(t, path, tc.body)
		t.Cleanup(func() { os.Remove(path) })
		code, out, errOut := run(t, testDeps(), "--inventory", path, "--timeout", "5s", "-v", "get", "nodes", "-o", "name")
		if tc.wantOK {
			if code != 0 {
				t.Fatalf("%s: exit %d: %s", tc.name, code, errOut)
			}
			for _, w := range s.HostsWithRole("worker") {
				if !strings.Contains(out, w.Name) {
					t.Errorf("%s: %s missing from %q", tc.name, w.Name, out)
				}
			}
			if !strings.Contains(errOut, "through SSH to cp-1") {
				t.Errorf("%s: -v does not say the tunnel was used: %q", tc.name, errOut)
			}
		} else if code == 0 {
			t.Errorf("%s: reading 127.0.0.1:2379 without the tunnel worked: the tunnel test proves nothing", tc.name)
		}
	}
}
