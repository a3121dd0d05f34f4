// Package sshclient is breakglass's SSH client: a nodeops.Runner on
// golang.org/x/crypto/ssh that verifies host keys as OpenSSH does (the
// user's and the global known_hosts files, @cert-authority and @revoked
// lines), authenticates with identity files, user certificates and
// ssh-agent, reads the user's OpenSSH client config, goes through jump
// hosts or a ProxyCommand, runs commands under `sudo -n` when the user is
// not root, gives every phase of a connection its own deadline, and, when
// asked to, keeps idle connections for later steps of the same run.
package sshclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/breakglass/breakglass/nodeops"
)

// Client runs commands on nodes over SSH. It is safe for concurrent use;
// Close it at the end of a run to close the idle connections.
type Client struct {
	opts Options
	hk   *hostKeys
	auth *auth
	cfg  *sshConfig
	// defaultUserKH are ~/.ssh/known_hosts and known_hosts2, worked out
	// once rather than per node.
	defaultUserKH []string

	dials atomic.Int64
	// open and peakOpen count the connections open now and at most, from
	// the TCP connect (or the channel through a jump host) to the close.
	open, peakOpen atomic.Int64

	mu     sync.Mutex
	idle   map[string][]*conn
	jumps  map[string]*jumpConn
	closed bool
}

var _ nodeops.Runner = (*Client)(nil)

// New returns a client. It reads the ssh config, the known_hosts files it
// can name without a node (the options', the config's, the defaults) and
// the private keys it can use now, so that mistakes show before any node
// is touched.
func New(opts Options) (*Client, error) {
	opts.defaults()
	switch opts.Sudo {
	case "auto", "always", "never":
	default:
		return nil, fmt.Errorf("sudo %q: must be auto, always or never", opts.Sudo)
	}
	cfg, err := loadSSHConfig(opts.ConfigFile)
	if err != nil {
		return nil, err
	}
	for _, w := range cfg.warnings {
		opts.Warnf("%s", w)
	}
	a, err := newAuth(opts.AgentSocket, opts.Logf, opts.Warnf)
	if err != nil {
		return nil, err
	}
	if len(opts.IdentityFiles) == 0 && len(a.agentS) == 0 {
		opts.IdentityFiles = defaultIdentities()
	}
	c := &Client{opts: opts, hk: newHostKeys(opts.AcceptNewHostKeys), auth: a, cfg: cfg, defaultUserKH: defaultUserKnownHosts(),
		idle: map[string][]*conn{}, jumps: map[string]*jumpConn{}}
	if err := c.preloadKnownHosts(); err != nil {
		return nil, fmt.Errorf("known_hosts: %w\nhint: %s", err, knownHostsHint)
	}
	return c, nil
}

// Close closes every idle connection and jump host connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for k, list := range c.idle {
		for _, cn := range list {
			cn.Close()
		}
		delete(c.idle, k)
	}
	for k, j := range c.jumps {
		if j.ready.Load() && j.conn != nil {
			j.conn.Close()
		}
		delete(c.jumps, k)
	}
	return nil
}

// Run runs cmd on t. A non-zero exit is an error (*nodeops.Error wrapping
// *nodeops.ExitError) that still comes with the output.
func (c *Client) Run(ctx context.Context, t nodeops.Target, cmd nodeops.Command) (nodeops.Output, error) {
	e, err := c.resolve(t)
	if err != nil {
		return nodeops.Output{}, &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseDial, Status: nodeops.StatusFailed, Reason: "config", Err: err}
	}
	if ctx.Err() != nil {
		return nodeops.Output{}, c.ctxError(ctx, e, nodeops.PhaseDial)
	}
	// A reused connection may have died while idle: then open a new one,
	// which is safe because nothing ran on the dead one.
	for attempt := 0; ; attempt++ {
		var cn *conn
		var reused bool
		if c.opts.ReuseConnections {
			cn, reused = c.get(e.key())
		}
		if cn == nil {
			c.dials.Add(1)
			if cn, err = c.connect(ctx, e); err != nil {
				return nodeops.Output{}, err
			}
		}
		sess, err := c.openSession(ctx, e, cn)
		if err != nil {
			cn.Close()
			if reused && attempt == 0 && ctx.Err() == nil {
				continue
			}
			return nodeops.Output{}, err
		}
		out, err, keep := c.runSession(ctx, e, cn, sess, cmd)
		if keep && c.opts.ReuseConnections {
			c.put(cn)
		} else {
			cn.Close()
		}
		return out, err
	}
}

// get returns an idle connection for key, if one is fresh enough.
func (c *Client) get(key string) (*conn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.idle[key]
	for len(list) > 0 {
		cn := list[len(list)-1]
		list = list[:len(list)-1]
		if cn.closed.Load() || time.Since(cn.idle) > c.opts.MaxIdle {
			go cn.Close()
			continue
		}
		c.idle[key] = list
		return cn, true
	}
	delete(c.idle, key)
	return nil, false
}

// maxIdlePerKey bounds idle connections kept for one node.
const maxIdlePerKey = 2

func (c *Client) put(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || cn.closed.Load() || len(c.idle[cn.key]) >= maxIdlePerKey {
		go cn.Close()
		return
	}
	cn.idle = time.Now()
	c.idle[cn.key] = append(c.idle[cn.key], cn)
}

// openSession opens a session channel within SessionTimeout.
func (c *Client) openSession(ctx context.Context, e *endpoint, cn *conn) (*ssh.Session, error) {
	wd := newWatchdog(ctx, cn.Close)
	wd.arm(nodeops.PhaseSession, c.opts.SessionTimeout)
	sess, err := cn.client.NewSession()
	if ok := wd.disarm(); !ok || err != nil {
		if sess != nil {
			sess.Close()
		}
		if p, fired := wd.timedOut(); fired {
			return nil, timeoutErr(e, p, c.opts.SessionTimeout)
		}
		if wd.cancel.Load() {
			return nil, c.ctxError(ctx, e, nodeops.PhaseSession)
		}
		var oc *ssh.OpenChannelError
		retry := errors.As(err, &oc) // the server said no: nothing ran
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseSession, Status: nodeops.StatusUnreachable,
			Reason: "session", Retryable: retry, Err: err}
	}
	return sess, nil
}

// runSession runs cmd in sess and waits for it. keep reports whether the
// connection is fit for reuse.
func (c *Client) runSession(ctx context.Context, e *endpoint, cn *conn, sess *ssh.Session, cmd nodeops.Command) (out nodeops.Output, err error, keep bool) {
	defer sess.Close()
	stdout := &tailBuffer{limit: c.opts.OutputLimit}
	stderr := &tailBuffer{limit: c.opts.OutputLimit}
	sess.Stdout, sess.Stderr = stdout, stderr
	if cmd.Stdin != nil {
		sess.Stdin = bytes.NewReader(cmd.Stdin)
	}
	line, sudo := c.commandLine(e, cmd)
	collect := func() nodeops.Output {
		return nodeops.Output{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Truncated: stdout.dropped || stderr.dropped}
	}
	if err := sess.Start(line); err != nil {
		return collect(), &nodeops.Error{Node: e.name, Phase: nodeops.PhaseSession, Status: nodeops.StatusUnreachable,
			Reason: "session", Err: fmt.Errorf("start command: %w", err)}, false
	}
	// From here the command may be running: nothing is retried.
	wd := newWatchdog(ctx, func() error {
		sess.Signal(ssh.SIGKILL)
		return cn.Close()
	})
	wd.arm(nodeops.PhaseCommand, c.opts.CommandTimeout)
	werr := sess.Wait()
	clean := wd.disarm()
	out = collect()
	if p, fired := wd.timedOut(); fired {
		return out, timeoutErr(e, p, c.opts.CommandTimeout), false
	}
	if !clean {
		return out, c.ctxError(ctx, e, nodeops.PhaseCommand), false
	}
	var ee *ssh.ExitError
	var em *ssh.ExitMissingError
	switch {
	case werr == nil:
		return out, nil, true
	case errors.As(werr, &ee) && ee.Signal() != "":
		out.ExitCode = -1
		return out, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "signal",
			Err: &nodeops.ExitError{Code: -1, Signal: ee.Signal()}}, true
	case errors.As(werr, &ee):
		out.ExitCode = ee.ExitStatus()
		if sudo && out.ExitCode == 1 && sudoRefused(out.Stderr) {
			return out, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusRefused, Reason: "sudo",
				Err:  fmt.Errorf("sudo -n refused for %s: %s", e.user, firstLine(out.Stderr)),
				Hint: fmt.Sprintf("give %s passwordless sudo on the node (NOPASSWD), or connect as root (ssh.user: root)", e.user)}, true
		}
		return out, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "exit",
			Err: &nodeops.ExitError{Code: out.ExitCode}}, true
	case errors.As(werr, &em):
		out.ExitCode = -1
		return out, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "connection-lost",
			Err:  errors.New("connection lost before the command reported an exit status"),
			Hint: "the node or its sshd may have gone down mid-command; check what the command did before running it again"}, false
	}
	out.ExitCode = -1
	return out, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "connection-lost",
		Err: werr, Hint: "the node or its sshd may have gone down mid-command; check what the command did before running it again"}, false
}

// commandLine applies the sudo policy.
func (c *Client) commandLine(e *endpoint, cmd nodeops.Command) (string, bool) {
	if cmd.NoSudo || c.opts.Sudo == "never" || (c.opts.Sudo == "auto" && e.user == "root") {
		return cmd.Line, false
	}
	return "sudo -n -- sh -c " + nodeops.ShellQuote(cmd.Line), true
}

// UsesSudo reports whether commands on t run under sudo -n.
func (c *Client) UsesSudo(t nodeops.Target) bool {
	e, err := c.resolve(t)
	if err != nil {
		return false
	}
	_, sudo := c.commandLine(e, nodeops.Command{})
	return sudo
}

// User returns the user t is reached as.
func (c *Client) User(t nodeops.Target) string {
	e, err := c.resolve(t)
	if err != nil {
		return ""
	}
	return e.user
}

func sudoRefused(stderr []byte) bool {
	s := string(stderr)
	return strings.Contains(s, "sudo: a password is required") ||
		strings.Contains(s, "sudo: a terminal is required") ||
		strings.Contains(s, "is not in the sudoers file") ||
		strings.Contains(s, "may not run sudo")
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// tailBuffer keeps the last limit bytes written to it.
type tailBuffer struct {
	limit   int
	buf     []byte
	dropped bool
	// small holds short outputs without another allocation.
	small [256]byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.limit {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.limit:]...)
		t.dropped = true
	}
	return len(p), nil
}

// ReadFrom reads r to its end into the buffer. x/crypto/ssh copies a
// session's stdout and stderr with io.Copy, which without it allocates 32 KiB
// for each: 64 KiB per node for commands that mostly print nothing.
func (t *tailBuffer) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	if cap(t.buf) == 0 {
		t.buf = t.small[:0]
	}
	for {
		if len(t.buf) == cap(t.buf) {
			// Grow gradually: most commands print little.
			t.buf = slices.Grow(t.buf, max(512, min(cap(t.buf), t.limit)))
		}
		m, err := r.Read(t.buf[len(t.buf):cap(t.buf)])
		t.buf = t.buf[:len(t.buf)+m]
		n += int64(m)
		if len(t.buf) > 2*t.limit {
			t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.limit:]...)
			t.dropped = true
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// Bytes returns the tail. Short outputs are copied out of the inline
// array, so that a result does not keep the whole buffer alive.
func (t *tailBuffer) Bytes() []byte {
	switch {
	case len(t.buf) > t.limit:
		t.dropped = true
		return t.buf[len(t.buf)-t.limit:]
	case len(t.buf) == 0:
		return nil
	case cap(t.buf) == len(t.small):
		return bytes.Clone(t.buf)
	}
	return t.buf
}

// Dials returns how many connections the client opened to nodes (jump hosts
// excluded): with reuse, a second step on the same nodes adds none.
func (c *Client) Dials() int64 { return c.dials.Load() }

// OpenConnections returns how many connections are open now, and the most
// that were open at once, handshakes in progress and jump hosts included.
func (c *Client) OpenConnections() (now, peak int64) { return c.open.Load(), c.peakOpen.Load() }

// JumpConnections returns how many jump host connections are open.
func (c *Client) JumpConnections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, j := range c.jumps {
		if j.ready.Load() && j.conn != nil && !j.conn.closed.Load() {
			n++
		}
	}
	return n
}
