package sshclient

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// auth loads private keys and user certificates once and hands out auth
// methods per endpoint.
type auth struct {
	mu     sync.Mutex
	idents map[string]*identity        // by path; nil when unusable
	certs  map[string]*ssh.Certificate // by path; nil when unusable
	warned map[string]bool
	agent  agent.ExtendedAgent
	agentS []ssh.Signer
	// agentBlobs are the agent keys' public keys, marshalled, to match
	// certificates against without asking the agent again.
	agentBlobs []string
	logf       func(string, ...any)
	warnf      func(string, ...any)
}

type identity struct {
	s    ssh.Signer
	blob string // the public key, marshalled
}

func newAuth(agentSocket string, logf, warnf func(string, ...any)) (*auth, error) {
	a := &auth{idents: map[string]*identity{}, certs: map[string]*ssh.Certificate{}, warned: map[string]bool{},
		logf: logf, warnf: warnf}
	if agentSocket != "" {
		conn, err := net.Dial("unix", agentSocket)
		if err != nil {
			logf("ssh-agent at %s: %v (not used)", agentSocket, err)
		} else {
			a.agent = agent.NewClient(conn)
			if a.agentS, err = a.agent.Signers(); err != nil {
				logf("ssh-agent: %v (not used)", err)
				a.agentS = nil
			}
			for _, s := range a.agentS {
				a.agentBlobs = append(a.agentBlobs, string(s.PublicKey().Marshal()))
			}
		}
	}
	return a, nil
}

// identity loads a private key; keys it cannot use (missing, or protected
// by a passphrase, which breakglass never prompts for) are skipped: the
// agent may hold them.
func (a *auth) identity(path string) *identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.idents[path]; ok {
		return id
	}
	var id *identity
	b, err := os.ReadFile(path)
	var s ssh.Signer
	if err == nil {
		s, err = ssh.ParsePrivateKey(b)
	}
	if err != nil {
		a.logf("identity %s: %v (skipped)", path, err)
	} else {
		id = &identity{s: s, blob: string(s.PublicKey().Marshal())}
	}
	a.idents[path] = id
	return id
}

// cert loads a user certificate. One named by CertificateFile (explicit)
// that cannot be used is warned about once; the path-cert.pub that ssh
// also looks for beside each identity is usually absent, and only logged.
func (a *auth) cert(path string, explicit bool) *ssh.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.certs[path]; ok {
		return c
	}
	c, err := readUserCert(path)
	switch {
	case err == nil:
	case explicit:
		a.warnOnce(path, "certificate %s: %v (not offered)", path, err)
	case !errors.Is(err, os.ErrNotExist):
		a.logf("certificate %s: %v (not offered)", path, err)
	}
	a.certs[path] = c
	return c
}

func readUserCert(path string) (*ssh.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, err
	}
	c, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, fmt.Errorf("a %s key, not a certificate", pub.Type())
	}
	if c.CertType != ssh.UserCert {
		return nil, errors.New("a host certificate, not a user certificate")
	}
	return c, nil
}

// warnOnce warns about key once per run (a.mu held).
func (a *auth) warnOnce(key, format string, args ...any) {
	if !a.warned[key] {
		a.warned[key] = true
		a.warnf(format, args...)
	}
}

// methods returns the public key method for an endpoint: its user
// certificates first (each with the identity or agent key it certifies, as
// ssh pairs them), then its identities, then the agent's keys.
func (a *auth) methods(identities, certificates []string) []ssh.AuthMethod {
	var plain []ssh.Signer
	var blobs []string
	for _, p := range identities {
		if id := a.identity(p); id != nil {
			plain = append(plain, id.s)
			blobs = append(blobs, id.blob)
		}
	}
	plain = append(plain, a.agentS...)
	blobs = append(blobs, a.agentBlobs...)

	var signers []ssh.Signer
	seen := map[string]bool{}
	offer := func(path string, explicit bool) {
		if seen[path] {
			return
		}
		seen[path] = true
		c := a.cert(path, explicit)
		if c == nil {
			return
		}
		want := string(c.Key.Marshal())
		for i, b := range blobs {
			if b != want {
				continue
			}
			cs, err := ssh.NewCertSigner(c, plain[i])
			if err != nil {
				a.mu.Lock()
				a.warnOnce(path, "certificate %s: %v (not offered)", path, err)
				a.mu.Unlock()
				return
			}
			signers = append(signers, cs)
			return
		}
		if explicit {
			a.mu.Lock()
			a.warnOnce(path, "certificate %s certifies %s %s, which is neither an identity file nor in ssh-agent (not offered)",
				path, c.Key.Type(), ssh.FingerprintSHA256(c.Key))
			a.mu.Unlock()
		}
	}
	for _, p := range identities {
		offer(p+"-cert.pub", false)
	}
	for _, p := range certificates {
		offer(p, true)
	}
	signers = append(signers, plain...)
	if len(signers) == 0 {
		return nil
	}
	return []ssh.AuthMethod{ssh.PublicKeys(signers...)}
}

// defaultIdentities are the keys OpenSSH tries when none is configured.
func defaultIdentities() []string {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
		p := filepath.Join(home, ".ssh", n)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}
