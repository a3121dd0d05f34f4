package simssh

import (
	"errors"
	"io"
	"net"
	"testing"

	"golang.org/x/crypto/ssh"
)

func dial(t *testing.T, s *Server) (*ssh.Client, string) {
	t.Helper()
	l, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	addr := l.Addr().String()
	// Normal accepts any public key; the test is no place for host-key
	// checks beyond the fixed key.
	c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(NewHostKey())},
		HostKeyCallback: ssh.FixedHostKey(s.HostKey())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, addr
}

// A forwarded unix socket reaches the hook with the path the client asked
// for, as a connection whose local address is the node's; its data goes
// both ways and end of file comes through.
func TestStreamLocalHook(t *testing.T) {
	s := New(Normal, nil)
	type opened struct {
		path  string
		local string
	}
	got := make(chan opened, 1)
	s.StreamLocal = func(path string, c net.Conn) {
		got <- opened{path, c.LocalAddr().String()}
		defer c.Close()
		io.Copy(c, c) // echo until the client's end of file
	}
	c, addr := dial(t, s)
	nc, err := c.Dial("unix", "/run/containerd/containerd.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	nc.(interface{ CloseWrite() error }).CloseWrite()
	b, err := io.ReadAll(nc)
	if err != nil || string(b) != "ping" {
		t.Fatalf("echo: %q, %v", b, err)
	}
	o := <-got
	if o.path != "/run/containerd/containerd.sock" || o.local != addr {
		t.Fatalf("hook got path %q, local address %s; want /run/containerd/containerd.sock, %s", o.path, o.local, addr)
	}
	// Sessions work as before.
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Run("true"); err != nil {
		t.Fatal(err)
	}
}

// Without a hook the channel is refused as OpenSSH refuses it under
// AllowStreamLocalForwarding no.
func TestStreamLocalRefused(t *testing.T) {
	c, _ := dial(t, New(Normal, nil))
	_, err := c.Dial("unix", "/run/containerd/containerd.sock")
	var oc *ssh.OpenChannelError
	if !errors.As(err, &oc) || oc.Reason != ssh.Prohibited {
		t.Fatalf("err = %v, want an open refused as administratively prohibited", err)
	}
}
