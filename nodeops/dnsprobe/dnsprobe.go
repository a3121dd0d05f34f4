// Package dnsprobe asks a DNS server one question over TCP, on a connection
// the caller opened: through a node's SSH connection (a direct-tcpip
// channel), so that the question leaves from the node itself, as its pods'
// questions do, with no tool needed on the node. It is how breakglass tells
// whether cluster DNS still answers on each node while the API server it
// depends on is down.
package dnsprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Answer is what one server said to one question.
type Answer struct {
	// Rcode is the response code: NOERROR, SERVFAIL, NXDOMAIN, REFUSED...
	Rcode string `json:"rcode"`
	// Addresses are the A and AAAA records of the answer.
	Addresses []string `json:"addresses,omitempty"`
	// Took is from the question's first byte to the answer's last.
	Took time.Duration `json:"-"`
}

// OK reports whether the answer is a NOERROR that has want among its
// addresses (any address when want is empty).
func (a Answer) OK(want string) bool {
	if a.Rcode != "NOERROR" {
		return false
	}
	if want == "" {
		return len(a.Addresses) > 0
	}
	for _, ad := range a.Addresses {
		if ad == want {
			return true
		}
	}
	return false
}

// rcodeNames are the response codes' usual names (RFC 1035, 2136).
var rcodeNames = map[dnsmessage.RCode]string{
	dnsmessage.RCodeSuccess:        "NOERROR",
	dnsmessage.RCodeFormatError:    "FORMERR",
	dnsmessage.RCodeServerFailure:  "SERVFAIL",
	dnsmessage.RCodeNameError:      "NXDOMAIN",
	dnsmessage.RCodeNotImplemented: "NOTIMP",
	dnsmessage.RCodeRefused:        "REFUSED",
}

// RcodeName is the usual name of a response code (RCODE17 for one with
// none).
func RcodeName(c dnsmessage.RCode) string {
	if n, ok := rcodeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("RCODE%d", c)
}

// Query asks the server at the other end of conn for the A records of
// name, over DNS's TCP framing (RFC 1035 4.2.2: a two-byte length before
// each message), and returns its answer. ctx's deadline bounds the
// exchange; conn is not closed.
func Query(ctx context.Context, conn net.Conn, name string) (Answer, error) {
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	qname, err := dnsmessage.NewName(name)
	if err != nil {
		return Answer{}, fmt.Errorf("name %q: %w", name, err)
	}
	id := uint16(rand.Uint32())
	msg := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: qname, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	q, err := msg.AppendPack(make([]byte, 2, 514))
	if err != nil {
		return Answer{}, err
	}
	binary.BigEndian.PutUint16(q, uint16(len(q)-2))

	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
		defer conn.SetDeadline(time.Time{})
	}
	// A cancelled context unblocks the read by moving the deadline.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	start := time.Now()
	if _, err := conn.Write(q); err != nil {
		return Answer{}, ctxErr(ctx, fmt.Errorf("send: %w", err))
	}
	var hdr [2]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return Answer{}, ctxErr(ctx, fmt.Errorf("read: %w", err))
	}
	buf := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return Answer{}, ctxErr(ctx, fmt.Errorf("read: %w", err))
	}
	took := time.Since(start)
	var p dnsmessage.Parser
	h, err := p.Start(buf)
	if err != nil {
		return Answer{}, fmt.Errorf("answer: %w", err)
	}
	if h.ID != id || !h.Response {
		return Answer{}, errors.New("answer: not a response to the question asked")
	}
	a := Answer{Rcode: RcodeName(h.RCode), Took: took}
	if err := p.SkipAllQuestions(); err != nil {
		return a, fmt.Errorf("answer: %w", err)
	}
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return a, fmt.Errorf("answer: %w", err)
		}
		switch rh.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return a, fmt.Errorf("answer: %w", err)
			}
			a.Addresses = append(a.Addresses, netip.AddrFrom4(r.A).String())
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return a, fmt.Errorf("answer: %w", err)
			}
			a.Addresses = append(a.Addresses, netip.AddrFrom16(r.AAAA).String())
		default:
			if err := p.SkipAnswer(); err != nil {
				return a, fmt.Errorf("answer: %w", err)
			}
		}
	}
	return a, nil
}

// ctxErr prefers the context's error (the deadline or a cancel) to the
// I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	// The connection's deadline is the context's: it may fire a moment
	// before the context says so.
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}
