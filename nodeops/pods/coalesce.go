package pods

import (
	"bytes"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// coalesceConn sits between gRPC and the connection to the node's
// containerd, and holds back the writes that the next one always follows,
// so that the two go out as one. Over SSH every write is an SSH packet of
// its own (one system call on the operator's machine, and a read, a
// decryption and a wakeup on the node's sshd); gRPC writes whenever its
// writer goroutine finds its queue empty, which in a unary call falls
// between the request's headers and its message, and after the answer to
// each of the server's pings. A stop over a fresh connection was eleven
// writes, and a GOAWAY at Close; held back, four or five, and none at
// Close (TestConnectStopWrites).
//
// A write is held when it is whole HTTP/2 frames, all of these kinds:
//   - the client preface, which gRPC writes on its own just before its
//     SETTINGS;
//   - a request's HEADERS without END_STREAM: its message follows;
//   - a SETTINGS or PING acknowledgement: owed, not urgent; the next
//     request carries it;
//   - a request's last message while another request has its headers out
//     and its message still to come (the two CRI lists sent at once).
//
// A write with anything else (a message that does not end its request, a
// window update, a reset, a GOAWAY) goes out at once, after what was
// held. What is held is written anyway after holdFor, so that an idle
// connection still answers the server's keepalive pings and a stream that
// sends no message still starts.
type coalesceConn struct {
	net.Conn

	mu    sync.Mutex
	held  []byte
	timer *time.Timer
	err   error // of a held write, returned by the next Write
	// closed is set before the connection is closed, so that no write
	// starts after (gRPC's GOAWAY, on the reader's error).
	closed atomic.Bool
	// open are the streams whose headers went out without END_STREAM:
	// their message is still to come.
	open []uint32
	// skip is what is left of a frame the last write split (gRPC's
	// buffer filled mid-frame); the next write starts with it. lost is
	// set when a write ended inside a frame's header: the frames after
	// cannot be told apart, and nothing is held again.
	skip int
	lost bool
}

// holdFor is how long held writes may wait for the next one: long enough
// for gRPC's goroutines to hand over the next frames on a busy machine,
// short against a network round trip.
var holdFor = 2 * time.Millisecond

func newCoalesceConn(c net.Conn) *coalesceConn {
	cc := &coalesceConn{Conn: c}
	cc.timer = time.AfterFunc(time.Hour, cc.flushHeld)
	cc.timer.Stop()
	return cc
}

func (c *coalesceConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.holdable(p) {
		c.timer.Reset(holdFor)
		c.held = append(c.held, p...)
		return len(p), nil
	}
	if len(c.held) == 0 {
		return c.Conn.Write(p)
	}
	c.timer.Stop()
	c.held = append(c.held, p...)
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	if err != nil {
		c.err = err
		return 0, err
	}
	return len(p), nil
}

// flushHeld writes what is held once holdFor has passed with no other
// write.
func (c *coalesceConn) flushHeld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.held) == 0 || c.err != nil || c.closed.Load() {
		return
	}
	if _, err := c.Conn.Write(c.held); err != nil {
		c.err = err
	}
	c.held = c.held[:0]
}

// Close closes the connection, then drops what is held (acknowledgements
// a closing connection no longer owes). The connection goes first: a write
// blocked on it holds the lock.
func (c *coalesceConn) Close() error {
	c.closed.Store(true)
	err := c.Conn.Close()
	c.mu.Lock()
	c.timer.Stop()
	c.held = nil
	c.mu.Unlock()
	return err
}

// holdable reports whether p, one write of gRPC's, may wait for the next:
// whole frames (after the client preface, if it starts with it), every one
// of them of the kinds coalesceConn holds. It keeps track of the open
// streams.
func (c *coalesceConn) holdable(p []byte) bool {
	rest, ok := bytes.CutPrefix(p, []byte(http2.ClientPreface))
	if ok && len(rest) == 0 {
		return true
	}
	if c.lost || len(rest) == 0 {
		return false
	}
	hold, ended := true, false
	if c.skip > 0 {
		// The rest of a frame begun in a write that went out: this one
		// goes out too. The frames after it are followed all the same.
		n := min(c.skip, len(rest))
		c.skip -= n
		rest = rest[n:]
		hold = false
	}
	for len(rest) > 0 {
		if len(rest) < frameHeaderLen {
			c.lost = true
			return false
		}
		f, err := http2.ReadFrameHeader(bytes.NewReader(rest[:frameHeaderLen]))
		if err != nil {
			c.lost = true
			return false
		}
		if uint32(len(rest)-frameHeaderLen) < f.Length {
			// A frame split across writes: send it on, and know where
			// the next write's frames start.
			c.skip = int(f.Length) - (len(rest) - frameHeaderLen)
			return false
		}
		rest = rest[frameHeaderLen+int(f.Length):]
		c.track(f)
		switch f.Type {
		case http2.FrameHeaders:
			if f.StreamID == 0 || !f.Flags.Has(http2.FlagHeadersEndHeaders) {
				hold = false
			} else if f.Flags.Has(http2.FlagHeadersEndStream) {
				ended = true
			}
		case http2.FrameData:
			if f.Flags.Has(http2.FlagDataEndStream) {
				ended = true
			} else {
				hold = false
			}
		case http2.FrameSettings:
			hold = hold && f.Flags.Has(http2.FlagSettingsAck)
		case http2.FramePing:
			hold = hold && f.Flags.Has(http2.FlagPingAck)
		default:
			hold = false
		}
	}
	// A request that ends here waits for nothing more of ours only if
	// another's headers are out and its message is still to come.
	return hold && (!ended || len(c.open) > 0)
}

// track follows which streams have headers out and their end still to
// come.
func (c *coalesceConn) track(f http2.FrameHeader) {
	if f.StreamID == 0 {
		return
	}
	switch {
	case f.Type == http2.FrameHeaders && !f.Flags.Has(http2.FlagHeadersEndStream):
		if len(c.open) >= maxTracked {
			// Streams gRPC ended some other way than this sees: forget
			// them (the worst a stale one does is hold a request's end
			// for holdFor).
			c.open = c.open[:0]
		}
		if !slices.Contains(c.open, f.StreamID) {
			c.open = append(c.open, f.StreamID)
		}
	case f.Type == http2.FrameRSTStream, f.Flags.Has(http2.FlagDataEndStream) && (f.Type == http2.FrameData || f.Type == http2.FrameHeaders):
		if i := slices.Index(c.open, f.StreamID); i >= 0 {
			c.open = slices.Delete(c.open, i, i+1)
		}
	}
}

// maxTracked bounds the open streams coalesceConn follows; the CRI calls
// of one node are a few at a time.
const maxTracked = 128

// frameHeaderLen is the length of an HTTP/2 frame header (RFC 9113, 4.1).
const frameHeaderLen = 9
