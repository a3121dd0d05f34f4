package inventory

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestParseErrors: every bad inventory names the file, the line and the key.
func TestParseErrors(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id")
	os.WriteFile(key, []byte("x"), 0o600)
	tests := []struct {
		name     string
		yaml     string
		wantLine int
		wantKey  string
		wantMsg  string
	}{
		{"unknown top-level key", "ssh:\n  user: root\nnode:\n  - name: a\n", 3, "node", `did you mean "nodes"?`},
		{"typo in ssh", "ssh:\n  usr: root\n", 2, "ssh.usr", `did you mean "user"?`},
		{"unknown far from any", "ssh:\n  zzzzzzzz: 1\n", 2, "ssh.zzzzzzzz", "known keys: agent, config"},
		{"port not a number", "ssh:\n  user: root\n  port: twenty-two\n", 3, "ssh.port", "want a whole number"},
		{"port out of range", "ssh:\n  port: 70000\n", 2, "ssh.port", "between 1 and 65535"},
		{"agent not bool", "ssh:\n  agent: maybe\n", 2, "ssh.agent", "want true or false"},
		{"bad duration", "ssh:\n  connectTimeout: 5 seconds\n", 2, "ssh.connectTimeout", "not a duration"},
		{"identity file missing", "ssh:\n  identityFiles:\n    - " + key + "\n    - ./nope\n", 4, "ssh.identityFiles[1]", "no such file"},
		{"identityFiles not a list", "ssh:\n  identityFiles: " + key + "\n", 2, "ssh.identityFiles", "want a list"},
		{"known_hosts missing", "ssh:\n  knownHosts: /nonexistent/kh\n", 2, "ssh.knownHosts", "no such file"},
		{"bad sudo", "ssh:\n  sudo: sometimes\n", 2, "ssh.sudo", "auto, always or never"},
		{"etcd cacert missing", "etcd:\n  endpoints: [https://10.0.0.1:2379]\n  cacert: ca.pem\n", 3, "etcd.cacert", "no such file"},
		{"etcd endpoint not a URL", "etcd:\n  endpoints:\n    - 10.0.0.1:2379\n", 3, "etcd.endpoints[0]", "want a URL"},
		{"etcd endpoints scalar", "etcd:\n  endpoints: https://a:2379\n", 2, "etcd.endpoints", "want a list"},
		{"cert without key", "etcd:\n  cert: " + key + "\n", 2, "etcd.cert", "cert and key must be given together"},
		{"tunnel to unknown node", "etcd:\n  tunnel: cp-9\nnodes:\n  - name: cp-1\n    address: 10.0.0.2\n", 2, "etcd.tunnel", `"cp-9" is not a node`},
		{"deployment not ns/name", "apiserver:\n  deployment: kube-apiserver\n", 2, "apiserver.deployment", "NAMESPACE/NAME"},
		{"controller-manager not ns/name", "controllerManager:\n  deployment: hosted/kcm/x\n", 2, "controllerManager.deployment", "NAMESPACE/NAME"},
		{"nodes not a list", "nodes:\n  name: a\n", 2, "nodes", "want a list"},
		{"node without name", "nodes:\n  - address: 10.0.0.1\n", 2, "nodes[0]", "no name"},
		{"node without address", "nodes:\n  - name: a\n", 2, "nodes[0]", "no address"},
		{"duplicate node", "nodes:\n  - name: a\n    address: 10.0.0.1\n  - name: a\n    address: 10.0.0.2\n", 4, "nodes[1].name", "also nodes[0]"},
		{"unknown node key", "nodes:\n  - name: a\n    adress: 10.0.0.1\n", 3, "nodes[0].adress", `did you mean "address"?`},
		{"labels not a map", "nodes:\n  - name: a\n    address: b\n    labels: [x]\n", 4, "nodes[0].labels", "want a mapping"},
		{"label value not a string", "nodes:\n  - name: a\n    address: b\n    labels:\n      zone:\n        x: 1\n", 6, "nodes[0].labels.zone", "want a string"},
		{"roles not a list", "nodes:\n  - name: a\n    address: b\n    roles: worker\n", 4, "nodes[0].roles", "want a list"},
		{"bad address", "nodes:\n  - name: a\n    address: http://b/\n", 3, "nodes[0].address", "host name or IP"},
		{"not yaml", "ssh:\n  user: root\n\tport: 1\n", 2, "", "tab character"},
		{"top level list", "- a\n- b\n", 1, "", "want a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "breakglass.yaml")
			_, err := Parse(path, []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error for:\n%s", tt.yaml)
			}
			var ie *Error
			if !errors.As(err, &ie) {
				t.Fatalf("error %v is not an *inventory.Error", err)
			}
			if ie.File != path {
				t.Errorf("file %q, want %q", ie.File, path)
			}
			if ie.Line != tt.wantLine {
				t.Errorf("line %d, want %d (%v)", ie.Line, tt.wantLine, err)
			}
			if ie.Key != tt.wantKey {
				t.Errorf("key %q, want %q (%v)", ie.Key, tt.wantKey, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q lacks %q", err, tt.wantMsg)
			}
			if want := path + ":"; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start with %q", err, want)
			}
			if ie.ExitCode() != 2 {
				t.Errorf("exit code %d, want 2", ie.ExitCode())
			}
		})
	}
}

func TestParseGood(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "id_ed25519"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "known_hosts"), nil, 0o644)
	for _, f := range []string{"ca.crt", "client.crt", "client.key"} {
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600)
	}
	src := `
ssh:
  user: ops
  port: 2222
  identityFiles: [id_ed25519]
  knownHosts: known_hosts
  config: none
  agent: false
  jumpHost: bastion.example:22
  sudo: always
  connectTimeout: 3s
etcd:
  endpoints: [https://10.0.0.2:2379]
  cacert: ca.crt
  cert: client.crt
  key: client.key
  prefix: /kubernetes.io
  tunnel: cp-1
apiserver:
  deployment: kube-system/kube-apiserver
nodes:
  - name: cp-1
    address: 10.0.0.2
    roles: [control-plane]
  - name: w-1
    address: w-1.example
    roles: [worker]
    labels: {zone: a}
    user: admin
    port: 22
`
	inv, err := Parse(filepath.Join(dir, "breakglass.yaml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if inv.SSH.User != "ops" || inv.SSH.Port != 2222 || inv.SSH.Sudo != "always" || inv.SSH.ConnectTimeout.Duration != 3*time.Second {
		t.Errorf("ssh: %+v", inv.SSH)
	}
	if got := inv.SSH.IdentityFiles[0]; got != filepath.Join(dir, "id_ed25519") {
		t.Errorf("identity file not resolved against the inventory's directory: %s", got)
	}
	if inv.Etcd.Prefix != "/kubernetes.io" || inv.Etcd.CACert != filepath.Join(dir, "ca.crt") {
		t.Errorf("etcd: %+v", inv.Etcd)
	}
	if inv.APIServer.Manifest != "" || inv.APIServer.Port != 6443 {
		t.Errorf("apiserver: %+v", inv.APIServer)
	}
	w, ok := inv.Node("w-1")
	if !ok || w.Labels["zone"] != "a" || !w.HasRole("worker") {
		t.Fatalf("node w-1: %+v", w)
	}
	if got := inv.SSHAddress(w); got != "w-1.example:22" {
		t.Errorf("SSHAddress %s", got)
	}
	if got := inv.SSHUser(w); got != "admin" {
		t.Errorf("SSHUser %s", got)
	}
	cp, _ := inv.Node("cp-1")
	if got := inv.SSHAddress(cp); got != "10.0.0.2:2222" {
		t.Errorf("SSHAddress %s", got)
	}
	if got := inv.Roles(); strings.Join(got, ",") != "control-plane,worker" {
		t.Errorf("roles %v", got)
	}
}

func TestEmptyFileIsEmptyInventory(t *testing.T) {
	inv, err := Parse(filepath.Join(t.TempDir(), "b.yaml"), []byte("# nothing yet\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Nodes) != 0 || inv.SSH.User != "root" || inv.Etcd.Prefix != "/registry" {
		t.Errorf("defaults not applied: %+v", inv)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml: no such file") || !strings.Contains(err.Error(), "hint:") {
		t.Fatalf("err = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("ssh:\n  user: root\nnodes:\n  - name: a\n    address: b\n"))
	f.Add([]byte("etcd: {endpoints: [https://a:1]}\n"))
	f.Add([]byte("nodes: [{name: a, address: b, labels: {x: y}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		inv, err := Parse("/nonexistent/b.yaml", data)
		if err == nil && inv == nil {
			t.Fatal("nil inventory without error")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "/nonexistent/b.yaml") {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}
