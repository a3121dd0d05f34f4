package sshclient

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// proxyConn is a connection carried by a ProxyCommand: the command's
// stdout is what the server sends, its stdin what we send, as with ssh.
type proxyConn struct {
	line string
	cmd  *exec.Cmd
	r    *os.File // our end of its stdout
	w    *os.File // our end of its stdin
	// stderr keeps the end of what the command printed, for errors.
	stderr *lockedTail
	done   chan struct{} // closed once the command has exited
	// waitErr is cmd.Wait's error; read only after done is closed.
	waitErr error
	// gone is set when the command closed its end: its stdout reached end
	// of file, or writing to its stdin broke the pipe.
	gone atomic.Bool
	once sync.Once
}

// startProxyCommand runs line with /bin/sh, as ssh does ("exec" so that the
// shell does not stay between us and the command). The command gets its
// own process group, so that closing the connection ends whatever it
// started.
func startProxyCommand(line string) (*proxyConn, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	p := &proxyConn{line: line, r: outR, w: inW, stderr: &lockedTail{t: tailBuffer{limit: 2048}}, done: make(chan struct{})}
	p.cmd = exec.Command("/bin/sh", "-c", "exec "+line)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = inR, outW, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = p.cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		outR.Close()
		inW.Close()
		return nil, fmt.Errorf("ProxyCommand %q: %w", line, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proxyConn) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if errors.Is(err, io.EOF) {
		p.gone.Store(true)
	}
	return n, err
}

func (p *proxyConn) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if errors.Is(err, syscall.EPIPE) {
		p.gone.Store(true)
	}
	return n, err
}

// Close closes the pipes and ends the command: SIGHUP to its group, as ssh
// sends, then SIGKILL if it is still there a second later.
func (p *proxyConn) Close() error {
	p.once.Do(func() {
		p.w.Close()
		p.r.Close()
		if p.gone.Load() {
			// The command closed its end first: it is exiting on its own,
			// and its exit status says why (failed returns it).
			select {
			case <-p.done:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		select {
		case <-p.done:
			return
		default:
		}
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGHUP)
		select {
		case <-p.done:
		case <-time.After(time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return nil
}

// failed describes how the command ended when it ended on its own before
// the connection was done with it (nil otherwise).
func (p *proxyConn) failed() error {
	if !p.gone.Load() {
		return nil
	}
	select {
	case <-p.done:
	case <-time.After(500 * time.Millisecond):
		return nil
	}
	status := "exit status 0"
	if p.waitErr != nil {
		status = p.waitErr.Error()
	}
	msg := strings.TrimSpace(string(p.stderr.Bytes()))
	if msg == "" {
		msg = "(it printed nothing on stderr)"
	}
	return fmt.Errorf("ProxyCommand %q ended (%s) before the SSH connection was up: %s", p.line, status, msg)
}

func (p *proxyConn) LocalAddr() net.Addr  { return proxyAddr("local") }
func (p *proxyConn) RemoteAddr() net.Addr { return proxyAddr(p.line) }

func (p *proxyConn) SetDeadline(t time.Time) error {
	return errors.Join(p.r.SetReadDeadline(t), p.w.SetWriteDeadline(t))
}
func (p *proxyConn) SetReadDeadline(t time.Time) error  { return p.r.SetReadDeadline(t) }
func (p *proxyConn) SetWriteDeadline(t time.Time) error { return p.w.SetWriteDeadline(t) }

type proxyAddr string

func (proxyAddr) Network() string  { return "proxycommand" }
func (a proxyAddr) String() string { return string(a) }

// lockedTail is a tailBuffer the command's stderr copier writes to while
// an error may read it.
type lockedTail struct {
	mu sync.Mutex
	t  tailBuffer
}

func (l *lockedTail) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t.Write(b)
}

func (l *lockedTail) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.t.Bytes()...)
}
