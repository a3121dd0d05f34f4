package simssh

import (
	"net"
	"time"

	"golang.org/x/crypto/ssh"
)

// StreamLocalChannel is the channel type of OpenSSH's unix socket
// forwarding (its PROTOCOL file, section 2.4): what `ssh -L port:/path`
// and sshclient.DialUnix open.
const StreamLocalChannel = "direct-streamlocal@openssh.com"

// streamLocalOpen is the payload of a direct-streamlocal@openssh.com
// channel open: the socket path, then two reserved fields.
type streamLocalOpen struct {
	SocketPath string
	Reserved0  string
	Reserved1  uint32
}

// openStreamLocal answers a direct-streamlocal channel: with no
// Server.StreamLocal hook it refuses it as administratively prohibited,
// which is what OpenSSH answers under AllowStreamLocalForwarding no;
// otherwise it accepts it and hands it to the hook, in a goroutine of its
// own.
func (s *Server) openStreamLocal(sc *ssh.ServerConn, nc ssh.NewChannel) {
	hook := s.StreamLocal
	if hook == nil {
		nc.Reject(ssh.Prohibited, "unix socket forwarding is disabled")
		return
	}
	var m streamLocalOpen
	if err := ssh.Unmarshal(nc.ExtraData(), &m); err != nil {
		nc.Reject(ssh.ConnectionFailed, "bad direct-streamlocal payload")
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	go hook(m.SocketPath, &channelConn{Channel: ch, laddr: sc.LocalAddr(), raddr: sc.RemoteAddr()})
}

// channelConn is an accepted channel seen as a net.Conn. Its local address
// is the node's (the address the client connected to), so that a server
// behind many simulated nodes can tell them apart; CloseWrite (end of
// file to the client) comes with the channel.
type channelConn struct {
	ssh.Channel
	laddr, raddr net.Addr
}

func (c *channelConn) LocalAddr() net.Addr  { return c.laddr }
func (c *channelConn) RemoteAddr() net.Addr { return c.raddr }

// A channel has no deadlines. The setters succeed and do nothing, as
// sshclient's forwarded connections do on the client side: gRPC, which
// these connections are for, sets one around its handshake and otherwise
// relies on the connection being closed.
func (c *channelConn) SetDeadline(time.Time) error      { return nil }
func (c *channelConn) SetReadDeadline(time.Time) error  { return nil }
func (c *channelConn) SetWriteDeadline(time.Time) error { return nil }
