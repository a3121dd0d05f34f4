package sshclient

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/inventory"
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

// TestSSHConfigMatchBlocks: Match blocks breakglass can evaluate apply as
// in ssh; the others (exec, user, canonical, ...) are ignored with a
// warning naming file:line, also in an Included file, instead of failing.
func TestSSHConfigMatchBlocks(t *testing.T) {
	u, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	inc := filepath.Join(dir, "inc.conf")
	os.WriteFile(inc, []byte(`Match exec "nc -z %h 22"
  Port 1
Host inc-*
  User inc
`), 0o600)
	cfgFile := filepath.Join(dir, "config")
	os.WriteFile(cfgFile, []byte(`# the first Match is line 2
Match exec "test -e /nonexistent"
  User fromexec
Match host web-*,db-1,!web-9
  Port 2222
Match originalhost 10.3.0.* !localuser nobody-at-all
  User byaddr
Match localuser `+u.Username+`
  IdentityFile /keys/local
Match user deploy host *
  User fromuser
Match canonical all
  User canonical
Host *
  Include `+inc+`
  User fallback
`), 0o600)
	var warnings []string
	c, err := New(Options{ConfigFile: cfgFile, Warnf: func(f string, a ...any) { warnings = append(warnings, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatalf("a config with Match exec must load: %v", err)
	}
	wantWarn := []string{cfgFile + `:2: Match block ignored: breakglass cannot evaluate exec "test -e /nonexistent"`,
		cfgFile + `:10: Match block ignored: breakglass cannot evaluate user "deploy"`,
		cfgFile + ":12: Match block ignored: breakglass cannot evaluate canonical",
		inc + `:1: Match block ignored: breakglass cannot evaluate exec "nc -z %h 22"`}
	if len(warnings) != len(wantWarn) {
		t.Fatalf("warnings:\n%s", strings.Join(warnings, "\n"))
	}
	for i, w := range wantWarn {
		if !strings.Contains(warnings[i], w) {
			t.Errorf("warning %d: %q, want it to contain %q", i, warnings[i], w)
		}
	}
	for _, tc := range []struct {
		target nodeops.Target
		port   int
		user   string
	}{
		{nodeops.Target{Name: "web-1", Address: "192.0.2.1"}, 2222, "fallback"},
		{nodeops.Target{Name: "web-9", Address: "192.0.2.9"}, 22, "fallback"},
		{nodeops.Target{Name: "x", Address: "db-1"}, 2222, "fallback"},
		{nodeops.Target{Name: "y", Address: "10.3.0.4"}, 22, "byaddr"},
		{nodeops.Target{Name: "inc-1", Address: "192.0.2.2"}, 22, "inc"},
	} {
		e, err := c.resolve(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		if e.port != tc.port || e.user != tc.user || !slices.Contains(e.identities, "/keys/local") {
			t.Errorf("%s: port %d user %s identities %v, want %d %s with /keys/local", tc.target.Name, e.port, e.user, e.identities, tc.port, tc.user)
		}
	}
}

func TestSSHConfigErrorsNameFileAndLine(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ text, want string }{
		{"Host a\n  IdentityFile \"/unterminated\n", ":2: unterminated quote"},
		{"Host\n", ":1: Host without a pattern"},
		{"Match host\n", ":1: Match host: missing argument"},
	} {
		f := filepath.Join(dir, "config")
		os.WriteFile(f, []byte(tc.text), 0o600)
		_, err := New(Options{ConfigFile: f})
		if err == nil || !strings.Contains(err.Error(), f+tc.want) || !strings.Contains(err.Error(), "hint: ") {
			t.Errorf("%q: got %v, want %s%s", tc.text, err, f, tc.want)
		}
	}
}

// TestKnownHostsFilesPerHost: the inventory's known_hosts wins; else the
// ssh config's UserKnownHostsFile for the host (several, ~ and %-tokens,
// none), else ~/.ssh/known_hosts and known_hosts2; the global files come
// from the options, else GlobalKnownHostsFile, else /etc/ssh.
func TestKnownHostsFilesPerHost(t *testing.T) {
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory")
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config")
	os.WriteFile(cfgFile, []byte(`Host fleet-*
  UserKnownHostsFile ~/.ssh/fleet_hosts "/kh/with space" /kh/%h_%p
  GlobalKnownHostsFile /etc/fleet/ssh_known_hosts
  CertificateFile ~/.ssh/fleet-cert.pub
Host lab-*
  UserKnownHostsFile none
  GlobalKnownHostsFile none
`), 0o600)
	for _, tc := range []struct {
		name         string
		opts         Options
		target       string
		user, global []string
		certs        []string
	}{
		{"config files", Options{}, "fleet-1",
			[]string{filepath.Join(home, ".ssh/fleet_hosts"), "/kh/with space", "/kh/fleet-1_22"}, []string{"/etc/fleet/ssh_known_hosts"},
			[]string{filepath.Join(home, ".ssh/fleet-cert.pub")}},
		{"none", Options{}, "lab-1", []string{}, []string{}, nil},
		{"defaults", Options{}, "other",
			[]string{filepath.Join(home, ".ssh/known_hosts"), filepath.Join(home, ".ssh/known_hosts2")}, DefaultGlobalKnownHosts, nil},
		{"options win", Options{KnownHosts: []string{"/inv/kh"}, GlobalKnownHosts: []string{"/test/global"}}, "fleet-1",
			[]string{"/inv/kh"}, []string{"/test/global"}, []string{filepath.Join(home, ".ssh/fleet-cert.pub")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.ConfigFile = cfgFile
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			e, err := c.resolve(nodeops.Target{Name: tc.target, Address: tc.target})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(e.knownHosts, tc.user) || !reflect.DeepEqual(e.globalKnownHosts, tc.global) || !reflect.DeepEqual(e.certificates, tc.certs) {
				t.Errorf("user %q global %q certs %q\nwant %q %q %q", e.knownHosts, e.globalKnownHosts, e.certificates, tc.user, tc.global, tc.certs)
			}
		})
	}
}

// TestProxyJumpOrProxyCommand: as in ssh, whichever of the two the config
// gives first for the host is used; the inventory's jumpHost beats both.
func TestProxyJumpOrProxyCommand(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "config")
	os.WriteFile(cfgFile, []byte(`Host cmd-first
  ProxyCommand ssh -W %h:%p -l %r gw.example
  ProxyJump bastion
Host jump-first
  ProxyJump bastion
Host bastion
  ProxyCommand nc -X connect -x proxy:3128 %h %p
Host off
  ProxyCommand none
  ProxyJump bastion
Host *
  ProxyCommand nc %h %p
`), 0o600)
	for _, tc := range []struct {
		name, jumpHost, target, proxy string
		jumps                         []string
	}{
		{"ProxyCommand first", "", "cmd-first", "ssh -W 10.0.0.1:22 -l root gw.example", nil},
		{"ProxyJump first; the jump host's own ProxyCommand", "", "jump-first", "", []string{"bastion:22 nc -X connect -x proxy:3128 bastion 22"}},
		{"catch-all ProxyCommand", "", "plain", "nc 10.0.0.1 22", nil},
		{"ProxyCommand none first", "", "off", "", nil},
		{"inventory jump host wins", "root@gw2", "cmd-first", "", []string{"gw2:22 nc gw2 22"}},
		{"inventory none disables both", "none", "cmd-first", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Options{ConfigFile: cfgFile, JumpHost: tc.jumpHost})
			if err != nil {
				t.Fatal(err)
			}
			e, err := c.resolve(nodeops.Target{Name: tc.target, Address: "10.0.0.1"})
			if err != nil {
				t.Fatal(err)
			}
			var jumps []string
			for _, j := range e.jumps {
				jumps = append(jumps, strings.TrimSpace(j.addr()+" "+j.proxyCommand))
			}
			if e.proxyCommand != tc.proxy || !reflect.DeepEqual(jumps, tc.jumps) {
				t.Errorf("proxy %q jumps %q, want %q %q", e.proxyCommand, jumps, tc.proxy, tc.jumps)
			}
		})
	}
	os.WriteFile(cfgFile, []byte("Host *\n  ProxyCommand nc %h %z\n"), 0o600)
	c, err := New(Options{ConfigFile: cfgFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.resolve(nodeops.Target{Name: "a", Address: "a"}); err == nil || !strings.Contains(err.Error(), cfgFile+":2") || !strings.Contains(err.Error(), "%z") {
		t.Errorf("unknown token: %v", err)
	}
}

// TestFromInventoryKnownHosts: the inventory's own default for
// ssh.knownHosts must not hide the ssh config's UserKnownHostsFile.
func TestFromInventoryKnownHosts(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "breakglass.yaml")
	os.WriteFile(p, []byte("ssh:\n  user: root\n  config: none\n"), 0o600)
	inv, err := inventory.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if o := FromInventory(inv); o.KnownHosts != nil {
		t.Errorf("ssh.knownHosts not set: KnownHosts %q, want none (the ssh config's or the defaults)", o.KnownHosts)
	}
	os.WriteFile(p, []byte("ssh:\n  knownHosts: ./kh\n  config: none\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "kh"), nil, 0o600)
	if inv, err = inventory.Load(p); err != nil {
		t.Fatal(err)
	}
	if o := FromInventory(inv); !reflect.DeepEqual(o.KnownHosts, []string{filepath.Join(dir, "kh")}) {
		t.Errorf("ssh.knownHosts set: KnownHosts %q", o.KnownHosts)
	}
}

// TestBrokenKnownHostsStopsAtStart: a known_hosts line that cannot be read
// (it might be a @revoked one) stops the run before any node, in a global
// file as in a user file.
func TestBrokenKnownHostsStopsAtStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "ssh_known_hosts")
	os.WriteFile(bad, []byte("# fleet\n@revoked * ssh-ed25519 not-base64!\n"), 0o600)
	_, err := New(Options{KnownHosts: []string{filepath.Join(dir, "known_hosts")}, GlobalKnownHosts: []string{bad}})
	if err == nil || !strings.Contains(err.Error(), bad+":2") || !strings.Contains(err.Error(), "hint: ") {
		t.Fatalf("got %v", err)
	}
}
