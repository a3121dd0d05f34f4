package sshclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/breakglass/breakglass/nodeops"
)

// watchdog closes a connection when the deadline of the current phase
// passes. It works the same on TCP connections and on channels through a
// jump host, which have no SetDeadline.
type watchdog struct {
	mu     sync.Mutex
	closer func() error
	timer  *time.Timer
	phase  nodeops.Phase
	fired  atomic.Value // nodeops.Phase that timed out
	cancel atomic.Bool  // closed because the context ended
	stop   func() bool  // context.AfterFunc stop
}

func newWatchdog(ctx context.Context, closer func() error) *watchdog {
	w := &watchdog{closer: closer}
	w.stop = context.AfterFunc(ctx, func() {
		w.cancel.Store(true)
		w.closer()
	})
	return w
}

// arm starts phase p with deadline d (0: none).
func (w *watchdog) arm(p nodeops.Phase, d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.phase = p
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	if d > 0 {
		w.timer = time.AfterFunc(d, func() {
			w.fired.Store(p)
			w.closer()
		})
	}
}

func (w *watchdog) current() nodeops.Phase {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.phase
}

// timedOut returns the phase whose deadline passed, if any.
func (w *watchdog) timedOut() (nodeops.Phase, bool) {
	p, ok := w.fired.Load().(nodeops.Phase)
	return p, ok
}

// disarm stops the timer and the context watch. It reports false if the
// watchdog already closed the connection.
func (w *watchdog) disarm() bool {
	w.arm(w.current(), 0)
	stopped := w.stop()
	_, fired := w.timedOut()
	return stopped && !fired && !w.cancel.Load()
}

// conn is an authenticated SSH connection.
type conn struct {
	client *ssh.Client
	key    string
	idle   time.Time // when it was last put back
	closed atomic.Bool
	ka     *time.Timer
}

func (c *conn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.ka != nil {
		c.ka.Stop()
	}
	return c.client.Close()
}

// keepalive sends keepalive@openssh.com every interval from a timer (no
// goroutine while idle) and closes the connection after countMax probes
// without an answer.
func (c *conn) startKeepalive(interval time.Duration, countMax int) {
	tick := func() {
		if c.closed.Load() {
			return
		}
		dead := time.AfterFunc(interval*time.Duration(countMax), func() { c.Close() })
		_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
		dead.Stop()
		if err != nil {
			c.Close()
			return
		}
		if !c.closed.Load() {
			c.ka.Reset(interval)
		}
	}
	c.ka = time.AfterFunc(interval, tick)
}

// dialer opens the TCP or channel connection to an endpoint.
type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

func tcpDialer(timeout time.Duration) dialFunc {
	// No TCP keepalive: the SSH keepalive (startKeepalive) already proves
	// the peer alive, end to end and through jump hosts, and leaving TCP's
	// off saves four setsockopt calls per node.
	d := &net.Dialer{Timeout: timeout, KeepAlive: -1}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}
}

// handshake runs the SSH handshake and authentication on nc with the
// phase deadlines, and returns the client.
func (c *Client) handshake(ctx context.Context, e *endpoint, nc net.Conn) (*conn, error) {
	wd := newWatchdog(ctx, nc.Close)
	wd.arm(nodeops.PhaseHandshake, c.opts.HandshakeTimeout)
	addr := e.addr()
	trust, err := c.hk.trust(e)
	if err != nil {
		wd.disarm()
		nc.Close()
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseHostKey, Status: nodeops.StatusRefused, Reason: "known-hosts",
			Err: fmt.Errorf("known_hosts: %w", err), Hint: knownHostsHint}
	}
	var hkErr error
	cfg := &ssh.ClientConfig{
		User:              e.user,
		Auth:              c.auth.methods(e.identities, e.certificates),
		HostKeyAlgorithms: algorithms(trust),
		ClientVersion:     "SSH-2.0-breakglass",
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			if err := c.hk.check(trust, key); err != nil {
				hkErr = err
				return err
			}
			// The key exchange is done: authentication gets its own deadline.
			wd.arm(nodeops.PhaseAuth, c.opts.AuthTimeout)
			return nil
		},
	}
	if len(cfg.Auth) == 0 {
		wd.disarm()
		nc.Close()
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseAuth, Status: nodeops.StatusRefused, Reason: "auth",
			Err:  errors.New("no private key to offer"),
			Hint: "set ssh.identityFiles in the inventory, IdentityFile in the ssh config, or load a key into ssh-agent"}
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	phase := wd.current()
	ok := wd.disarm()
	if err != nil || !ok {
		nc.Close()
		if err == nil {
			sc.Close()
			err = errors.New("closed")
		}
		return nil, c.classifyConnect(ctx, e, phase, wd, hkErr, err)
	}
	cl := &conn{client: ssh.NewClient(sc, chans, reqs), key: e.key()}
	cl.startKeepalive(c.opts.KeepaliveInterval, c.opts.KeepaliveCountMax)
	return cl, nil
}

// connect dials e (through its jump hosts) and authenticates.
func (c *Client) connect(ctx context.Context, e *endpoint) (*conn, error) {
	dial := tcpDialer(c.opts.DialTimeout)
	var release func()
	if len(e.jumps) > 0 {
		j, err := c.jump(ctx, e.name, e.jumps)
		if err != nil {
			return nil, err
		}
		// Cap the handshakes in flight through this jump host.
		select {
		case j.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, c.ctxError(ctx, e, nodeops.PhaseDial)
		}
		release = func() { <-j.sem }
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
			defer cancel()
			nc, err := j.conn.client.DialContext(dctx, "tcp", addr)
			if err != nil && dctx.Err() != nil && ctx.Err() == nil {
				return nil, &net.OpError{Op: "dial", Net: "tcp", Err: timeoutError{}}
			}
			return nc, err
		}
	}
	if release != nil {
		defer release()
	}
	if e.proxyCommand != "" && len(e.jumps) == 0 {
		return c.connectProxy(ctx, e)
	}
	nc, err := dial(ctx, e.addr())
	if err != nil {
		return nil, c.classifyDial(ctx, e, err)
	}
	return c.handshake(ctx, e, c.counted(nc))
}

// connectProxy reaches e through its ProxyCommand. A command that ends
// before the handshake is done (nc that cannot connect, a bastion that
// refuses) is reported with its exit status and what it printed, rather
// than as the bare end of file the handshake saw.
func (c *Client) connectProxy(ctx context.Context, e *endpoint) (*conn, error) {
	pc, err := startProxyCommand(e.proxyCommand)
	if err != nil {
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseDial, Status: nodeops.StatusUnreachable, Reason: "proxy-command",
			Err: err, Hint: "check the ProxyCommand in the ssh config (it is run with /bin/sh -c)"}
	}
	cn, err := c.handshake(ctx, e, c.counted(pc))
	var ne *nodeops.Error
	if err != nil && errors.As(err, &ne) && ne.Phase == nodeops.PhaseHandshake && ne.Reason != "timeout" && ctx.Err() == nil {
		if perr := pc.failed(); perr != nil {
			return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseDial, Status: nodeops.StatusUnreachable, Reason: "proxy-command",
				Err: perr, Hint: "run the ProxyCommand by hand (with %h %p %r filled in) to see why it cannot reach the node"}
		}
	}
	return cn, err
}

// countedConn is a connection the client's gauge counts until it is
// closed. Its reads go through a small bufio.Reader: x/crypto/ssh reads the
// server's version line one byte per Read, which on a raw socket is one
// system call per byte (about 40 per node); bufio serves those from one
// read, and passes the transport's own large reads straight through.
type countedConn struct {
	net.Conn
	r      *bufio.Reader
	closed atomic.Bool
	c      *Client
}

// readAhead is enough for a version line and the start of the key
// exchange; it costs 256 bytes per open connection.
const readAhead = 256

func (c *Client) counted(nc net.Conn) net.Conn {
	n := c.open.Add(1)
	for {
		p := c.peakOpen.Load()
		if n <= p || c.peakOpen.CompareAndSwap(p, n) {
			break
		}
	}
	return &countedConn{Conn: nc, r: bufio.NewReaderSize(nc, readAhead), c: c}
}

// Read is not called concurrently: x/crypto/ssh reads the version, then
// hands the connection to one reading goroutine.
func (cc *countedConn) Read(p []byte) (int, error) { return cc.r.Read(p) }

func (cc *countedConn) Close() error {
	if !cc.closed.Swap(true) {
		cc.c.open.Add(-1)
	}
	return cc.Conn.Close()
}

// jumpConn is a shared connection to a jump host.
type jumpConn struct {
	once sync.Once
	conn *conn
	err  error
	// ready is set once conn and err are: only then may other goroutines
	// read them without going through once.
	ready atomic.Bool
	sem   chan struct{}
}

// dead reports whether j's connection was made and has closed since.
func (j *jumpConn) dead() bool {
	return j.ready.Load() && j.conn != nil && j.conn.closed.Load()
}

// jump returns the connection to the last of chain, each hop reached
// through the one before. Every node shares it; a failed jump connection is
// forgotten so that the next node tries again.
func (c *Client) jump(ctx context.Context, node string, chain []*endpoint) (*jumpConn, error) {
	last := chain[len(chain)-1]
	var key string
	for _, j := range chain {
		key += j.user + "@" + j.addr() + ">"
	}
	c.mu.Lock()
	j := c.jumps[key]
	if j == nil || j.dead() {
		j = &jumpConn{sem: make(chan struct{}, c.opts.JumpHandshakes)}
		c.jumps[key] = j
	}
	c.mu.Unlock()
	j.once.Do(func() {
		hop := *last
		hop.jumps = chain[:len(chain)-1]
		// The jump connection outlives this node's context.
		j.conn, j.err = c.connect(context.WithoutCancel(ctx), &hop)
		if j.err != nil {
			j.err = &nodeops.Error{Node: last.name, Phase: nodeops.PhaseDial, Status: nodeops.StatusUnreachable,
				Reason: "jump-host", Err: j.err, Hint: "every node behind this jump host is unreachable until it answers"}
		}
		j.ready.Store(true)
	})
	if j.err != nil {
		c.mu.Lock()
		if c.jumps[key] == j {
			delete(c.jumps, key)
		}
		c.mu.Unlock()
		return nil, &nodeops.Error{Node: node, Phase: nodeops.PhaseDial, Status: nodeops.StatusUnreachable,
			Reason: "jump-host", Err: j.err}
	}
	return j, nil
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }
