package sshclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/breakglass/breakglass/nodeops"
)

// UnixVia says how a node's unix socket is reached.
type UnixVia string

// The ways to reach a unix socket on a node.
const (
	UnixAuto    UnixVia = "auto"    // forward; if the node refuses the forward, the sudo relay
	UnixForward UnixVia = "forward" // a direct-streamlocal@openssh.com channel
	UnixSudo    UnixVia = "sudo"    // an exec session under `sudo -n` (no sudo when the user is root) that relays the socket
)

// UnixConn is a connection to a unix socket on a node. Close closes the SSH
// connection it owns too.
//
// Its deadline setters do nothing and return nil: neither an SSH channel
// nor a session's pipes have deadlines, and gRPC, which the connection is
// made for, tolerates that. A dead node is found by the SSH keepalive,
// which closes the connection; to give up earlier, Close it.
type UnixConn struct {
	net.Conn
	Via UnixVia // the path that carried it: UnixForward or UnixSudo
}

// CloseWrite ends what is written: the program behind the socket reads end
// of file, and what it still sends can be read.
func (c *UnixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("close write: not supported")
}

// DialUnix opens a byte stream to the unix socket at path on t, such as
// containerd's /run/containerd/containerd.sock, over an SSH connection of
// its own: it is made with the host-key checks, authentication, jump hosts
// and phase deadlines of Run, and is never shared with Run's idle
// connections. ctx bounds the dial only; once DialUnix returns, the
// connection lasts until it is closed (Client.Close does not close it).
//
// UnixForward asks sshd for a direct-streamlocal@openssh.com channel: the
// socket is opened by sshd as the SSH user, so it needs
// AllowStreamLocalForwarding and a socket the user may open. UnixSudo runs
// a relay (socat, else python3, else perl) under the client's sudo policy
// instead, which reaches root-only sockets. UnixAuto tries the forward and,
// when the node refuses the channel, relays on the same connection.
//
// Errors are *nodeops.Error. A refused forward has reason "unix-forward"
// (phase session). A relay that cannot start is in phase command, as a
// command that Run runs would be: reason "sudo" (refused, with Run's hint),
// "no-relay" (no relay tool) or "unix-connect" (the socket cannot be
// opened). Dial, handshake and authentication errors are Run's.
func (c *Client) DialUnix(ctx context.Context, t nodeops.Target, path string, via UnixVia) (*UnixConn, error) {
	switch via {
	case UnixAuto, UnixForward, UnixSudo:
	default:
		return nil, &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseDial, Status: nodeops.StatusFailed, Reason: "config",
			Err: fmt.Errorf("unix socket via %q: must be auto, forward or sudo", via)}
	}
	e, err := c.resolve(t)
	if err != nil {
		return nil, &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseDial, Status: nodeops.StatusFailed, Reason: "config", Err: err}
	}
	if ctx.Err() != nil {
		return nil, c.ctxError(ctx, e, nodeops.PhaseDial)
	}
	c.dials.Add(1)
	cn, err := c.connect(ctx, e)
	if err != nil {
		return nil, err
	}
	var fwdErr *nodeops.Error
	if via != UnixSudo {
		nc, err := c.forwardUnix(ctx, e, cn, path)
		if err == nil {
			return &UnixConn{Conn: nc, Via: UnixForward}, nil
		}
		// Only a refused channel falls back: after a timeout or a lost
		// connection the relay would fail the same way.
		if via == UnixForward || !errors.As(err, &fwdErr) || fwdErr.Reason != "unix-forward" || ctx.Err() != nil {
			cn.Close()
			return nil, err
		}
		c.opts.Logf("node %s: %v; relaying %s under sudo instead", e.name, fwdErr.Err, path)
	}
	nc, err := c.relayUnix(ctx, e, cn, path)
	if err != nil {
		cn.Close()
		var ne *nodeops.Error
		if fwdErr != nil && errors.As(err, &ne) {
			ne.Err = fmt.Errorf("%w (tried after the forward was refused: %v)", ne.Err, fwdErr.Err)
		}
		return nil, err
	}
	return &UnixConn{Conn: nc, Via: UnixSudo}, nil
}

// forwardUnix opens a direct-streamlocal channel to path within
// SessionTimeout.
func (c *Client) forwardUnix(ctx context.Context, e *endpoint, cn *conn, path string) (net.Conn, error) {
	nc, err, fail := c.dialChannel(ctx, e, cn, "unix", path)
	if fail != nil {
		return nil, fail
	}
	if err != nil {
		var oc *ssh.OpenChannelError
		if !errors.As(err, &oc) {
			return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseSession, Status: nodeops.StatusUnreachable,
				Reason: "session", Err: fmt.Errorf("forward %s: %w", path, err)}
		}
		// OpenSSH answers "connect failed" both when it cannot open the
		// socket and when AllowStreamLocalForwarding forbids it, so the
		// hint names both.
		out := &nodeops.Error{Node: e.name, Phase: nodeops.PhaseSession, Status: nodeops.StatusFailed, Reason: "unix-forward",
			Err: fmt.Errorf("forward to %s refused: %w", path, err),
			Hint: fmt.Sprintf("sshd opens the socket as %s: the socket must exist and be writable by %s, and the node's sshd_config must "+
				"allow AllowStreamLocalForwarding; or use --via sudo to relay it through a command on the node", e.user, e.user)}
		if oc.Reason == ssh.Prohibited {
			out.Status = nodeops.StatusRefused
			out.Hint = "the node's sshd forbids unix socket forwarding: set AllowStreamLocalForwarding yes in its sshd_config, " +
				"or use --via sudo to relay the socket instead"
		}
		return nil, out
	}
	return &forwardConn{Conn: nc, cn: cn, raddr: unixAddr{node: e.name, path: path}}, nil
}

// forwardConn is a direct-streamlocal channel that owns its SSH connection.
type forwardConn struct {
	net.Conn
	cn    *conn
	raddr unixAddr
	once  sync.Once
}

// Close closes the SSH connection, and the channel with it: a close of
// the channel first would be one more packet (and its answer) for a
// connection about to end. It reports no error: the connection may
// already be gone, which is what closing wants anyway.
func (f *forwardConn) Close() error {
	f.once.Do(func() { f.cn.Close() })
	return nil
}

// CloseWrite sends end of file on the channel (the channel supports it;
// x/crypto's net.Conn wrapper hides it).
func (f *forwardConn) CloseWrite() error {
	if cw, ok := f.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("close write: not supported")
}

func (f *forwardConn) LocalAddr() net.Addr  { return localUnixAddr }
func (f *forwardConn) RemoteAddr() net.Addr { return f.raddr }

// x/crypto's channel conn returns an error from every deadline setter;
// see UnixConn for why ignoring them is fine.
func (f *forwardConn) SetDeadline(time.Time) error      { return nil }
func (f *forwardConn) SetReadDeadline(time.Time) error  { return nil }
func (f *forwardConn) SetWriteDeadline(time.Time) error { return nil }

// unixAddr names a unix socket on a node: "node1:/run/containerd/containerd.sock".
type unixAddr struct{ node, path string }

func (a unixAddr) Network() string { return "unix" }

func (a unixAddr) String() string {
	if a.node == "" {
		return a.path
	}
	return a.node + ":" + a.path
}

// localUnixAddr is the local end: unnamed, as an unbound unix socket's.
var localUnixAddr = unixAddr{path: "@"}

// relayTools are the relays tried on the node, in order (names other than
// these three are skipped); tests change it to exercise each.
var relayTools = []string{"socat", "python3", "perl"}

// relayMarker is what a relay prints on stdout once the socket is open.
const relayMarker = "OK\n"

// The relays print their failures with this prefix, so that DialUnix can
// tell them from sudo's.
const (
	relayFailPrefix  = "breakglass-relay: "
	relayConnectFail = relayFailPrefix + "connect "
	relayNoTool      = relayFailPrefix + "no "
)

// relayPython connects, prints the marker, then copies stdin to the socket
// in a thread and the socket to stdout in the main one. End of stdin shuts
// down the socket's write side; end of the socket ends the relay. sshd
// does not signal a command without a terminal when its session closes:
// the relay sees end of stdin, and ends when the service closes its side
// in turn (containerd's gRPC server does), or when it next writes.
const relayPython = `import os, socket, sys, threading
p = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(p)
except OSError as e:
    sys.stderr.write("` + relayConnectFail + `%s: %s\n" % (p, e.strerror or e))
    sys.exit(1)
os.write(1, b"OK\n")
def up():
    try:
        while True:
            b = os.read(0, 65536)
            if not b:
                break
            s.sendall(b)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=up, daemon=True).start()
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        v = memoryview(b)
        while v:
            v = v[os.write(1, v):]
except OSError:
    os._exit(1)
os._exit(0)
`

// relayPerl is the same relay in one select loop. The socket and stdout
// are non-blocking and each direction keeps what it could not write yet,
// so that a peer that only reads when its own writes go through (an echo
// server) cannot deadlock it.
const relayPerl = `use strict; use IO::Socket::UNIX; use IO::Handle;
my $p = shift;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $p)
  or do { print STDERR "` + relayConnectFail + `$p: $!\n"; exit 1 };
$SIG{PIPE} = "IGNORE";
syswrite(STDOUT, "OK\n") or exit 1;
$s->blocking(0); STDOUT->blocking(0);
my ($in, $sf, $out) = (fileno(STDIN), fileno($s), fileno(STDOUT));
my ($up, $down, $ineof, $seof, $shut) = ("", "", 0, 0, 0);
for (;;) {
  if ($ineof && !length($up) && !$shut) { shutdown($s, 1); $shut = 1 }
  exit 0 if $seof && !length($down);
  my ($r, $w) = ("", "");
  vec($r, $in, 1) = 1 if !$ineof && length($up) < 65536;
  vec($r, $sf, 1) = 1 if !$seof && length($down) < 65536;
  vec($w, $sf, 1) = 1 if length($up);
  vec($w, $out, 1) = 1 if length($down);
  if (select($r, $w, undef, undef) < 0) { next if $!{EINTR}; exit 1 }
  if (vec($r, $in, 1)) { sysread(STDIN, $up, 65536, length($up)) or $ineof = 1 }
  if (vec($r, $sf, 1)) {
    my $n = sysread($s, $down, 65536, length($down));
    $seof = 1 if defined($n) ? $n == 0 : !$!{EAGAIN};
  }
  if (vec($w, $sf, 1)) {
    my $n = syswrite($s, $up);
    if (defined $n) { substr($up, 0, $n, "") } elsif (!$!{EAGAIN}) { ($up, $ineof) = ("", 1) }
  }
  if (vec($w, $out, 1)) {
    my $n = syswrite(STDOUT, $down);
    if (defined $n) { substr($down, 0, $n, "") } elsif (!$!{EAGAIN}) { exit 1 }
  }
}
`

// relayScript is the shell script that relays path with the first of
// relayTools the node has. socat cannot say when it has connected, so the
// script checks the socket first and prints the marker itself; a socket
// nobody listens on then shows as a connection that ends at once.
func relayScript(path string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "p=%s\n", nodeops.ShellQuote(path))
	var tried []string
	for _, tool := range relayTools {
		var run string
		switch tool {
		case "socat":
			run = fmt.Sprintf("[ -S \"$p\" ] || { printf '%s%%s: no socket there\\n' \"$p\" >&2; exit 1; }\n", relayConnectFail) +
				fmt.Sprintf("[ -w \"$p\" ] || { printf '%s%%s: permission denied\\n' \"$p\" >&2; exit 1; }\n", relayConnectFail) +
				// -t: after end of stdin, wait for the socket's end rather
				// than socat's default half second.
				"printf 'OK\\n' && exec socat -t 86400 - " + nodeops.ShellQuote("UNIX-CONNECT:"+socatEscape(path)) + "\n"
		case "python3":
			run = "exec python3 -c " + nodeops.ShellQuote(relayPython) + " \"$p\"\n"
		case "perl":
			run = "exec perl -e " + nodeops.ShellQuote(relayPerl) + " \"$p\"\n"
		default:
			continue
		}
		tried = append(tried, tool)
		fmt.Fprintf(&b, "if command -v %s >/dev/null 2>&1; then\n%sfi\n", tool, run)
	}
	what := "relay tool"
	if n := len(tried); n > 0 {
		what = tried[n-1]
		if n > 1 {
			what = strings.Join(tried[:n-1], ", ") + " or " + what
		}
	}
	fmt.Fprintf(&b, "printf '%s%s on the node to relay %%s\\n' \"$p\" >&2\nexit 127\n", relayNoTool, what)
	return b.String()
}

// socatEscape escapes path for a socat address, where quotes, commas,
// colons and more are syntax: a backslash makes an ASCII character itself.
func socatEscape(path string) string {
	var b strings.Builder
	for _, r := range path {
		if r < 0x80 && !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("/._-", r)) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// relayUnix starts the relay in a new session on cn and waits for its
// marker, within SessionTimeout.
func (c *Client) relayUnix(ctx context.Context, e *endpoint, cn *conn, path string) (net.Conn, error) {
	sess, err := c.openSession(ctx, e, cn)
	if err != nil {
		return nil, err
	}
	stdin, err1 := sess.StdinPipe()
	stdout, err2 := sess.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		sess.Close()
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseSession, Status: nodeops.StatusUnreachable, Reason: "session", Err: err}
	}
	// stderr is only read on failure, after Wait; while the relay runs it
	// keeps what the relay says last.
	stderr := &tailBuffer{limit: 4 << 10}
	sess.Stderr = stderr
	line, sudo := c.commandLine(e, nodeops.Command{Line: relayScript(path)})
	if err := sess.Start(line); err != nil {
		sess.Close()
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseSession, Status: nodeops.StatusUnreachable,
			Reason: "session", Err: fmt.Errorf("start relay: %w", err)}
	}
	wd := newWatchdog(ctx, cn.Close)
	wd.arm(nodeops.PhaseSession, c.opts.SessionTimeout)
	var got [len(relayMarker)]byte
	n, rerr := io.ReadFull(stdout, got[:])
	if rerr == nil && string(got[:]) == relayMarker {
		if wd.disarm() {
			return &relayConn{stdin: stdin, stdout: stdout, sess: sess, cn: cn, raddr: unixAddr{node: e.name, path: path}}, nil
		}
	} else if rerr == nil {
		// Something else wrote to stdout first: the stream is not clean.
		cn.Close()
	}
	// Stdout ended before the marker: the relay's exit status and stderr
	// say why. The watchdog still bounds the wait.
	werr := sess.Wait()
	clean := wd.disarm()
	sess.Close()
	if p, fired := wd.timedOut(); fired {
		return nil, timeoutErr(e, p, c.opts.SessionTimeout)
	}
	if !clean {
		return nil, c.ctxError(ctx, e, nodeops.PhaseSession)
	}
	if rerr == nil {
		return nil, &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "relay",
			Err:  fmt.Errorf("relay for %s printed %q before its marker", path, got[:n]),
			Hint: "something on the node writes to stdout before the command runs (a shell start-up file?)"}
	}
	return nil, relayFailed(e, path, sudo, werr, stderr.Bytes())
}

// relayFailed explains a relay that ended before it connected.
func relayFailed(e *endpoint, path string, sudo bool, werr error, stderr []byte) error {
	var ee *ssh.ExitError
	code := 0
	switch {
	case errors.As(werr, &ee):
		code = ee.ExitStatus()
	case werr != nil:
		return &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "connection-lost",
			Err: fmt.Errorf("relay for %s: %w", path, werr)}
	}
	msg := firstLine(stderr)
	if i := bytes.Index(stderr, []byte(relayFailPrefix)); i >= 0 {
		msg = firstLine(stderr[i:])
	}
	switch {
	case sudo && code == 1 && sudoRefused(stderr):
		return &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusRefused, Reason: "sudo",
			Err:  fmt.Errorf("sudo -n refused for %s: %s", e.user, firstLine(stderr)),
			Hint: fmt.Sprintf("give %s passwordless sudo on the node (NOPASSWD), or connect as root (ssh.user: root)", e.user)}
	case code == 127 && strings.HasPrefix(msg, relayNoTool):
		return &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "no-relay",
			Err:  errors.New(strings.TrimPrefix(msg, relayFailPrefix)),
			Hint: "install socat, python3 or perl on the node, or allow AllowStreamLocalForwarding in its sshd and use --via forward"}
	case strings.HasPrefix(msg, relayConnectFail):
		return &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "unix-connect",
			Err:  fmt.Errorf("relay: %s", strings.TrimPrefix(msg, relayFailPrefix)),
			Hint: fmt.Sprintf("check that the service that listens on %s is running on the node", path)}
	}
	if msg == "" {
		msg = "no message"
	}
	return &nodeops.Error{Node: e.name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "relay",
		Err: fmt.Errorf("relay for %s ended (exit %d) before connecting: %s", path, code, msg)}
}

// relayConn is a relay session seen as a connection: reads are the
// relay's stdout, writes its stdin. It owns the session and the SSH
// connection.
type relayConn struct {
	stdin  io.WriteCloser
	stdout io.Reader
	sess   *ssh.Session
	cn     *conn
	raddr  unixAddr
	closed atomic.Bool
	once   sync.Once
}

func (r *relayConn) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, net.ErrClosed
	}
	return r.stdout.Read(p)
}

func (r *relayConn) Write(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, net.ErrClosed
	}
	return r.stdin.Write(p)
}

// CloseWrite closes the relay's stdin: it shuts down the socket's write
// side on the node.
func (r *relayConn) CloseWrite() error { return r.stdin.Close() }

// Close closes stdin, the session and the SSH connection. The relay on the
// node sees end of stdin and ends with the socket (see relayPython).
func (r *relayConn) Close() error {
	r.once.Do(func() {
		r.closed.Store(true)
		r.stdin.Close()
		r.sess.Close()
		r.cn.Close()
	})
	return nil
}

func (r *relayConn) LocalAddr() net.Addr  { return localUnixAddr }
func (r *relayConn) RemoteAddr() net.Addr { return r.raddr }

// A session's pipes have no deadlines; see UnixConn.
func (r *relayConn) SetDeadline(time.Time) error      { return nil }
func (r *relayConn) SetReadDeadline(time.Time) error  { return nil }
func (r *relayConn) SetWriteDeadline(time.Time) error { return nil }
