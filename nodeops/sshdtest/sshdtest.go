// Package sshdtest starts real OpenSSH sshd servers on loopback addresses
// for tests and benchmarks: generated host keys, an authorized client key
// and a known_hosts file that lists every server; on request, host
// certificates signed by a test CA and a trusted user CA (both made with
// ssh-keygen, as an operator makes them).
package sshdtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is the OpenSSH server binary.
const SSHD = "/usr/sbin/sshd"

// Server is one running sshd.
type Server struct {
	Name    string
	Host    string
	Port    int
	HostKey ssh.PublicKey
	// HostCert is the host certificate sshd presents (Options.HostCA).
	HostCert *ssh.Certificate
	Config   string
	mu       sync.Mutex // guards cmd: a test may kill a server while Stop runs
	cmd      *exec.Cmd
	dir      string
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Fixture is a set of sshd servers sharing one client key.
type Fixture struct {
	Dir string
	// ClientKey is the private key authorized on every server.
	ClientKey string
	// KnownHosts lists the host key of every server.
	KnownHosts string
	Servers    []*Server
}

// Options say where the servers listen.
type Options struct {
	// Hosts are the loopback addresses to listen on, one server each
	// (default: N servers on 127.0.0.1 with free ports).
	Hosts []string
	// Port is used with Hosts (default 22).
	Port int
	// Extra is added to every sshd_config.
	Extra string
	// HostCA, if set, is a CA private key (see WriteKey) that signs every
	// server's host key: sshd presents the certificate (HostCertificate)
	// to clients that ask for it. HostPrincipals are its principals
	// (default: the server's address and localhost).
	HostCA         string
	HostPrincipals []string
	// UserCA, if set, is a CA public key file every server trusts for
	// user certificates (TrustedUserCAKeys).
	UserCA string
	// NoAuthorizedKey leaves the client key out of authorized_keys, so
	// that only a user certificate logs in.
	NoAuthorizedKey bool
}

// Available reports why real sshd tests cannot run here, or "".
func Available() string {
	if _, err := os.Stat(SSHD); err != nil {
		return SSHD + " is not installed (Debian: openssh-server)"
	}
	if os.Geteuid() != 0 {
		return "sshd needs root to run as a user's session"
	}
	return ""
}

// Start starts n servers (or one per opts.Hosts) and stops them when the
// test ends.
func Start(t testing.TB, n int, opts Options) *Fixture {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip(why)
	}
	fx, err := StartDir(t.TempDir(), n, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fx.Stop)
	return fx
}

// StartDir is Start for programs: the caller must call Stop.
func StartDir(dir string, n int, opts Options) (*Fixture, error) {
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privsep dir
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	fx := &Fixture{Dir: dir}
	var err error
	if fx.ClientKey, _, err = WriteKey(filepath.Join(dir, "id_ed25519")); err != nil {
		return nil, err
	}
	if len(opts.Hosts) > 0 {
		n = len(opts.Hosts)
	}
	var kh strings.Builder
	for i := 0; i < n; i++ {
		s := &Server{Name: fmt.Sprintf("node%d", i+1), dir: filepath.Join(dir, fmt.Sprintf("node%d", i+1))}
		if len(opts.Hosts) > 0 {
			s.Host, s.Port = opts.Hosts[i], opts.Port
			if s.Port == 0 {
				s.Port = 22
			}
		} else {
			s.Host = "127.0.0.1"
			if s.Port, err = freePort(s.Host); err != nil {
				return nil, err
			}
		}
		if err := fx.start(s, opts); err != nil {
			fx.Stop()
			return nil, err
		}
		fx.Servers = append(fx.Servers, s)
		fmt.Fprintln(&kh, knownhosts.Line([]string{knownhosts.Normalize(s.Addr())}, s.HostKey))
	}
	fx.KnownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(fx.KnownHosts, []byte(kh.String()), 0o600); err != nil {
		return nil, err
	}
	for _, s := range fx.Servers {
		if err := waitListening(s.Addr(), 10*time.Second); err != nil {
			fx.Stop()
			return nil, fmt.Errorf("sshd %s: %w", s.Name, err)
		}
	}
	return fx, nil
}

func (fx *Fixture) start(s *Server, opts Options) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	hostKey, pub, err := WriteKey(filepath.Join(s.dir, "ssh_host_ed25519_key"))
	if err != nil {
		return err
	}
	s.HostKey = pub
	extra := opts.Extra
	if opts.HostCA != "" {
		principals := opts.HostPrincipals
		if principals == nil {
			principals = []string{s.Host, "localhost"}
		}
		cert, err := SignCert(opts.HostCA, hostKey+".pub", true, principals...)
		if err != nil {
			return err
		}
		if s.HostCert, err = ReadCert(cert); err != nil {
			return err
		}
		extra = "HostCertificate " + cert + "\n" + extra
	}
	if opts.UserCA != "" {
		extra = "TrustedUserCAKeys " + opts.UserCA + "\n" + extra
	}
	clientPub, err := os.ReadFile(fx.ClientKey + ".pub")
	if err != nil {
		return err
	}
	if opts.NoAuthorizedKey {
		clientPub = nil
	}
	auth := filepath.Join(s.dir, "authorized_keys")
	if err := os.WriteFile(auth, clientPub, 0o600); err != nil {
		return err
	}
	s.Config = filepath.Join(s.dir, "sshd_config")
	// The fixture's key file first, then the user's own, which is where
	// tests that log in as other users put the key.
	cfg := fmt.Sprintf(`ListenAddress %s
HostKey %s
AuthorizedKeysFile %s .ssh/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxStartups 200
MaxSessions 50
LogLevel ERROR
# Bash runs ~/.bashrc when sshd starts it as a top-level shell (SHLVL unset),
# even for a command. The machine's root .bashrc may be slow or take locks
# (pyenv), which would time every login on it: SHLVL=1 makes the command's
# shell a second-level one, which reads no start-up file, as on a lab host.
SetEnv SHLVL=1
%s
`, s.Addr(), hostKey, auth, extra)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o600); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(s.dir, "sshd.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	s.cmd = exec.Command(SSHD, "-D", "-e", "-f", s.Config)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return s.cmd.Start()
}

// Kill kills the server and every process it started (its sessions), as
// when a node dies.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	killTree(s.cmd.Process.Pid)
	s.cmd.Wait()
	s.cmd = nil
}

// Stop kills every server.
func (fx *Fixture) Stop() {
	for _, s := range fx.Servers {
		s.Kill()
	}
}

// Log returns the server's sshd log.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "sshd.log"))
	return string(b)
}

// WriteKey writes a new ed25519 private key to path (and path.pub) and
// returns the path and the public key.
func WriteKey(path string) (string, ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", nil, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(sp), 0o644); err != nil {
		return "", nil, err
	}
	return path, sp, nil
}

// SignCert signs the public key file pub with the CA private key ca, as an
// operator does: ssh-keygen -s ca -I id [-h] -n principals pub. It returns
// the certificate's path (pub without .pub, then -cert.pub). A host
// certificate (host) is what sshd's HostCertificate names; a user
// certificate logs in as one of its principals where sshd trusts ca
// (TrustedUserCAKeys).
func SignCert(ca, pub string, host bool, principals ...string) (string, error) {
	args := []string{"-q", "-s", ca, "-I", "sshdtest-" + filepath.Base(pub)}
	if host {
		args = append(args, "-h")
	}
	if len(principals) > 0 {
		args = append(args, "-n", strings.Join(principals, ","))
	}
	args = append(args, pub)
	if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ssh-keygen %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSuffix(pub, ".pub") + "-cert.pub", nil
}

// ReadCert reads an OpenSSH certificate file.
func ReadCert(path string) (*ssh.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, fmt.Errorf("%s: not a certificate", path)
	}
	return c, nil
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitListening(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killTree sends SIGKILL to pid and all its descendants.
func killTree(pid int) {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], p)
	}
	var walk func(int)
	walk = func(p int) {
		syscall.Kill(p, syscall.SIGKILL)
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
}
