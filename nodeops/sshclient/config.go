package sshclient

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

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
	// KnownHosts are the user's known_hosts files for every node; empty
	// picks the ssh config's UserKnownHostsFile for the node, else
	// ~/.ssh/known_hosts and ~/.ssh/known_hosts2. Unknown keys are recorded
	// in the first of a node's user files when AcceptNewHostKeys is set.
	KnownHosts        []string
	AcceptNewHostKeys bool
	// GlobalKnownHosts are the system-wide known_hosts files, read after
	// the user's and never written; nil picks the ssh config's
	// GlobalKnownHostsFile for the node, else DefaultGlobalKnownHosts.
	// Tests point it at their own file so as not to read /etc.
	GlobalKnownHosts []string
	// ConfigFile is an OpenSSH client config ("" for none).
	ConfigFile string
	// JumpHost is [user@]host[:port][,...]: it wins over the ssh config's
	// ProxyJump and ProxyCommand. "none" disables both.
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
	// Warnf, if set, receives what the operator should know but that does
	// not stop the run (an ssh config Match block that is ignored, a
	// CertificateFile that cannot be used). Default: Logf.
	Warnf func(format string, a ...any)
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
	if o.Warnf == nil {
		o.Warnf = o.Logf
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
	// The inventory fills in ~/.ssh/known_hosts when ssh.knownHosts is
	// not set; that default must not hide the ssh config's
	// UserKnownHostsFile, nor ~/.ssh/known_hosts2.
	if def := defaultUserKnownHosts(); s.KnownHosts != "" && (inv.IsSet("ssh.knownHosts") || len(def) == 0 || s.KnownHosts != def[0]) {
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
	name         string // node name (for errors)
	host         string
	port         int
	user         string
	identities   []string
	certificates []string // CertificateFile: user certificates to offer
	// knownHosts and globalKnownHosts are the known_hosts files its host
	// key is checked against.
	knownHosts, globalKnownHosts []string
	// proxyCommand is the ProxyCommand (%-tokens expanded) that carries
	// the connection instead of TCP; only used when there are no jumps.
	proxyCommand string
	jumps        []*endpoint // outermost first
}

func (e *endpoint) addr() string { return net.JoinHostPort(e.host, strconv.Itoa(e.port)) }

// key identifies a connection: same user, server and route.
func (e *endpoint) key() string {
	var b strings.Builder
	for _, j := range e.jumps {
		b.WriteString(j.user + "@" + j.addr() + ">")
	}
	if e.proxyCommand != "" {
		b.WriteString("|" + e.proxyCommand + ">")
	}
	b.WriteString(e.user + "@" + e.addr())
	return b.String()
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
	// resolveHost took the config's ProxyCommand. The inventory's jump
	// host (or "none") beats it; between the config's ProxyJump and
	// ProxyCommand, ssh uses whichever it reads first.
	jump := c.opts.JumpHost
	if jump != "" {
		e.proxyCommand = ""
	} else {
		jump = c.cfg.get("ProxyJump", aliases...)
		if pj, pc := c.cfg.entry("ProxyJump", aliases...), c.cfg.entry("ProxyCommand", aliases...); pj != nil && pc != nil && pc.seq < pj.seq {
			jump = ""
		}
	}
	if jump != "" && jump != "none" {
		e.proxyCommand = ""
		for _, spec := range strings.Split(jump, ",") {
			j, err := c.parseJump(strings.TrimSpace(spec))
			if err != nil {
				return nil, fmt.Errorf("jump host %q: %w", spec, err)
			}
			e.jumps = append(e.jumps, j)
		}
		// A hop reached through the one before it uses that hop's
		// connection, not its own ProxyCommand (as ssh -J does).
		for _, j := range e.jumps[1:] {
			j.proxyCommand = ""
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
	tok := e.tokens()
	e.identities = append(e.identities, c.opts.IdentityFiles...)
	for _, f := range c.cfg.getAll("IdentityFile", aliases...) {
		p, err := expandPath("IdentityFile", f, tok)
		if err != nil {
			return nil, err
		}
		e.identities = append(e.identities, p)
	}
	for _, f := range c.cfg.getAll("CertificateFile", aliases...) {
		p, err := expandPath("CertificateFile", f, tok)
		if err != nil {
			return nil, err
		}
		e.certificates = append(e.certificates, p)
	}
	var err error
	e.knownHosts, e.globalKnownHosts = c.opts.KnownHosts, c.opts.GlobalKnownHosts
	if len(e.knownHosts) == 0 {
		if e.knownHosts, err = c.configKnownHosts("UserKnownHostsFile", aliases, tok, c.defaultUserKH); err != nil {
			return nil, err
		}
	}
	if e.globalKnownHosts == nil {
		if e.globalKnownHosts, err = c.configKnownHosts("GlobalKnownHostsFile", aliases, tok, DefaultGlobalKnownHosts); err != nil {
			return nil, err
		}
	}
	if pc := c.cfg.entry("ProxyCommand", aliases...); pc != nil && pc.raw != "none" {
		if e.proxyCommand, err = expandTokens(pc.raw, tok); err != nil {
			return nil, fmt.Errorf("ssh config %s:%d: ProxyCommand: %w", pc.file, pc.line, err)
		}
	}
	return e, nil
}

// configKnownHosts returns the known_hosts files the ssh config's keyword
// names for a host ("none": no file), else the defaults.
func (c *Client) configKnownHosts(keyword string, aliases []string, tok tokens, defaults []string) ([]string, error) {
	e := c.cfg.entry(keyword, aliases...)
	if e == nil || len(e.args) == 0 {
		return defaults, nil
	}
	if len(e.args) == 1 && strings.EqualFold(e.args[0], "none") {
		return []string{}, nil
	}
	var out []string
	for _, a := range e.args {
		p, err := expandPath(keyword, a, tok)
		if err != nil {
			return nil, fmt.Errorf("ssh config %s:%d: %w", e.file, e.line, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// tokens are the values of the %-tokens ssh expands in ProxyCommand and
// in file names, for one endpoint.
type tokens struct{ host, port, user, name string }

func (e *endpoint) tokens() tokens {
	return tokens{host: e.host, port: strconv.Itoa(e.port), user: e.user, name: e.name}
}

func (t tokens) value(c byte) (string, bool) {
	switch c {
	case 'h':
		return t.host, true
	case 'p':
		return t.port, true
	case 'r':
		return t.user, true
	case 'n':
		return t.name, true
	case '%':
		return "%", true
	case 'd':
		home, err := os.UserHomeDir()
		return home, err == nil
	case 'u':
		u, err := user.Current()
		if err != nil {
			return "", false
		}
		return u.Username, true
	}
	return "", false
}

// expandTokens replaces %h, %p, %r, %n, %d, %u and %% as ssh does; any
// other token is an error, as in ssh, rather than a literal.
func expandTokens(s string, tok tokens) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%q ends with a lone %%", s)
		}
		v, ok := tok.value(s[i+1])
		if !ok {
			return "", fmt.Errorf("%q: %%%c is not a token breakglass knows (it expands %%h %%p %%r %%n %%d %%u %%%%)", s, s[i+1])
		}
		b.WriteString(v)
		i++
	}
	return b.String(), nil
}

// expandPath expands ~ and the %-tokens of a file name from the ssh config.
func expandPath(keyword, p string, tok tokens) (string, error) {
	p, err := expandTokens(expandHome(p), tok)
	if err != nil {
		return "", fmt.Errorf("ssh config: %s %w", keyword, err)
	}
	return p, nil
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
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[1:])
		}
	}
	return p
}

// preloadKnownHosts reads, before any node is touched, every known_hosts
// file the options and the ssh config name without per-host tokens, so
// that a broken file stops the run at start rather than at each node.
func (c *Client) preloadKnownHosts() error {
	var paths []string
	paths = append(paths, c.opts.KnownHosts...)
	paths = append(paths, c.opts.GlobalKnownHosts...)
	if len(c.opts.KnownHosts) == 0 && c.cfg.entry("UserKnownHostsFile", catchAll) == nil {
		paths = append(paths, c.defaultUserKH...)
	}
	if c.opts.GlobalKnownHosts == nil && c.cfg.entry("GlobalKnownHostsFile", catchAll) == nil {
		paths = append(paths, DefaultGlobalKnownHosts...)
	}
	for _, kw := range []string{"userknownhostsfile", "globalknownhostsfile"} {
		for _, args := range everyValue(c.cfg.blocks, kw, nil) {
			for _, a := range args {
				if p := expandHome(a); !strings.Contains(p, "%") && !strings.EqualFold(p, "none") {
					paths = append(paths, p)
				}
			}
		}
	}
	return c.hk.load(paths)
}
