package sshclient

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kevinburke/ssh_config"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/inventory"
)

// Options configure a Client. FromInventory fills them from the inventory.
type Options struct {
	// User and Port are the defaults. UserSet and PortSet say that the
	// inventory named them explicitly, which makes them win over the ssh
	// config; a node's own user or port wins over both.
	User             string
	Port             int
	UserSet, PortSet bool
	// IdentityFiles are private keys offered to every node, in order.
	IdentityFiles []string
	// AgentSocket is the ssh-agent socket ("" for no agent).
	AgentSocket string
	// KnownHosts are the known_hosts files; unknown keys are recorded in the
	// first when AcceptNewHostKeys is set.
	KnownHosts        []string
	AcceptNewHostKeys bool
	// ConfigFile is an OpenSSH client config ("" for none).
	ConfigFile string
	// JumpHost is [user@]host[:port][,...]: it wins over the ssh config's
	// ProxyJump. "none" disables the ssh config's ProxyJump.
	JumpHost string
	// Sudo is "auto" (sudo -n when the user is not root), "always" or "never".
	Sudo string

	// Deadlines for each phase of reaching a node. Zero picks the default.
	DialTimeout      time.Duration // TCP connect (default 10s)
	HandshakeTimeout time.Duration // version exchange and key exchange (10s)
	AuthTimeout      time.Duration // user authentication (10s)
	SessionTimeout   time.Duration // opening a session channel (10s)
	// CommandTimeout bounds a command once it started (0: only the
	// context's deadline).
	CommandTimeout time.Duration

	// KeepaliveInterval is how often an open connection is probed
	// (default 15s); after KeepaliveCountMax (3) probes without an answer
	// the connection is closed.
	KeepaliveInterval time.Duration
	KeepaliveCountMax int
	// ReuseConnections keeps a connection whose command ended normally open
	// for the next step of the same run on that node (a runbook's later
	// steps). Off, every connection is closed as soon as its command ends:
	// a single command on thousands of nodes must not hold thousands of
	// connections (and their goroutines and buffers) open until the end.
	ReuseConnections bool
	// MaxIdle is how long an idle connection is kept for reuse (default 5m).
	MaxIdle time.Duration

	// JumpHandshakes caps the handshakes in flight through one jump host
	// (default 8, under sshd's default MaxStartups of 10).
	JumpHandshakes int
	// OutputLimit is how many bytes of the tail of stdout and of stderr are
	// kept (default 64 KiB).
	OutputLimit int

	// Logf, if set, receives debug lines.
	Logf func(format string, a ...any)
}

func (o *Options) defaults() {
	if o.User == "" {
		o.User = "root"
	}
	if o.Port == 0 {
		o.Port = 22
	}
	if o.Sudo == "" {
		o.Sudo = "auto"
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.DialTimeout, 10*time.Second)
	def(&o.HandshakeTimeout, 10*time.Second)
	def(&o.AuthTimeout, 10*time.Second)
	def(&o.SessionTimeout, 10*time.Second)
	def(&o.KeepaliveInterval, 15*time.Second)
	def(&o.MaxIdle, 5*time.Minute)
	if o.KeepaliveCountMax <= 0 {
		o.KeepaliveCountMax = 3
	}
	if o.JumpHandshakes <= 0 {
		o.JumpHandshakes = 8
	}
	if o.OutputLimit <= 0 {
		o.OutputLimit = 64 << 10
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// FromInventory returns the options the inventory's ssh section describes.
// ConnectTimeout bounds each of dial, handshake, auth and session open.
func FromInventory(inv *inventory.Inventory) Options {
	s := inv.SSH
	o := Options{
		User:          s.User,
		Port:          s.Port,
		UserSet:       inv.IsSet("ssh.user"),
		PortSet:       inv.IsSet("ssh.port"),
		IdentityFiles: s.IdentityFiles,
		JumpHost:      s.JumpHost,
		Sudo:          s.Sudo,
	}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" && (s.Agent == nil || *s.Agent) {
		o.AgentSocket = sock
	}
	if s.KnownHosts != "" {
		o.KnownHosts = []string{s.KnownHosts}
	}
	switch s.Config {
	case "none":
	case "":
		if home, err := os.UserHomeDir(); err == nil {
			p := filepath.Join(home, ".ssh", "config")
			if _, err := os.Stat(p); err == nil {
				o.ConfigFile = p
			}
		}
	default:
		o.ConfigFile = s.Config
	}
	d := s.ConnectTimeout.Duration
	o.DialTimeout, o.HandshakeTimeout, o.AuthTimeout, o.SessionTimeout = d, d, d, d
	return o
}

// endpoint is one SSH server to reach, fully resolved.
type endpoint struct {
	name       string // node name (for errors)
	host       string
	port       int
	user       string
	identities []string
	jumps      []*endpoint // outermost first
}

func (e *endpoint) addr() string { return net.JoinHostPort(e.host, strconv.Itoa(e.port)) }

// key identifies a connection: same user, server and route.
func (e *endpoint) key() string {
	var b strings.Builder
	for _, j := range e.jumps {
		b.WriteString(j.user + "@" + j.addr() + ">")
	}
	b.WriteString(e.user + "@" + e.addr())
	return b.String()
}

// sshConfig reads the OpenSSH client config.
type sshConfig struct{ cfg *ssh_config.Config }

func loadSSHConfig(path string) (*sshConfig, error) {
	if path == "" {
		return &sshConfig{}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ssh config: %w", err)
	}
	defer f.Close()
	cfg, err := ssh_config.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("ssh config %s: %w\nhint: fix the file, or set ssh.config: none in the inventory", path, err)
	}
	return &sshConfig{cfg: cfg}, nil
}

// catchAll is a host name no Host pattern names: what it gets is what the
// catch-all blocks (Host *) give every host.
const catchAll = "\x00breakglass-no-such-host"

// get returns key for the first of aliases that a block other than a
// catch-all sets it for, else the catch-all's value: so that with
// "Host 10.2.0.*" and "Host *" blocks, a node named db-7 at 10.2.0.7 gets
// the address block's value, not the catch-all's that its name matched.
// (A name block that sets the same value as the catch-all counts as not
// setting it.)
func (c *sshConfig) get(key string, aliases ...string) string {
	if c.cfg == nil {
		return ""
	}
	def, _ := c.cfg.Get(catchAll, key)
	for _, a := range aliases {
		if a == "" {
			continue
		}
		if v, err := c.cfg.Get(a, key); err == nil && v != "" && v != def {
			return v
		}
	}
	return def
}

// getAll is get for keys that take several values (IdentityFile).
func (c *sshConfig) getAll(key string, aliases ...string) []string {
	if c.cfg == nil {
		return nil
	}
	def, _ := c.cfg.GetAll(catchAll, key)
	for _, a := range aliases {
		if a == "" {
			continue
		}
		if v, err := c.cfg.GetAll(a, key); err == nil && len(v) > 0 && !slices.Equal(v, def) {
			return v
		}
	}
	return def
}

// resolve turns a target into an endpoint. Precedence: the node's own user
// and port, then the inventory's explicit ssh settings, then the ssh config
// (looked up by node name, then by address), then the defaults.
func (c *Client) resolve(t nodeops.Target) (*endpoint, error) {
	aliases := []string{t.Name, t.Address}
	e, err := c.resolveHost(t.Name, t.Address, t.User, t.Port, aliases)
	if err != nil {
		return nil, err
	}
	jump := c.opts.JumpHost
	if jump == "" {
		jump = c.cfg.get("ProxyJump", aliases...)
	}
	if jump != "" && jump != "none" {
		for _, spec := range strings.Split(jump, ",") {
			j, err := c.parseJump(strings.TrimSpace(spec))
			if err != nil {
				return nil, fmt.Errorf("jump host %q: %w", spec, err)
			}
			e.jumps = append(e.jumps, j)
		}
	}
	return e, nil
}

func (c *Client) resolveHost(name, address, user string, port int, aliases []string) (*endpoint, error) {
	e := &endpoint{name: name, host: address}
	if hn := c.cfg.get("HostName", aliases...); hn != "" {
		e.host = strings.ReplaceAll(hn, "%h", address)
	}
	switch {
	case port != 0:
		e.port = port
	case c.opts.PortSet:
		e.port = c.opts.Port
	default:
		e.port = c.opts.Port
		if p := c.cfg.get("Port", aliases...); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("ssh config: Port %q for %s is not a port", p, name)
			}
			e.port = n
		}
	}
	switch {
	case user != "":
		e.user = user
	case c.opts.UserSet:
		e.user = c.opts.User
	default:
		e.user = c.opts.User
		if u := c.cfg.get("User", aliases...); u != "" {
			e.user = u
		}
	}
	e.identities = append(e.identities, c.opts.IdentityFiles...)
	for _, f := range c.cfg.getAll("IdentityFile", aliases...) {
		e.identities = append(e.identities, expandHome(f))
	}
	return e, nil
}

// parseJump resolves [user@]host[:port] through the ssh config.
func (c *Client) parseJump(spec string) (*endpoint, error) {
	if spec == "" {
		return nil, fmt.Errorf("empty")
	}
	user, hostport := "", spec
	if i := strings.LastIndex(spec, "@"); i >= 0 {
		user, hostport = spec[:i], spec[i+1:]
	}
	host, port := hostport, 0
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host = h
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("bad port %q", p)
		}
		port = n
	}
	return c.resolveHost(host, host, user, port, []string{host})
}

func expandHome(p string) string {
	if strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[2:])
		}
	}
	return p
}

// auth loads private keys once and hands out auth methods per endpoint.
type auth struct {
	mu      sync.Mutex
	signers map[string]ssh.Signer // by path; nil when unusable
	agent   agent.ExtendedAgent
	agentS  []ssh.Signer
	logf    func(string, ...any)
}

func newAuth(agentSocket string, logf func(string, ...any)) (*auth, error) {
	a := &auth{signers: map[string]ssh.Signer{}, logf: logf}
	if agentSocket != "" {
		conn, err := net.Dial("unix", agentSocket)
		if err != nil {
			logf("ssh-agent at %s: %v (not used)", agentSocket, err)
		} else {
			a.agent = agent.NewClient(conn)
			if a.agentS, err = a.agent.Signers(); err != nil {
				logf("ssh-agent: %v (not used)", err)
				a.agentS = nil
			}
		}
	}
	return a, nil
}

// signer loads a private key; keys it cannot use (missing, or protected by
// a passphrase, which breakglass never prompts for) are skipped: the agent
// may hold them.
func (a *auth) signer(path string) ssh.Signer {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.signers[path]; ok {
		return s
	}
	var s ssh.Signer
	b, err := os.ReadFile(path)
	if err == nil {
		s, err = ssh.ParsePrivateKey(b)
	}
	if err != nil {
		a.logf("identity %s: %v (skipped)", path, err)
		s = nil
	}
	a.signers[path] = s
	return s
}

func (a *auth) methods(identities []string) []ssh.AuthMethod {
	var signers []ssh.Signer
	for _, p := range identities {
		if s := a.signer(p); s != nil {
			signers = append(signers, s)
		}
	}
	signers = append(signers, a.agentS...)
	if len(signers) == 0 {
		return nil
	}
	return []ssh.AuthMethod{ssh.PublicKeys(signers...)}
}

// defaultIdentities are the keys OpenSSH tries when none is configured.
func defaultIdentities() []string {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
		p := filepath.Join(home, ".ssh", n)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}
