package sshclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/breakglass/breakglass/nodeops"
)

func timeoutErr(e *endpoint, p nodeops.Phase, d time.Duration) error {
	status := nodeops.StatusUnreachable
	hint := "the node accepts connections but does not answer: it may be overloaded, or sshd is stuck"
	if p == nodeops.PhaseCommand {
		status = nodeops.StatusFailed
		hint = "the command was killed; it may have done part of its work"
	}
	return &nodeops.Error{Node: e.name, Phase: p, Status: status, Reason: "timeout",
		Err: fmt.Errorf("no progress within %s", d), Hint: hint}
}

// ctxError reports the end of the context in phase p.
func (c *Client) ctxError(ctx context.Context, e *endpoint, p nodeops.Phase) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		status := nodeops.StatusUnreachable
		if p == nodeops.PhaseCommand {
			status = nodeops.StatusFailed
		}
		return &nodeops.Error{Node: e.name, Phase: p, Status: status, Reason: "timeout",
			Err: errors.New("per-node timeout expired"), Hint: "raise --timeout if the node is just slow"}
	}
	return &nodeops.Error{Node: e.name, Phase: p, Status: nodeops.StatusCancelled, Reason: "cancelled", Err: context.Canceled}
}

// classifyDial turns a failed TCP dial into a node error.
func (c *Client) classifyDial(ctx context.Context, e *endpoint, err error) error {
	if ctx.Err() != nil {
		return c.ctxError(ctx, e, nodeops.PhaseDial)
	}
	var ne *nodeops.Error
	if errors.As(err, &ne) {
		return err
	}
	out := &nodeops.Error{Node: e.name, Phase: nodeops.PhaseDial, Status: nodeops.StatusUnreachable, Err: err}
	var nerr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		out.Reason, out.Retryable = "connection-refused", true
		out.Hint = fmt.Sprintf("nothing listens on %s: is sshd running, and is the port right?", e.addr())
	case errors.Is(err, syscall.ECONNRESET):
		out.Reason, out.Retryable = "reset", true
	case errors.As(err, &nerr) && nerr.Timeout():
		out.Reason = "timeout"
		out.Err = fmt.Errorf("connect to %s: no answer within %s", e.addr(), c.opts.DialTimeout)
		out.Hint = "the node is down, or a firewall drops SSH"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		out.Reason = "no-route"
	default:
		out.Reason = "dial"
		if strings.Contains(err.Error(), "no such host") {
			out.Reason = "dns"
		}
	}
	return out
}

// classifyConnect turns a failed handshake or authentication into a node
// error. phase is the phase the watchdog was in when it returned.
func (c *Client) classifyConnect(ctx context.Context, e *endpoint, phase nodeops.Phase, wd *watchdog, hkErr, err error) error {
	if p, fired := wd.timedOut(); fired {
		d := c.opts.HandshakeTimeout
		if p == nodeops.PhaseAuth {
			d = c.opts.AuthTimeout
		}
		return timeoutErr(e, p, d)
	}
	if wd.cancel.Load() || ctx.Err() != nil {
		return c.ctxError(ctx, e, phase)
	}
	var hke *HostKeyError
	if errors.As(hkErr, &hke) {
		return &nodeops.Error{Node: e.name, Phase: nodeops.PhaseHostKey, Status: nodeops.StatusRefused,
			Reason: hke.Reason(), Err: hke, Hint: hke.Hint()}
	}
	if hkErr != nil {
		return &nodeops.Error{Node: e.name, Phase: nodeops.PhaseHostKey, Status: nodeops.StatusRefused, Reason: "host-key", Err: hkErr}
	}
	out := &nodeops.Error{Node: e.name, Phase: phase, Status: nodeops.StatusUnreachable, Err: err}
	switch {
	case strings.Contains(err.Error(), "unable to authenticate"):
		out.Phase, out.Status, out.Reason = nodeops.PhaseAuth, nodeops.StatusRefused, "auth"
		out.Err = fmt.Errorf("%s was refused: %w", e.user, err)
		out.Hint = fmt.Sprintf("check that one of your keys is in ~%s/.ssh/authorized_keys on the node, or set ssh.user / ssh.identityFiles", e.user)
	case phase == nodeops.PhaseHandshake && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
		// sshd's MaxStartups drops connections before the key exchange:
		// nothing ran, so another try is safe.
		out.Reason, out.Retryable = "reset", true
		out.Hint = "sshd closed the connection before the key exchange (MaxStartups?); lower --concurrency"
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		out.Reason = "reset"
	default:
		out.Reason = "handshake"
	}
	return out
}
