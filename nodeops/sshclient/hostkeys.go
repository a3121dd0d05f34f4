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

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeys verifies host keys against known_hosts files with knownhosts,
// and records unknown hosts when asked to.
type hostKeys struct {
	files     []string
	acceptNew bool

	mu sync.RWMutex
	db *knownHostsDB // nil when no file exists yet
	// accepted holds the keys recorded by this run, by normalised address,
	// so that a host met twice is not appended twice.
	accepted map[string]ssh.PublicKey
}

func newHostKeys(files []string, acceptNew bool) (*hostKeys, error) {
	hk := &hostKeys{files: files, acceptNew: acceptNew, accepted: map[string]ssh.PublicKey{}}
	if err := hk.load(); err != nil {
		return nil, err
	}
	return hk, nil
}

func (hk *hostKeys) load() error {
	var existing []string
	for _, f := range hk.files {
		if _, err := os.Stat(f); err == nil {
			existing = append(existing, f)
		}
	}
	if len(existing) == 0 {
		hk.db = nil
		return nil
	}
	db, err := loadKnownHosts(existing)
	if err != nil {
		return fmt.Errorf("known_hosts: %w\nhint: fix or remove the line named above", err)
	}
	hk.db = db
	return nil
}

// known returns the keys known_hosts holds for addr (host:port). A node's
// connection looks them up once, for both algorithms and check.
func (hk *hostKeys) known(addr string) []knownhosts.KnownKey {
	hk.mu.RLock()
	db := hk.db
	hk.mu.RUnlock()
	if db == nil {
		return nil
	}
	keys, _ := db.lookup(addr)
	return keys
}

// algorithms returns the host key algorithms to offer for a host whose
// known keys are known: those of their key types, so that a host that has
// several keys is asked for one we can verify. Nil (the library's default)
// for unknown hosts.
func algorithms(known []knownhosts.KnownKey) []string {
	var algos []string
	for _, k := range known {
		for _, a := range algorithmsFor(k.Key.Type()) {
			if !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
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
	// Key is the key the server offered.
	Key ssh.PublicKey
	// Known are the keys known_hosts holds for the host (empty: unknown host).
	Known   []knownhosts.KnownKey
	Revoked *knownhosts.RevokedError
	// File is where unknown keys would be recorded.
	File string
}

func (e *HostKeyError) Error() string {
	offered := fmt.Sprintf("%s %s", e.Key.Type(), ssh.FingerprintSHA256(e.Key))
	switch {
	case e.Revoked != nil:
		return fmt.Sprintf("host key of %s is revoked: the server offered %s, marked @revoked at %s:%d",
			e.Addr, offered, e.Revoked.Revoked.Filename, e.Revoked.Revoked.Line)
	case len(e.Known) == 0:
		return fmt.Sprintf("host %s is not in %s: the server offered %s", e.Addr, e.File, offered)
	}
	var known []string
	for _, k := range e.Known {
		known = append(known, fmt.Sprintf("%s %s at %s:%d", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.Filename, k.Line))
	}
	return fmt.Sprintf("HOST KEY CHANGED for %s: the server offered %s; known_hosts has %s",
		e.Addr, offered, strings.Join(known, "; "))
}

// Reason is the word used in results.
func (e *HostKeyError) Reason() string {
	switch {
	case e.Revoked != nil:
		return "host-key-revoked"
	case len(e.Known) == 0:
		return "host-key-unknown"
	}
	return "host-key-changed"
}

// Hint says what the operator can do.
func (e *HostKeyError) Hint() string {
	host := knownhosts.Normalize(e.Addr)
	switch {
	case e.Revoked != nil:
		return "this key was revoked on purpose; do not connect until the node is rebuilt"
	case len(e.Known) == 0:
		return fmt.Sprintf("check the fingerprint out of band, then rerun with --accept-new-host-keys to record it (or add it with ssh-keyscan %s >> %s)", host, e.File)
	}
	k := e.Known[0]
	return fmt.Sprintf("if the node was rebuilt, check the new key out of band and remove the old one with: ssh-keygen -R '%s' -f %s (line %d); otherwise someone may be intercepting the connection", host, k.Filename, k.Line)
}

// check is the HostKeyCallback for addr, whose known keys are known.
func (hk *hostKeys) check(addr string, remote net.Addr, key ssh.PublicKey, known []knownhosts.KnownKey) error {
	norm := knownhosts.Normalize(addr)
	hk.mu.RLock()
	db := hk.db
	acc := hk.accepted[norm]
	hk.mu.RUnlock()
	if acc != nil && keyEqual(acc, key) {
		return nil
	}
	var err error
	if db != nil {
		err = db.check(addr, remote, key, known)
		if err == nil {
			return nil
		}
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case db == nil || errors.As(err, &ke) && len(ke.Want) == 0:
		if acc != nil {
			// Recorded earlier in this run with another key: a change.
			return &HostKeyError{Addr: addr, Key: key, Known: []knownhosts.KnownKey{{Key: acc, Filename: hk.firstFile()}}}
		}
		if hk.acceptNew {
			return hk.record(norm, key)
		}
		return &HostKeyError{Addr: addr, Key: key, File: hk.firstFile()}
	case errors.As(err, &ke):
		return &HostKeyError{Addr: addr, Key: key, Known: ke.Want}
	case errors.As(err, &re):
		return &HostKeyError{Addr: addr, Key: key, Revoked: re}
	}
	return err
}

func (hk *hostKeys) firstFile() string {
	if len(hk.files) == 0 {
		return "known_hosts"
	}
	return hk.files[0]
}

// record appends a new host key to the first known_hosts file.
func (hk *hostKeys) record(norm string, key ssh.PublicKey) error {
	hk.mu.Lock()
	defer hk.mu.Unlock()
	if prev := hk.accepted[norm]; prev != nil {
		if keyEqual(prev, key) {
			return nil
		}
		return &HostKeyError{Addr: norm, Key: key, Known: []knownhosts.KnownKey{{Key: prev, Filename: hk.firstFile()}}}
	}
	if len(hk.files) == 0 {
		return errors.New("no known_hosts file to record the new host key in\nhint: set ssh.knownHosts in the inventory")
	}
	f := hk.files[0]
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

// fakeAddr turns host:port into a net.Addr for the probe lookup.
func fakeAddr(addr string) net.Addr {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &net.TCPAddr{}
	}
	ip := net.ParseIP(host)
	if ip == nil {
		ip = net.IPv4zero
	}
	p := 0
	fmt.Sscan(port, &p)
	return &net.TCPAddr{IP: ip, Port: p}
}
