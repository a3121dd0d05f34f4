// Package inventory loads the breakglass inventory file: how to reach the
// nodes over SSH, how to reach etcd, where the API server runs, and which
// nodes exist. Every problem found is reported with the file, the line and the
// key, so that an operator can fix it in one go.
package inventory

import (
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Inventory is the parsed inventory file. Paths in it are absolute once
// loaded (relative ones are taken relative to the file, ~ is expanded).
type Inventory struct {
	// Path is the file it was loaded from ("" for an empty inventory).
	Path string `yaml:"-"`

	SSH       SSH       `yaml:"ssh"`
	Etcd      Etcd      `yaml:"etcd"`
	APIServer APIServer `yaml:"apiserver"`
	// ControllerManager says where a hosted control plane's
	// controller-manager runs.
	ControllerManager ControllerManager `yaml:"controllerManager"`
	// Containerd says where each node's containerd listens.
	Containerd Containerd `yaml:"containerd"`
	Nodes      []Node     `yaml:"nodes"`

	// lines maps a key path such as "nodes[2].address" to its line, for
	// errors found after parsing.
	lines map[string]int `yaml:"-"`
}

// SSH holds the settings used to reach every node.
type SSH struct {
	User string `yaml:"user"`
	Port int    `yaml:"port"`
	// IdentityFiles are private keys to offer, in order.
	IdentityFiles []string `yaml:"identityFiles"`
	// Agent uses the ssh-agent at $SSH_AUTH_SOCK (default true when set).
	Agent *bool `yaml:"agent"`
	// KnownHosts is the known_hosts file host keys are verified against.
	KnownHosts string `yaml:"knownHosts"`
	// Config is an OpenSSH client config to read (Host, HostName, User, Port,
	// IdentityFile, ProxyJump); "none" disables it.
	Config string `yaml:"config"`
	// JumpHost is [user@]host[:port] used to reach every node.
	JumpHost string `yaml:"jumpHost"`
	// Sudo: "auto" (sudo -n when the user is not root), "always" or "never".
	Sudo string `yaml:"sudo"`
	// ConnectTimeout bounds dial, handshake and auth.
	ConnectTimeout Duration `yaml:"connectTimeout"`
}

// Etcd holds the settings used to reach etcd. ETCDCTL_* environment
// variables and flags override them.
type Etcd struct {
	Endpoints []string `yaml:"endpoints"`
	CACert    string   `yaml:"cacert"`
	Cert      string   `yaml:"cert"`
	Key       string   `yaml:"key"`
	// Prefix is the apiserver's --etcd-prefix (default /registry).
	Prefix string `yaml:"prefix"`
	// Tunnel names a control-plane node: etcd is reached through SSH to that
	// node's 127.0.0.1:2379 (or the port of the first endpoint).
	Tunnel string `yaml:"tunnel"`
	// DialTimeout bounds connecting to etcd.
	DialTimeout Duration `yaml:"dialTimeout"`
}

// APIServer says where the Kubernetes API server runs and how it is deployed.
type APIServer struct {
	// URL is how the operator's machine reaches it (for evidence and checks).
	URL  string `yaml:"url"`
	Port int    `yaml:"port"`
	// Manifest is the static-pod manifest on control-plane nodes.
	Manifest string `yaml:"manifest"`
	// Deployment is NAMESPACE/NAME of a hosted API server.
	Deployment string `yaml:"deployment"`
}

// ControllerManager says where the controller-manager runs when it is not
// on the control-plane nodes.
type ControllerManager struct {
	// Deployment is NAMESPACE/NAME of a hosted controller-manager (a
	// Deployment or StatefulSet in the hosting cluster's etcd).
	Deployment string `yaml:"deployment"`
}

// Containerd says how nodes' containerd is reached.
type Containerd struct {
	// Socket is containerd's socket on every node (default
	// /run/containerd/containerd.sock); a node's containerdSocket wins.
	Socket string `yaml:"socket"`
	// Via is how the socket is reached over SSH: "auto" (a forwarded
	// unix socket, then a relay under sudo -n), "forward" or "sudo".
	Via string `yaml:"via"`
}

// Node is one machine breakglass may reach over SSH.
type Node struct {
	Name    string            `yaml:"name"`
	Address string            `yaml:"address"`
	Roles   []string          `yaml:"roles"`
	Labels  map[string]string `yaml:"labels"`
	// User and Port override the ssh section for this node.
	User string `yaml:"user"`
	Port int    `yaml:"port"`
	// ContainerdSocket overrides containerd.socket for this node.
	ContainerdSocket string `yaml:"containerdSocket"`
}

// Duration is a time.Duration written as "5s" in YAML.
type Duration struct{ time.Duration }

// HasRole reports whether the node has the role.
func (n Node) HasRole(role string) bool { return slices.Contains(n.Roles, role) }

// Empty returns the inventory used when there is no inventory file.
func Empty() *Inventory {
	inv := &Inventory{lines: map[string]int{}}
	inv.applyDefaults()
	return inv
}

// Load reads and checks an inventory file.
func Load(path string) (*Inventory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("inventory %s: no such file\nhint: pass --inventory FILE, set BREAKGLASS_INVENTORY, or write one (see docs/inventory.md)", path)
		}
		return nil, fmt.Errorf("inventory: %w", err)
	}
	return Parse(path, data)
}

// Parse parses inventory data that was read from path (used in errors and to
// resolve relative paths).
func Parse(path string, data []byte) (*Inventory, error) {
	inv := &Inventory{Path: path}
	if err := decodeStrict(path, data, inv); err != nil {
		return nil, err
	}
	inv.applyDefaults()
	if err := inv.resolvePaths(); err != nil {
		return nil, err
	}
	if err := inv.validate(); err != nil {
		return nil, err
	}
	return inv, nil
}

func (inv *Inventory) applyDefaults() {
	if inv.SSH.User == "" {
		inv.SSH.User = "root"
	}
	if inv.SSH.Port == 0 {
		inv.SSH.Port = 22
	}
	if inv.SSH.Sudo == "" {
		inv.SSH.Sudo = "auto"
	}
	if inv.Containerd.Socket == "" {
		inv.Containerd.Socket = "/run/containerd/containerd.sock"
	}
	if inv.Containerd.Via == "" {
		inv.Containerd.Via = "auto"
	}
	if inv.SSH.ConnectTimeout.Duration == 0 {
		inv.SSH.ConnectTimeout.Duration = 10 * time.Second
	}
	if inv.SSH.KnownHosts == "" {
		if home, err := os.UserHomeDir(); err == nil {
			inv.SSH.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
		}
	}
	if inv.Etcd.Prefix == "" {
		inv.Etcd.Prefix = "/registry"
	}
	if inv.Etcd.DialTimeout.Duration == 0 {
		inv.Etcd.DialTimeout.Duration = 5 * time.Second
	}
	if inv.APIServer.Port == 0 {
		inv.APIServer.Port = 6443
	}
	if inv.APIServer.Manifest == "" && inv.APIServer.Deployment == "" {
		inv.APIServer.Manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
	}
}

// errorAt formats a problem found at key.
func (inv *Inventory) errorAt(key, format string, a ...any) error {
	return &Error{File: inv.Path, Line: inv.lines[key], Key: key, Msg: fmt.Sprintf(format, a...)}
}

// Error is a problem in an inventory file.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key == "" {
		return fmt.Sprintf("%s: %s", loc, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
}

// ExitCode makes a bad inventory a usage error (exit code 2).
func (e *Error) ExitCode() int { return 2 }

// resolvePaths makes file paths absolute and checks that the files exist.
// The known_hosts file may be missing only if it was not set explicitly
// (then every host is unknown, which the SSH client reports).
func (inv *Inventory) resolvePaths() error {
	dir := filepath.Dir(inv.Path)
	fix := func(key string, p *string, mustExist bool) error {
		if *p == "" {
			return nil
		}
		*p = expandPath(dir, *p)
		if mustExist {
			if _, err := os.Stat(*p); err != nil {
				if os.IsNotExist(err) {
					return inv.errorAt(key, "%s: no such file", *p)
				}
				return inv.errorAt(key, "%v", err)
			}
		}
		return nil
	}
	for i := range inv.SSH.IdentityFiles {
		if err := fix(fmt.Sprintf("ssh.identityFiles[%d]", i), &inv.SSH.IdentityFiles[i], true); err != nil {
			return err
		}
	}
	_, khSet := inv.lines["ssh.knownHosts"]
	if err := fix("ssh.knownHosts", &inv.SSH.KnownHosts, khSet); err != nil {
		return err
	}
	if inv.SSH.Config != "none" {
		_, set := inv.lines["ssh.config"]
		if err := fix("ssh.config", &inv.SSH.Config, set); err != nil {
			return err
		}
	}
	// etcd certificates may live on a control-plane node rather than here when
	// a tunnel is used; they are still read locally, so they must exist.
	for _, f := range []struct {
		key string
		p   *string
	}{{"etcd.cacert", &inv.Etcd.CACert}, {"etcd.cert", &inv.Etcd.Cert}, {"etcd.key", &inv.Etcd.Key}} {
		if err := fix(f.key, f.p, true); err != nil {
			return err
		}
	}
	return nil
}

func expandPath(dir, p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			p = filepath.Join(home, strings.TrimPrefix(p, "~"))
		}
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	return filepath.Clean(p)
}

func (inv *Inventory) validate() error {
	switch inv.SSH.Sudo {
	case "auto", "always", "never":
	default:
		return inv.errorAt("ssh.sudo", "%q: must be auto, always or never", inv.SSH.Sudo)
	}
	if inv.SSH.Port < 1 || inv.SSH.Port > 65535 {
		return inv.errorAt("ssh.port", "%d: must be between 1 and 65535", inv.SSH.Port)
	}
	if (inv.Etcd.Cert == "") != (inv.Etcd.Key == "") {
		return inv.errorAt("etcd.cert", "cert and key must be given together")
	}
	for i, ep := range inv.Etcd.Endpoints {
		if !strings.Contains(ep, "://") {
			return inv.errorAt(fmt.Sprintf("etcd.endpoints[%d]", i), "%q: want a URL such as https://10.0.0.2:2379", ep)
		}
	}
	switch inv.Containerd.Via {
	case "auto", "forward", "sudo":
	default:
		return inv.errorAt("containerd.via", "%q: must be auto, forward or sudo", inv.Containerd.Via)
	}
	if !strings.HasPrefix(inv.Containerd.Socket, "/") {
		return inv.errorAt("containerd.socket", "%q: want an absolute path such as /run/containerd/containerd.sock", inv.Containerd.Socket)
	}
	if d := inv.APIServer.Deployment; d != "" && strings.Count(d, "/") != 1 {
		return inv.errorAt("apiserver.deployment", "%q: want NAMESPACE/NAME", d)
	}
	if d := inv.ControllerManager.Deployment; d != "" && (strings.Count(d, "/") != 1 || strings.HasPrefix(d, "/") || strings.HasSuffix(d, "/")) {
		return inv.errorAt("controllerManager.deployment", "%q: want NAMESPACE/NAME", d)
	}
	seen := map[string]int{}
	for i, n := range inv.Nodes {
		key := fmt.Sprintf("nodes[%d]", i)
		if n.Name == "" {
			return inv.errorAt(key, "node has no name")
		}
		if j, dup := seen[n.Name]; dup {
			return inv.errorAt(key+".name", "%q is also nodes[%d]", n.Name, j)
		}
		seen[n.Name] = i
		if n.Address == "" {
			return inv.errorAt(key, "node %q has no address", n.Name)
		}
		if strings.ContainsAny(n.Address, " /") {
			return inv.errorAt(key+".address", "%q: want a host name or IP address", n.Address)
		}
		if n.Port != 0 && (n.Port < 1 || n.Port > 65535) {
			return inv.errorAt(key+".port", "%d: must be between 1 and 65535", n.Port)
		}
		if s := n.ContainerdSocket; s != "" && !strings.HasPrefix(s, "/") {
			return inv.errorAt(key+".containerdSocket", "%q: want an absolute path", s)
		}
	}
	if t := inv.Etcd.Tunnel; t != "" {
		if _, ok := seen[t]; !ok {
			return inv.errorAt("etcd.tunnel", "%q is not a node in this inventory", t)
		}
	}
	return nil
}

// Node returns the node with the given name.
func (inv *Inventory) Node(name string) (Node, bool) {
	for _, n := range inv.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// SSHAddress returns host:port for a node, with the node's port override.
func (inv *Inventory) SSHAddress(n Node) string {
	port := inv.SSH.Port
	if n.Port != 0 {
		port = n.Port
	}
	return net.JoinHostPort(n.Address, strconv.Itoa(port))
}

// SSHUser returns the user for a node, with the node's override.
func (inv *Inventory) SSHUser(n Node) string {
	if n.User != "" {
		return n.User
	}
	return inv.SSH.User
}

// Roles returns every role named in the inventory, sorted.
func (inv *Inventory) Roles() []string {
	set := map[string]bool{}
	for _, n := range inv.Nodes {
		for _, r := range n.Roles {
			set[r] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// IsSet reports whether the file set key (a path such as "ssh.user"), as
// opposed to the key taking its default.
func (inv *Inventory) IsSet(key string) bool {
	_, ok := inv.lines[key]
	return ok
}
