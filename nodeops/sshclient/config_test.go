package sshclient

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/nodeops"
)

// TestResolveFromSSHConfig is the precedence table of docs/nodes.md: the
// node's own user and port, then the inventory's explicit ssh settings,
// then the ssh config (by node name, then by address), then the defaults.
func TestResolveFromSSHConfig(t *testing.T) {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory")
	}
	cfgFile := filepath.Join(t.TempDir(), "config")
	os.WriteFile(cfgFile, []byte(`
Host web-1
  HostName 10.1.0.1
  User deploy
  Port 2201
  IdentityFile ~/.ssh/web_key
  IdentityFile /keys/second

Host 10.2.0.*
  User byaddr
  Port 2202

Host alias-*
  HostName %h.internal.example

Host behind
  ProxyJump ops@bastion.example:2222

Host behind-chain
  ProxyJump jump1,root@jump2

Host bastion.example
  IdentityFile /keys/bastion

Host jump1
  HostName 192.0.2.1
  User hop
  Port 2022

Host direct
  ProxyJump none

Host keyed
  IdentityFile /keys/specific

Host *
  User fallback
`), 0o600)

	type want struct {
		host       string
		port       int
		user       string
		identities []string
		jumps      []string // user@host:port
	}
	for _, tc := range []struct {
		name   string
		opts   Options
		target nodeops.Target
		want   want
	}{
		{"host block by node name", Options{}, nodeops.Target{Name: "web-1", Address: "192.0.2.50"},
			want{host: "10.1.0.1", port: 2201, user: "deploy", identities: []string{filepath.Join(home, ".ssh/web_key"), "/keys/second"}}},
		{"node user and port win", Options{}, nodeops.Target{Name: "web-1", Address: "x", User: "me", Port: 2000},
			want{host: "10.1.0.1", port: 2000, user: "me", identities: []string{filepath.Join(home, ".ssh/web_key"), "/keys/second"}}},
		{"explicit inventory settings win over the config", Options{User: "inv", UserSet: true, Port: 2300, PortSet: true, IdentityFiles: []string{"/inv/key"}},
			nodeops.Target{Name: "web-1", Address: "x"},
			want{host: "10.1.0.1", port: 2300, user: "inv", identities: []string{"/inv/key", filepath.Join(home, ".ssh/web_key"), "/keys/second"}}},
		{"inventory defaults lose to the config", Options{User: "inv", Port: 2300}, nodeops.Target{Name: "web-1", Address: "x"},
			want{host: "10.1.0.1", port: 2201, user: "deploy", identities: []string{filepath.Join(home, ".ssh/web_key"), "/keys/second"}}},
		{"looked up by address when the name has no block", Options{}, nodeops.Target{Name: "db-7", Address: "10.2.0.7"},
			want{host: "10.2.0.7", port: 2202, user: "byaddr"}},
		{"HostName with %h", Options{}, nodeops.Target{Name: "alias-3", Address: "alias-3"},
			want{host: "alias-3.internal.example", port: 22, user: "fallback"}},
		{"Host * default", Options{}, nodeops.Target{Name: "plain", Address: "192.0.2.9"},
			want{host: "192.0.2.9", port: 22, user: "fallback"}},
		{"ProxyJump with user and port", Options{}, nodeops.Target{Name: "behind", Address: "10.9.0.1"},
			want{host: "10.9.0.1", port: 22, user: "fallback",
				jumps: []string{"ops@bastion.example:2222 [/keys/bastion]"}}},
		{"ProxyJump chain resolved through the config", Options{}, nodeops.Target{Name: "behind-chain", Address: "10.9.0.2"},
			want{host: "10.9.0.2", port: 22, user: "fallback",
				jumps: []string{"hop@192.0.2.1:2022 []", "root@jump2:22 []"}}},
		{"IdentityFile of the address block", Options{}, nodeops.Target{Name: "other", Address: "keyed"},
			want{host: "keyed", port: 22, user: "fallback", identities: []string{"/keys/specific"}}},
		{"ProxyJump none", Options{}, nodeops.Target{Name: "direct", Address: "10.9.0.3"},
			want{host: "10.9.0.3", port: 22, user: "fallback"}},
		{"inventory jump host wins", Options{JumpHost: "root@gw:2200"}, nodeops.Target{Name: "behind", Address: "10.9.0.1"},
			want{host: "10.9.0.1", port: 22, user: "fallback", jumps: []string{"root@gw:2200 []"}}},
		{"inventory jump host none disables the config's", Options{JumpHost: "none"}, nodeops.Target{Name: "behind", Address: "10.9.0.1"},
			want{host: "10.9.0.1", port: 22, user: "fallback"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.ConfigFile = cfgFile
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			e, err := c.resolve(tc.target)
			if err != nil {
				t.Fatal(err)
			}
			var jumps []string
			for _, j := range e.jumps {
				jumps = append(jumps, j.user+"@"+j.addr()+" ["+strings.Join(j.identities, ",")+"]")
			}
			got := want{host: e.host, port: e.port, user: e.user, identities: e.identities, jumps: jumps}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestResolveBadPortInSSHConfig(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "config")
	os.WriteFile(cfgFile, []byte("Host bad\n  Port http\n"), 0o600)
	c, err := New(Options{ConfigFile: cfgFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.resolve(nodeops.Target{Name: "bad", Address: "bad"}); err == nil || !strings.Contains(err.Error(), `Port "http"`) {
		t.Fatalf("got %v", err)
	}
}
