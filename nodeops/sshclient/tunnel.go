package sshclient

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/breakglass/breakglass/nodeops"
)

// DialThrough returns a dial function that opens TCP connections from node t,
// as direct-tcpip channels over one SSH connection to it: how breakglass
// reaches etcd on a control-plane node's loopback address. The connection is
// made on first use, with the client's host-key checks and phase deadlines,
// shared by every later dial, and made again if it dies.
func (c *Client) DialThrough(t nodeops.Target) func(ctx context.Context, addr string) (net.Conn, error) {
	var mu sync.Mutex
	var shared *conn
	return func(ctx context.Context, addr string) (net.Conn, error) {
		e, err := c.resolve(t)
		if err != nil {
			return nil, &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseDial, Status: nodeops.StatusFailed, Reason: "config", Err: err}
		}
		mu.Lock()
		if shared == nil || shared.closed.Load() {
			c.dials.Add(1)
			if shared, err = c.connect(ctx, e); err != nil {
				shared = nil
				mu.Unlock()
				return nil, err
			}
		}
		cn := shared
		mu.Unlock()
		return c.dialTCP(ctx, e, cn, addr)
	}
}

// Tunnel is one SSH connection to a node that TCP connections are opened
// from (direct-tcpip channels), until it is closed.
type Tunnel struct {
	c  *Client
	e  *endpoint
	cn *conn
}

// OpenTunnel connects to t, with the client's host-key checks and phase
// deadlines; the caller closes the tunnel. Errors are *nodeops.Error, as
// Run's.
func (c *Client) OpenTunnel(ctx context.Context, t nodeops.Target) (*Tunnel, error) {
	e, err := c.resolve(t)
	if err != nil {
		return nil, &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseDial, Status: nodeops.StatusFailed, Reason: "config", Err: err}
	}
	c.dials.Add(1)
	cn, err := c.connect(ctx, e)
	if err != nil {
		return nil, err
	}
	return &Tunnel{c: c, e: e, cn: cn}, nil
}

// Dial opens a TCP connection to addr from the node (sshd connects, in the
// node's own network namespace, through its own routes and NAT rules).
func (tu *Tunnel) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return tu.c.dialTCP(ctx, tu.e, tu.cn, addr)
}

// Close closes the SSH connection and every connection opened through it.
func (tu *Tunnel) Close() error { return tu.cn.Close() }

// dialTCP opens a direct-tcpip channel on cn (see dialChannel).
func (c *Client) dialTCP(ctx context.Context, e *endpoint, cn *conn, addr string) (net.Conn, error) {
	nc, err, fail := c.dialChannel(ctx, e, cn, "tcp", addr)
	if fail != nil {
		return nil, fail
	}
	if err != nil {
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseSession, Status: nodeops.StatusUnreachable,
			Reason: "tunnel", Err: err}
	}
	return nc, nil
}

// dialChannel opens a direct-tcpip ("tcp") or direct-streamlocal ("unix")
// channel on cn within SessionTimeout; a stall closes the connection. A
// stall or a cancel is fail, a *nodeops.Error; the server's own refusal
// (or a lost connection) is err, for the caller to explain.
func (c *Client) dialChannel(ctx context.Context, e *endpoint, cn *conn, network, addr string) (nc net.Conn, err, fail error) {
	wd := newWatchdog(ctx, cn.Close)
	wd.arm(nodeops.PhaseSession, c.opts.SessionTimeout)
	// Dial rather than DialContext: the watchdog bounds it, and closing the
	// connection on a stall also ends the goroutine DialContext would leave.
	nc, err = cn.client.Dial(network, addr)
	if ok := wd.disarm(); ok && err == nil {
		return nc, nil, nil
	}
	if nc != nil {
		nc.Close()
	}
	if p, fired := wd.timedOut(); fired {
		return nil, err, timeoutErr(e, p, c.opts.SessionTimeout)
	}
	if wd.cancel.Load() {
		return nil, err, c.ctxError(ctx, e, nodeops.PhaseSession)
	}
	if err == nil {
		err = errors.New("channel closed while it opened")
	}
	return nil, err, nil
}
