// Package simssh runs small SSH servers on x/crypto/ssh that behave like a
// node, or misbehave on purpose: a tarpit that never speaks, a server that
// stalls after the key exchange, one that never answers a session open.
// Tests and the scale benchmark use it; it is not a real sshd (see
// sshdtest for that).
package simssh

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Mode is how a server behaves.
type Mode int

const (
	// Normal accepts any public key and answers every exec with exit 0.
	Normal Mode = iota
	// Tarpit accepts TCP connections and never sends a byte.
	Tarpit
	// StallAuth finishes the key exchange, then never answers authentication.
	StallAuth
	// StallSession authenticates, then never answers a session open.
	StallSession
	// Hang runs commands that never finish.
	Hang
	// NoKeepalive runs commands like Normal but never answers a global
	// request (keepalive@openssh.com): a peer that is gone while its TCP
	// connection is not.
	NoKeepalive
)

// Server serves one or more listeners in one mode.
type Server struct {
	Mode Mode
	// WriteDelay is added before every write to a connection (latency).
	WriteDelay time.Duration
	// ExitStatus is what Normal exec requests exit with.
	ExitStatus uint32
	// StreamLocal, if set, receives every direct-streamlocal@openssh.com
	// channel (a forwarded unix socket) with the socket path the client
	// asked for; it runs in a goroutine of its own and owns c. When nil,
	// such channels are refused as administratively prohibited.
	StreamLocal func(path string, c net.Conn)

	cfg *ssh.ServerConfig
	key ssh.Signer

	mu    sync.Mutex
	ls    []net.Listener
	conns map[net.Conn]struct{}
	quit  chan struct{}
	wg    sync.WaitGroup
}

// NewHostKey returns a fresh ed25519 host key.
func NewHostKey() ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		panic(err)
	}
	return s
}

// New returns a server with host key hostKey (a fresh one if nil).
func New(mode Mode, hostKey ssh.Signer) *Server {
	if hostKey == nil {
		hostKey = NewHostKey()
	}
	s := &Server{Mode: mode, key: hostKey, conns: map[net.Conn]struct{}{}, quit: make(chan struct{})}
	s.cfg = &ssh.ServerConfig{
		PublicKeyCallback: func(c ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if s.Mode == StallAuth {
				<-s.quit
			}
			return nil, nil
		},
	}
	s.cfg.AddHostKey(hostKey)
	return s
}

// HostKey returns the server's public host key.
func (s *Server) HostKey() ssh.PublicKey { return s.key.PublicKey() }

// Listen listens on addr (host:port) and serves it.
func (s *Server) Listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s.Serve(l)
	return l, nil
}

// Serve serves l in the background.
func (s *Server) Serve(l net.Listener) {
	s.mu.Lock()
	s.ls = append(s.ls, l)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.handle(c)
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
		}
	}()
}

// Close stops every listener and connection and waits for them.
func (s *Server) Close() {
	s.mu.Lock()
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	for _, l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

type slowConn struct {
	net.Conn
	d time.Duration
}

func (c slowConn) Write(p []byte) (int, error) {
	time.Sleep(c.d)
	return c.Conn.Write(p)
}

func (s *Server) handle(c net.Conn) {
	if s.Mode == Tarpit {
		select {
		case <-s.quit:
		case <-waitClosed(c):
		}
		return
	}
	if s.WriteDelay > 0 {
		c = slowConn{c, s.WriteDelay}
	}
	sc, chans, reqs, err := ssh.NewServerConn(c, s.cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	if s.Mode == NoKeepalive {
		go func() {
			for range reqs { // read, never answered
			}
		}()
	} else {
		go ssh.DiscardRequests(reqs)
	}
	for nc := range chans {
		if s.Mode == StallSession {
			continue // never answered
		}
		if nc.ChannelType() == StreamLocalChannel {
			s.openStreamLocal(sc, nc)
			continue
		}
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "no")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go s.session(ch, creqs)
	}
}

func (s *Server) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for r := range reqs {
		switch r.Type {
		case "exec":
			r.Reply(true, nil)
			if s.Mode == Hang {
				go ssh.DiscardRequests(reqs)
				<-s.quit
				return
			}
			var st [4]byte
			binary.BigEndian.PutUint32(st[:], s.ExitStatus)
			ch.SendRequest("exit-status", false, st[:])
			return
		default:
			r.Reply(false, nil)
		}
	}
}

// waitClosed returns a channel closed when the peer closes c.
func waitClosed(c net.Conn) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		var b [1]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				close(done)
				return
			}
		}
	}()
	return done
}
