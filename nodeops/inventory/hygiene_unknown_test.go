package inventory

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnknownKeyInEverySection: the strict decoder (not yaml.v3's
// KnownFields, whose errors lack the key path and the suggestion) rejects an
// unknown key in every section with the file, the line, the key path and
// the keys that were meant.
func TestUnknownKeyInEverySection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "breakglass.yaml")
	for _, tc := range []struct {
		yaml, key, want string
		line            int
	}{
		{"sshh:\n  user: root\n", "sshh", `did you mean "ssh"?`, 1},
		{"ssh:\n  user: root\n  idenityFiles: []\n", "ssh.idenityFiles", `did you mean "identityFiles"?`, 3},
		{"etcd:\n  endpoint: [https://a:2379]\n", "etcd.endpoint", `did you mean "endpoints"?`, 2},
		{"apiserver:\n  manifests: /x\n", "apiserver.manifests", `did you mean "manifest"?`, 2},
		{"nodes:\n  - name: a\n    address: b\n  - name: c\n    addr: d\n", "nodes[1].addr", "known keys: address, containerdSocket, labels, name, port, roles, user", 5},
		{"ssh: {user: root, colour: blue}\n", "ssh.colour", "known keys: agent, config, connectTimeout", 1},
	} {
		_, err := Parse(path, []byte(tc.yaml))
		var ie *Error
		if !errors.As(err, &ie) {
			t.Errorf("%q: error %v, want an *inventory.Error", tc.yaml, err)
			continue
		}
		if ie.File != path || ie.Line != tc.line || ie.Key != tc.key || !strings.Contains(err.Error(), "unknown key") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v\nwant %s:%d: %s: unknown key (%s)", tc.yaml, err, path, tc.line, tc.key, tc.want)
		}
	}
}
