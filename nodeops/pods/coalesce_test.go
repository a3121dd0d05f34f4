package pods

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// frames builds HTTP/2 frames with x/net's framer.
func frames(t *testing.T, write func(*http2.Framer) error) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := write(http2.NewFramer(&b, nil)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestHoldable(t *testing.T) {
	headers := func(stream uint32, end bool) func(*http2.Framer) error {
		return func(f *http2.Framer) error {
			return f.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: []byte{0x83}, EndHeaders: true, EndStream: end})
		}
	}
	data := func(stream uint32, end bool) func(*http2.Framer) error {
		return func(f *http2.Framer) error { return f.WriteData(stream, end, []byte{0, 0, 0, 0, 0}) }
	}
	settings := frames(t, func(f *http2.Framer) error {
		return f.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	})
	for _, c := range []struct {
		name  string
		open  []uint32 // streams whose message is still to come
		write []byte
		want  bool
	}{
		{"the client preface alone", nil, []byte(http2.ClientPreface), true},
		{"the preface with SETTINGS", nil, append([]byte(http2.ClientPreface), settings...), false},
		{"SETTINGS", nil, settings, false},
		{"a SETTINGS acknowledgement", nil, frames(t, func(f *http2.Framer) error { return f.WriteSettingsAck() }), true},
		{"a PING acknowledgement", nil, frames(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{1}) }), true},
		{"a PING", nil, frames(t, func(f *http2.Framer) error { return f.WritePing(false, [8]byte{1}) }), false},
		{"a request's headers", nil, frames(t, headers(1, false)), true},
		{"headers that end the stream", nil, frames(t, headers(1, true)), false},
		{"a request's last message", nil, frames(t, data(1, true)), false},
		{"headers, then the message", nil, append(frames(t, headers(1, false)), frames(t, data(1, true))...), false},
		{"a last message while another request's is to come", []uint32{3}, frames(t, data(1, true)), true},
		{"a message that does not end its stream", nil, frames(t, data(1, false)), false},
		{"a last message, then an acknowledgement", nil, append(frames(t, data(1, true)), frames(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{1}) })...), false},
		{"an acknowledgement, then a request's headers", nil, append(frames(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{1}) }), frames(t, headers(3, false))...), true},
		{"headers that end the stream while another's message is to come", []uint32{3}, frames(t, headers(1, true)), true},
		{"a window update", nil, frames(t, func(f *http2.Framer) error { return f.WriteWindowUpdate(0, 1<<16) }), false},
		{"a frame split across writes", nil, append(frames(t, headers(1, false)), frames(t, data(1, true))[:12]...), false},
		{"a partial frame header", nil, frames(t, headers(1, false))[:5], false},
		{"nothing", nil, nil, false},
	} {
		cc := &coalesceConn{open: append([]uint32(nil), c.open...)}
		if got := cc.holdable(c.write); got != c.want {
			t.Errorf("%s: holdable = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestHoldableTracksStreams: a stream is open from its headers to the
// frame that ends it, or its reset.
func TestHoldableTracksStreams(t *testing.T) {
	cc := &coalesceConn{}
	w := func(write func(*http2.Framer) error) bool { return cc.holdable(frames(t, write)) }
	w(func(f *http2.Framer) error {
		return f.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x83}, EndHeaders: true})
	})
	w(func(f *http2.Framer) error {
		return f.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: []byte{0x83}, EndHeaders: true})
	})
	if got := w(func(f *http2.Framer) error { return f.WriteData(1, true, nil) }); !got {
		t.Errorf("stream 1's end while stream 3 is open: not held")
	}
	if got := w(func(f *http2.Framer) error { return f.WriteRSTStream(3, http2.ErrCodeCancel) }); got {
		t.Errorf("a reset: held")
	}
	if len(cc.open) != 0 {
		t.Errorf("open streams after both ended: %v", cc.open)
	}
}

// TestHoldableAcrossSplitFrames: a frame split across writes is sent on,
// and the frames after its end are still told apart; a write that ends
// inside a frame's header stops all holding.
func TestHoldableAcrossSplitFrames(t *testing.T) {
	big := frames(t, func(f *http2.Framer) error { return f.WriteData(1, false, make([]byte, 100)) })
	ack := frames(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{1}) })
	cc := &coalesceConn{}
	if cc.holdable(big[:50]) {
		t.Error("the first part of a split frame: held")
	}
	if cc.holdable(append(append([]byte(nil), big[50:]...), ack...)) {
		t.Error("the rest of a split frame, then an acknowledgement: held")
	}
	if !cc.holdable(ack) {
		t.Error("an acknowledgement after the split frame ended: not held")
	}
	if cc.holdable(ack[:4]) || cc.holdable(ack) {
		t.Error("after a write that ended inside a frame header: held")
	}
}

// pipePeer reads what reaches the other end of a pipe, a write at a time.
type pipePeer struct {
	mu     sync.Mutex
	writes [][]byte
	done   chan struct{}
}

func newPipe(t *testing.T) (*coalesceConn, *pipePeer) {
	a, b := net.Pipe()
	p := &pipePeer{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		buf := make([]byte, 64<<10)
		for {
			n, err := b.Read(buf)
			if n > 0 {
				p.mu.Lock()
				p.writes = append(p.writes, append([]byte(nil), buf[:n]...))
				p.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { a.Close(); b.Close() })
	return newCoalesceConn(a), p
}

func (p *pipePeer) got() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.writes...)
}

// TestCoalesceConnWritesHeldAfterHoldFor: an acknowledgement that no
// other write follows still reaches the peer, on its own.
func TestCoalesceConnWritesHeldAfterHoldFor(t *testing.T) {
	c, peer := newPipe(t)
	ack := frames(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{7}) })
	if n, err := c.Write(ack); n != len(ack) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(peer.got()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the held acknowledgement never reached the peer")
		}
		time.Sleep(time.Millisecond)
	}
	if got := peer.got(); len(got) != 1 || !bytes.Equal(got[0], ack) {
		t.Errorf("the peer got %q, want the acknowledgement", got)
	}
}

// TestCoalesceConnJoinsAndDrops: what is held goes out with the next
// write, in order; what is held at Close is dropped.
func TestCoalesceConnJoinsAndDrops(t *testing.T) {
	defer func(d time.Duration) { holdFor = d }(holdFor)
	holdFor = time.Hour
	c, peer := newPipe(t)
	preface := []byte(http2.ClientPreface)
	settings := frames(t, func(f *http2.Framer) error { return f.WriteSettings() })
	c.Write(preface)
	c.Write(settings)
	ack := frames(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{7}) })
	c.Write(ack)
	c.Close()
	<-peer.done
	got := peer.got()
	if len(got) != 1 || !bytes.Equal(got[0], append(preface, settings...)) {
		t.Errorf("the peer got %q, want the preface and the settings in one write, and not the acknowledgement held at Close", got)
	}
	if _, err := c.Write(settings); err == nil {
		t.Error("Write after Close did not fail")
	}
}

// countConn counts the writes that reach the connection under it.
type countConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, append([]byte(nil), p...))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestConnectStopWrites: the stop path over a real gRPC server, counting
// the writes that reach the node. Without the coalescing it was eleven
// (the preface alone, the request headers apart from their messages,
// every ping's answer alone, and a GOAWAY at Close); with it, one per
// round trip and one for the preface and settings, and nothing at Close.
func TestConnectStopWrites(t *testing.T) {
	defer func(d time.Duration) { holdFor = d }(holdFor)
	holdFor = time.Hour // nothing goes out on the timer: the count is the coalescing's
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, &criStub{})
	go srv.Serve(l)
	defer srv.Stop()

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var cc *countConn
	n, err := Connect(ctx, "node1", func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			return nil, err
		}
		cc = &countConn{Conn: c}
		return cc, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p, ok, err := n.Current(ctx, "u1")
	if err != nil || !ok {
		// A write held with nothing after it would leave the call
		// waiting: what went out says which.
		cc.mu.Lock()
		for _, w := range cc.writes {
			t.Log(frameNames(w))
		}
		cc.mu.Unlock()
		t.Fatalf("Current: %v, %v", ok, err)
	}
	if _, err := n.Stop(ctx, p, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	n.Close()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	// The preface and settings; the two lists (one write, or two if gRPC
	// wrote the first list's message before the second's headers); the
	// container's stop; the sandbox's.
	if len(cc.writes) < 4 || len(cc.writes) > 5 {
		for _, w := range cc.writes {
			t.Log(frameNames(w))
		}
		t.Errorf("%d writes reached the node, want 4 or 5", len(cc.writes))
	}
	if !bytes.HasPrefix(cc.writes[0], []byte(http2.ClientPreface)) || len(cc.writes[0]) == len(http2.ClientPreface) {
		t.Errorf("the first write is %q, want the preface with the settings", cc.writes[0])
	}
	for _, w := range cc.writes {
		if (&coalesceConn{}).holdable(w) {
			t.Errorf("a write of only what is held went out: %s", frameNames(w))
		}
		if strings.Contains(frameNames(w), "GOAWAY") {
			t.Errorf("a GOAWAY went out at Close: %s", frameNames(w))
		}
	}
}

// frameNames describes one write's frames, for a failure's log.
func frameNames(w []byte) string {
	var b strings.Builder
	if rest, ok := bytes.CutPrefix(w, []byte(http2.ClientPreface)); ok {
		b.WriteString("PREFACE ")
		w = rest
	}
	fr := http2.NewFramer(io.Discard, bytes.NewReader(w))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return b.String()
		}
		fmt.Fprintf(&b, "%v(stream %d, flags %v) ", f.Header().Type, f.Header().StreamID, f.Header().Flags)
	}
}
