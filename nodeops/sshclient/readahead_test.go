package sshclient

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// scriptConn returns its chunks one per Read, then err.
type scriptConn struct {
	net.Conn
	chunks [][]byte
	err    error
	reads  int
}

func (s *scriptConn) Read(p []byte) (int, error) {
	s.reads++
	if len(s.chunks) == 0 {
		return 0, s.err
	}
	n := copy(p, s.chunks[0])
	s.chunks[0] = s.chunks[0][n:]
	if len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
	}
	return n, nil
}

func TestReadAheadServesByteReadsFromOneRead(t *testing.T) {
	version := "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
	kexinit := bytes.Repeat([]byte{0x14}, 1000)
	sc := &scriptConn{chunks: [][]byte{append([]byte(version), kexinit...)}, err: io.EOF}
	c := &Client{}
	cc := c.counted(sc).(*countedConn)

	// The version line, a byte at a time, as x/crypto/ssh reads it.
	var got []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(got, []byte("\n")) {
		n, err := cc.Read(b)
		if err != nil || n != 1 {
			t.Fatalf("byte read: n=%d err=%v", n, err)
		}
		got = append(got, b[0])
	}
	if string(got) != version {
		t.Fatalf("version = %q, want %q", got, version)
	}
	if sc.reads != 1 {
		t.Errorf("the version line took %d reads of the socket, want 1", sc.reads)
	}
	// Then the transport's large reads: first what is left of the
	// read-ahead, then straight from the socket.
	rest, err := io.ReadAll(io.LimitReader(cc, int64(len(kexinit))))
	if err != nil || !bytes.Equal(rest, kexinit) {
		t.Fatalf("rest: %d bytes, err %v; want the %d bytes after the version", len(rest), err, len(kexinit))
	}
	big := make([]byte, 4096)
	if _, err := cc.Read(big); err != io.EOF {
		t.Errorf("read at the end = %v, want EOF", err)
	}
	if c.open.Load() != 1 {
		t.Errorf("open gauge = %d, want 1", c.open.Load())
	}
	cc.Close()
	cc.Close()
	if c.open.Load() != 0 {
		t.Errorf("open gauge after two closes = %d, want 0", c.open.Load())
	}
}

func TestReadAheadReportsErrorAfterItsData(t *testing.T) {
	reset := errors.New("connection reset by peer")
	sc := &errAfterData{data: []byte("SSH-2.0-x\r\n"), err: reset}
	cc := (&Client{}).counted(sc)
	var got []byte
	b := make([]byte, 1)
	for {
		n, err := cc.Read(b)
		got = append(got, b[:n]...)
		if err != nil {
			if !errors.Is(err, reset) {
				t.Fatalf("error = %v, want %v", err, reset)
			}
			break
		}
	}
	if string(got) != "SSH-2.0-x\r\n" {
		t.Fatalf("data before the error = %q", got)
	}
}

// errAfterData returns its data and an error from the same Read.
type errAfterData struct {
	net.Conn
	data []byte
	err  error
	done bool
}

func (e *errAfterData) Read(p []byte) (int, error) {
	if e.done {
		return 0, e.err
	}
	e.done = true
	return copy(p, e.data), e.err
}

func (e *errAfterData) Close() error { return nil }

func (s *scriptConn) Close() error { return nil }
