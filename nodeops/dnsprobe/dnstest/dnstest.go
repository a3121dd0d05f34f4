// Package dnstest is a DNS server over TCP on loopback for tests: it
// answers every A question for one name with one address, and every other
// question with a response code, as CoreDNS does for a cluster name it
// does not know (NXDOMAIN) or while it has not synced with the API server
// (SERVFAIL).
package dnstest

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Server is what the server answers.
type Server struct {
	// Name (with its final dot) is answered with Address, unless Rcode
	// is set, which answers every question with that code.
	Name    string
	Address string
	Rcode   dnsmessage.RCode
	// Stall reads the question and never answers.
	Stall bool
}

// Start serves s on 127.0.0.1 until the test ends and returns its address.
func Start(t testing.TB, s Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return ln.Addr().String()
}

func (s Server) serve(c net.Conn) {
	defer c.Close()
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		if s.Stall {
			io.Copy(io.Discard, c)
			return
		}
		var m dnsmessage.Message
		if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
			return
		}
		m.Header.Response = true
		q0 := m.Questions[0]
		switch {
		case s.Rcode != dnsmessage.RCodeSuccess:
			m.Header.RCode = s.Rcode
		case q0.Name.String() == s.Name && q0.Type == dnsmessage.TypeA:
			a, err := netip.ParseAddr(s.Address)
			if err != nil || !a.Is4() {
				m.Header.RCode = dnsmessage.RCodeServerFailure
				break
			}
			m.Answers = []dnsmessage.Resource{{
				Header: dnsmessage.ResourceHeader{Name: q0.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5},
				Body:   &dnsmessage.AResource{A: a.As4()},
			}}
		default:
			m.Header.RCode = dnsmessage.RCodeNameError
		}
		b, err := m.AppendPack(make([]byte, 2, 512))
		if err != nil {
			return
		}
		binary.BigEndian.PutUint16(b, uint16(len(b)-2))
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}
