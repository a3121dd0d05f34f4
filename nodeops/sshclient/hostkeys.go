package sshclient

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultGlobalKnownHosts are the system-wide known_hosts files OpenSSH
// reads when the ssh config names none (GlobalKnownHostsFile).
var DefaultGlobalKnownHosts = []string{"/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"}

// knownHostsHint is the hint for a known_hosts file that does not parse.
const knownHostsHint = "fix or remove the line named above (a line breakglass cannot read may be a @revoked one, so the file is not used without it); to leave out a file you cannot edit, set UserKnownHostsFile or GlobalKnownHostsFile in the ssh config"

// defaultUserKnownHosts are the user's known_hosts files OpenSSH reads when
// neither the inventory nor the ssh config names them.
func defaultUserKnownHosts() []string {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil
	}
	return []string{filepath.Join(home, ".ssh", "known_hosts"), filepath.Join(home, ".ssh", "known_hosts2")}
}

// hostKeys verifies host keys as OpenSSH does: against the user's and the
// global known_hosts files of each host, with @cert-authority and @revoked
// lines, and records unknown hosts when asked to.
type hostKeys struct {
	acceptNew bool
	clock     func() time.Time

	mu sync.Mutex
	// files are the known_hosts files read so far, by path: each is read
	// once per run, however many hosts name it.
	files map[string]*khEntry
	// accepted holds the keys recorded by this run, by normalised address,
	// so that a host met twice is not appended twice.
	accepted map[string]ssh.PublicKey
}

type khEntry struct {
	once sync.Once
	f    *knownHostsFile
	err  error
}

func newHostKeys(acceptNew bool) *hostKeys {
	return &hostKeys{acceptNew: acceptNew, clock: time.Now, files: map[string]*khEntry{}, accepted: map[string]ssh.PublicKey{}}
}

// load reads the files now (New reads those it can name before any node
// is touched, so that a broken file stops the run at once).
func (hk *hostKeys) load(paths []string) error {
	for _, p := range paths {
		if _, err := hk.file(p); err != nil {
			return err
		}
	}
	return nil
}

func (hk *hostKeys) file(path string) (*knownHostsFile, error) {
	hk.mu.Lock()
	e := hk.files[path]
	if e == nil {
		e = &khEntry{}
		hk.files[path] = e
	}
	hk.mu.Unlock()
	e.once.Do(func() { e.f, e.err = readKnownHostsFile(path) })
	return e.f, e.err
}

// db returns the files of one host: the user's, then the global ones.
func (hk *hostKeys) db(user, global []string) (*knownHostsDB, error) {
	db := &knownHostsDB{user: user, global: global}
	for _, p := range slices.Concat(user, global) {
		f, err := hk.file(p)
		if err != nil {
			return nil, err
		}
		db.files = append(db.files, f)
	}
	return db, nil
}

// trust is what e's known_hosts files say about it. A node's connection
// looks it up once, for both the algorithms and the check.
func (hk *hostKeys) trust(e *endpoint) (*hostTrust, error) {
	db, err := hk.db(e.knownHosts, e.globalKnownHosts)
	if err != nil {
		return nil, err
	}
	return db.lookup(e.addr())
}

// algorithms returns the host key algorithms to offer a host: the
// certificate algorithms first when a @cert-authority line covers it (a
// server presents its certificate only when asked for one), then the types
// of its known keys, so that a host that has several keys is asked for one
// we can verify. Nil (the library's default) for a host known_hosts says
// nothing about.
func algorithms(t *hostTrust) []string {
	var algos []string
	add := func(as ...string) {
		for _, a := range as {
			if !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	if len(t.authorities) > 0 {
		for _, a := range ssh.SupportedAlgorithms().HostKeys {
			if strings.Contains(a, "-cert-") {
				add(a)
			}
		}
		if len(t.known) == 0 {
			// A server without a certificate must still show its key, so
			// that the refusal says "unknown host", not "no common
			// algorithm".
			add(ssh.SupportedAlgorithms().HostKeys...)
		}
	}
	for _, k := range t.known {
		add(algorithmsFor(k.Key.Type())...)
	}
	return algos
}

func algorithmsFor(keyType string) []string {
	switch keyType {
	case ssh.KeyAlgoRSA:
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	case ssh.CertAlgoRSAv01:
		return []string{ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01, ssh.CertAlgoRSAv01}
	}
	return []string{keyType}
}

// HostKeyError is a host key that was refused.
type HostKeyError struct {
	Addr string
	// Key is the key the server offered (a certificate's key when its
	// certificate was not accepted).
	Key ssh.PublicKey
	// Known are the keys known_hosts holds for the host (empty: unknown host).
	Known   []knownhosts.KnownKey
	Revoked *knownhosts.RevokedError
	// CertErr says why the server's host certificate was not accepted;
	// CertInvalid that a @cert-authority line covers the host, so that
	// this is why it was refused.
	CertErr     error
	CertInvalid bool
	// File is where unknown keys would be recorded; Searched are every
	// known_hosts file looked in.
	File     string
	Searched []string
}

func (e *HostKeyError) Error() string {
	offered := fmt.Sprintf("%s %s", e.Key.Type(), ssh.FingerprintSHA256(e.Key))
	cert := ""
	if e.CertErr != nil {
		cert = fmt.Sprintf("; its host certificate was not accepted: %v", e.CertErr)
	}
	switch {
	case e.Revoked != nil:
		return fmt.Sprintf("host key of %s is revoked: the server offered %s, marked @revoked at %s:%d",
			e.Addr, offered, e.Revoked.Revoked.Filename, e.Revoked.Revoked.Line)
	case len(e.Known) == 0:
		where := e.File
		if len(e.Searched) > 0 {
			where = strings.Join(e.Searched, ", ")
		}
		return fmt.Sprintf("host %s is not in known_hosts (%s): the server offered %s%s", e.Addr, where, offered, cert)
	}
	var known []string
	for _, k := range e.Known {
		known = append(known, fmt.Sprintf("%s %s at %s:%d", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.Filename, k.Line))
	}
	return fmt.Sprintf("HOST KEY CHANGED for %s: the server offered %s; known_hosts has %s%s",
		e.Addr, offered, strings.Join(known, "; "), cert)
}

// Reason is the word used in results.
func (e *HostKeyError) Reason() string {
	switch {
	case e.Revoked != nil:
		return "host-key-revoked"
	case len(e.Known) > 0:
		return "host-key-changed"
	case e.CertInvalid:
		return "host-cert-invalid"
	}
	return "host-key-unknown"
}

// Hint says what the operator can do.
func (e *HostKeyError) Hint() string {
	host := knownhosts.Normalize(e.Addr)
	switch {
	case e.Revoked != nil:
		return "this key was revoked on purpose; do not connect until the node is rebuilt"
	case len(e.Known) > 0:
		k := e.Known[0]
		return fmt.Sprintf("if the node was rebuilt, check the new key out of band and remove the old one with: ssh-keygen -R '%s' -f %s (line %d); otherwise someone may be intercepting the connection", host, k.Filename, k.Line)
	case e.CertInvalid:
		return "the host claims a certificate from a CA trusted for it, but the certificate does not hold (see ssh-keygen -L -f on the node's HostCertificate: principals, validity): renew it; breakglass does not fall back to trusting the bare key"
	}
	h, p, _ := net.SplitHostPort(e.Addr)
	return fmt.Sprintf("compare the fingerprint with one obtained out of band (console, cloud API, provisioning records) before trusting it, then add it to %s (ssh-keyscan -p %s %s), trust the fleet's host CA with a @cert-authority line, or rerun with --accept-new-host-keys to record whatever key answers", e.File, p, h)
}

// check is the HostKeyCallback for the host t describes. As in OpenSSH: a
// revoked key (or a certificate whose key or CA is revoked) is refused
// whatever else says; a certificate is accepted when a @cert-authority
// line for the host names its signer and it holds for the host's name now;
// otherwise its bare key, like any plain key, must be one of the host's
// known keys. Unlike OpenSSH, a host that a @cert-authority line covers
// and whose certificate fails is never recorded by --accept-new-host-keys.
func (hk *hostKeys) check(t *hostTrust, key ssh.PublicKey) error {
	if r := t.revoked(key); r != nil {
		return &HostKeyError{Addr: t.addr, Key: key, Revoked: &knownhosts.RevokedError{Revoked: *r}}
	}
	var certErr error
	if cert, ok := key.(*ssh.Certificate); ok {
		if certErr = hk.checkCert(t, cert); certErr == nil {
			return nil
		}
		// OpenSSH then tries the certified key as a plain key.
		key = cert.Key
	}
	norm := knownhosts.Normalize(t.addr)
	hk.mu.Lock()
	acc := hk.accepted[norm]
	hk.mu.Unlock()
	if acc != nil && keyEqual(acc, key) {
		return nil
	}
	if t.checkPlain(key) == nil {
		return nil
	}
	herr := &HostKeyError{Addr: t.addr, Key: key, Known: t.known, CertErr: certErr, File: firstFile(t.db.user),
		Searched: slices.Concat(t.db.user, t.db.global)}
	switch {
	case len(t.known) > 0:
		return herr
	case certErr != nil && len(t.authorities) > 0:
		// A host a trusted CA covers showed a certificate that does not
		// hold: never trusted on first use (ssh would; a careful operator
		// would not).
		herr.CertInvalid = true
		return herr
	case acc != nil:
		// Recorded earlier in this run with another key: a change.
		herr.Known = []knownhosts.KnownKey{{Key: acc, Filename: herr.File}}
		return herr
	case hk.acceptNew:
		return hk.record(t.db.user, norm, key)
	}
	return herr
}

// checkCert checks a host certificate with x/crypto's CertChecker: a CA
// of the host's @cert-authority lines signed it, it is valid now, it names
// the host (as addressed, HostName applied) among its principals, and
// neither its key nor its CA is revoked.
func (hk *hostKeys) checkCert(t *hostTrust, cert *ssh.Certificate) error {
	if len(t.authorities) == 0 {
		return fmt.Errorf("no @cert-authority line in known_hosts covers %s", t.addr)
	}
	cc := &ssh.CertChecker{
		IsHostAuthority: func(ca ssh.PublicKey, _ string) bool { return t.authority(ca) != nil },
		IsRevoked:       func(c *ssh.Certificate) bool { return t.revoked(c) != nil },
		Clock:           hk.clock,
	}
	err := cc.CheckHostKey(t.addr, nil, cert)
	if err != nil && t.authority(cert.SignatureKey) == nil {
		return fmt.Errorf("signed by %s %s, which no @cert-authority line for %s names",
			cert.SignatureKey.Type(), ssh.FingerprintSHA256(cert.SignatureKey), t.addr)
	}
	return err
}

func firstFile(files []string) string {
	if len(files) == 0 {
		return "known_hosts"
	}
	return files[0]
}

// record appends a new host key to the first of the host's user
// known_hosts files, never to a global one.
func (hk *hostKeys) record(user []string, norm string, key ssh.PublicKey) error {
	hk.mu.Lock()
	defer hk.mu.Unlock()
	if prev := hk.accepted[norm]; prev != nil {
		if keyEqual(prev, key) {
			return nil
		}
		return &HostKeyError{Addr: norm, Key: key, Known: []knownhosts.KnownKey{{Key: prev, Filename: firstFile(user)}}}
	}
	if len(user) == 0 {
		return errors.New("no known_hosts file to record the new host key in (UserKnownHostsFile none)\nhint: set ssh.knownHosts in the inventory")
	}
	f := user[0]
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("record host key: %w", err)
	}
	_, err = fmt.Fprintln(fh, knownhosts.Line([]string{norm}, key))
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record host key in %s: %w", f, err)
	}
	hk.accepted[norm] = key
	return nil
}

func keyEqual(a, b ssh.PublicKey) bool {
	return a.Type() == b.Type() && string(a.Marshal()) == string(b.Marshal())
}
