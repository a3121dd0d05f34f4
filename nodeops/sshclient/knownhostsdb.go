package sshclient

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// knownHostsFile is one known_hosts file, read once.
//
// Lines are read and matched exactly as x/crypto/ssh/knownhosts reads and
// matches them (FuzzKnownHostsMatch holds the two together), with two
// differences that follow OpenSSH instead: a @cert-authority key is a CA,
// never a host key of its own, and a certificate whose key or signer is
// @revoked is refused (see hostKeys.check).
//
// knownhosts' own callback scans every line for every check, which at
// thousands of nodes is thousands x thousands pattern matches. Here lines
// whose patterns are plain names (what ssh-keyscan writes) are indexed by
// (host, port); only the others (hashed |1| names, wildcards, negations)
// are matched per lookup: a hashed file still costs one HMAC per line per
// node.
type knownHostsFile struct {
	path  string
	lines []khLine
	// plain maps an address to the lines (indexes into lines, ascending)
	// whose plain patterns name it.
	plain map[hostPort][]int32
	// patterned are the lines that need matching, ascending.
	patterned []int32
	// revoked are the @revoked keys by plainKeyBlob. As in knownhosts and
	// OpenSSH's reading of "must not ever be accepted", a revocation holds
	// for every host whatever the line's host patterns say.
	revoked map[string]knownhosts.KnownKey
}

// khLine is a plain or @cert-authority line.
type khLine struct {
	ca    bool
	match hostMatcher
	key   knownhosts.KnownKey
}

type hostPort struct{ host, port string }

// String is the address as knownhosts hashes it before Normalize.
func (a hostPort) String() string {
	h := a.host
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	return h + ":" + a.port
}

type hostMatcher interface{ match(hostPort) bool }

const (
	markerCA      = "@cert-authority"
	markerRevoked = "@revoked"
)

// readKnownHostsFile reads path; a missing file is (nil, nil), as for ssh.
func readKnownHostsFile(path string) (*knownHostsFile, error) {
	fh, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return parseKnownHosts(fh, path)
}

// parseKnownHosts reads a known_hosts file. A line knownhosts would reject
// is rejected with knownhosts' message, naming the file and line.
func parseKnownHosts(r io.Reader, path string) (*knownHostsFile, error) {
	f := &knownHostsFile{path: path, plain: map[hostPort][]int32{}, revoked: map[string]knownhosts.KnownKey{}}
	// knownhosts reads with bufio.Scanner's default 64 KiB line limit: a
	// longer line is an error in both.
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.Trim(sc.Bytes(), " \t")
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if err := f.add(line, n); err != nil {
			return nil, fmt.Errorf("knownhosts: %s:%d: %v", path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("knownhosts: %s: line %d: %w", path, n+1, err)
	}
	return f, nil
}

func (f *knownHostsFile) add(line []byte, n int) error {
	marker, pattern, key, err := parseKnownHostsLine(line)
	if err != nil {
		return err
	}
	kk := knownhosts.KnownKey{Key: key, Filename: f.path, Line: n}
	if marker == markerRevoked {
		f.revoked[plainKeyBlob(key)] = kk
		return nil
	}
	m, plain, err := parseHostField(pattern)
	if err != nil {
		return err
	}
	idx := int32(len(f.lines))
	f.lines = append(f.lines, khLine{ca: marker == markerCA, match: m, key: kk})
	if plain == nil {
		f.patterned = append(f.patterned, idx)
		return nil
	}
	for _, a := range plain {
		if l := f.plain[a]; len(l) == 0 || l[len(l)-1] != idx { // "a,a" is one line
			f.plain[a] = append(l, idx)
		}
	}
	return nil
}

// parseKnownHostsLine splits a line as knownhosts does, with its errors.
func parseKnownHostsLine(line []byte) (marker, host string, key ssh.PublicKey, err error) {
	if w, next := nextWord(line); w == markerCA || w == markerRevoked {
		marker = w
		line = next
	}
	host, line = nextWord(line)
	if len(host) > 0 && host[0] == '@' {
		return "", "", nil, fmt.Errorf("knownhosts: unexpected marker: %q", host)
	}
	if len(line) == 0 {
		return "", "", nil, errors.New("knownhosts: missing host pattern")
	}
	wantType, line := nextWord(line)
	if len(line) == 0 {
		return "", "", nil, errors.New("knownhosts: missing key type pattern")
	}
	keyBlob, _ := nextWord(line)
	keyBytes, err := base64.StdEncoding.DecodeString(keyBlob)
	if err != nil {
		return "", "", nil, err
	}
	if key, err = ssh.ParsePublicKey(keyBytes); err != nil {
		return "", "", nil, err
	}
	if key.Type() != wantType {
		return "", "", nil, fmt.Errorf("knownhosts: key type mismatch: found %q, want %q", key.Type(), wantType)
	}
	return marker, host, key, nil
}

func nextWord(line []byte) (string, []byte) {
	i := bytes.IndexAny(line, "\t ")
	if i == -1 {
		return string(line), nil
	}
	return string(line[:i]), bytes.Trim(line[i:], " \t")
}

// parseHostField reads the host patterns of a line. plain lists the
// addresses when every pattern is a plain name, so that the line can be
// indexed; it is nil for hashed names, wildcards and negations.
func parseHostField(pattern string) (m hostMatcher, plain []hostPort, err error) {
	if pattern[0] == '|' {
		h, err := newHashedHost(pattern)
		return h, nil, err
	}
	var ps hostPatterns
	for _, p := range strings.Split(pattern, ",") {
		if len(p) == 0 {
			continue
		}
		var hp hostPattern
		if p[0] == '!' {
			hp.negate = true
			p = p[1:]
		}
		if len(p) == 0 {
			return nil, nil, errors.New("knownhosts: negation without following hostname")
		}
		if p[0] == '[' {
			if hp.addr.host, hp.addr.port, err = net.SplitHostPort(p); err != nil {
				return nil, nil, err
			}
		} else if hp.addr.host, hp.addr.port, err = net.SplitHostPort(p); err != nil {
			hp.addr = hostPort{p, "22"}
		}
		ps = append(ps, hp)
	}
	if !strings.ContainsAny(pattern, "*?!") {
		for _, p := range ps {
			plain = append(plain, p.addr)
		}
		if plain == nil {
			plain = []hostPort{} // a field of commas names no host: indexed under none
		}
	}
	return ps, plain, nil
}

type hostPattern struct {
	negate bool
	addr   hostPort
}

type hostPatterns []hostPattern

// match is knownhosts': a matching negated pattern vetoes the line.
func (ps hostPatterns) match(a hostPort) bool {
	matched := false
	for _, p := range ps {
		if p.addr.port != a.port || !knownhostsWildcard(p.addr.host, a.host) {
			continue
		}
		if p.negate {
			return false
		}
		matched = true
	}
	return matched
}

// knownhostsWildcard is knownhosts' wildcardMatch without its exponential
// recursion. That function lets a '*' match nothing except at the end of
// the name: "a*" does not match "a", and "*" does not match "". So a
// trailing run of stars means "at least one more byte", which is what "?*"
// means to an ordinary glob.
func knownhostsWildcard(pat, s string) bool {
	if t := strings.TrimRight(pat, "*"); len(t) < len(pat) {
		pat = t + "?*"
	}
	return globMatch(pat, s)
}

// globMatch matches s against pat, where '*' matches any run of bytes
// (empty included) and '?' any one byte, in O(len(pat)*len(s)) at worst.
func globMatch(pat, s string) bool {
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		switch {
		case p < len(pat) && (pat[p] == '?' || pat[p] == s[i]):
			p++
			i++
		case p < len(pat) && pat[p] == '*':
			starP, starI = p, i
			p++
		case starP >= 0:
			starI++
			p, i = starP+1, starI
		default:
			return false
		}
	}
	for p < len(pat) && pat[p] == '*' {
		p++
	}
	return p == len(pat)
}

// hashedHost is a |1|salt|hash name.
type hashedHost struct{ salt, hash []byte }

func newHashedHost(encoded string) (*hashedHost, error) {
	parts := strings.Split(encoded, "|")
	if len(parts) != 4 {
		return nil, fmt.Errorf("knownhosts: got %d components, want 3", len(parts))
	}
	salt, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, err
	}
	hash, err := base64.StdEncoding.DecodeString(parts[3])
	if err != nil {
		return nil, err
	}
	if parts[1] != "1" {
		return nil, fmt.Errorf("knownhosts: got hash type %s, must be '1'", parts[1])
	}
	return &hashedHost{salt: salt, hash: hash}, nil
}

func (h *hashedHost) match(a hostPort) bool {
	mac := hmac.New(sha1.New, h.salt)
	mac.Write([]byte(knownhosts.Normalize(a.String())))
	return bytes.Equal(mac.Sum(nil), h.hash)
}

// plainKeyBlob is the key revocations are recorded under: the certified
// key of a certificate, else the key.
func plainKeyBlob(key ssh.PublicKey) string {
	if cert, ok := key.(*ssh.Certificate); ok {
		return string(cert.Key.Marshal())
	}
	return string(key.Marshal())
}

// lookup appends the plain keys and the CA keys whose lines match a, in
// line order.
func (f *knownHostsFile) lookup(a hostPort, known, cas []knownhosts.KnownKey) ([]knownhosts.KnownKey, []knownhosts.KnownKey) {
	idx := f.plain[a]
	pi := 0
	take := func(i int32) {
		l := &f.lines[i]
		if l.ca {
			cas = append(cas, l.key)
		} else {
			known = append(known, l.key)
		}
	}
	for _, i := range f.patterned {
		for ; pi < len(idx) && idx[pi] < i; pi++ {
			take(idx[pi])
		}
		if f.lines[i].match.match(a) {
			take(i)
		}
	}
	for ; pi < len(idx); pi++ {
		take(idx[pi])
	}
	return known, cas
}

// knownHostsDB is the known_hosts files that hold for one host: the
// user's, then the global ones. A key found in any is trusted; a host
// listed in any with other keys only has changed its key.
type knownHostsDB struct {
	files []*knownHostsFile // nil for a missing file
	// user and global are the paths, for messages and for recording.
	user, global []string
}

// loadKnownHosts reads the files as the user's files (tests and tools).
func loadKnownHosts(files []string) (*knownHostsDB, error) {
	db := &knownHostsDB{user: files}
	for _, p := range files {
		f, err := readKnownHostsFile(p)
		if err != nil {
			return nil, err
		}
		db.files = append(db.files, f)
	}
	return db, nil
}

// hostTrust is what the known_hosts files say about one address.
type hostTrust struct {
	addr string
	// known are the plain host keys listed for the address, in file order.
	known []knownhosts.KnownKey
	// authorities are the @cert-authority keys whose patterns match it.
	authorities []knownhosts.KnownKey
	db          *knownHostsDB
}

// lookup returns what the files say about addr (host:port).
func (db *knownHostsDB) lookup(addr string) (*hostTrust, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("knownhosts: SplitHostPort(%s): %v", addr, err)
	}
	t := &hostTrust{addr: addr, db: db}
	for _, f := range db.files {
		if f != nil {
			t.known, t.authorities = f.lookup(hostPort{host, port}, t.known, t.authorities)
		}
	}
	return t, nil
}

// revokedKey returns the @revoked line of key, if any.
func (db *knownHostsDB) revokedKey(key ssh.PublicKey) *knownhosts.KnownKey {
	blob := plainKeyBlob(key)
	for _, f := range db.files {
		if f == nil {
			continue
		}
		if r, ok := f.revoked[blob]; ok {
			return &r
		}
	}
	return nil
}

// revoked returns the @revoked line that refuses key: for a certificate,
// that of its key or of the CA that signed it.
func (t *hostTrust) revoked(key ssh.PublicKey) *knownhosts.KnownKey {
	if r := t.db.revokedKey(key); r != nil {
		return r
	}
	if cert, ok := key.(*ssh.Certificate); ok {
		return t.db.revokedKey(cert.SignatureKey)
	}
	return nil
}

// authority returns the @cert-authority line of CA key ca for this host.
func (t *hostTrust) authority(ca ssh.PublicKey) *knownhosts.KnownKey {
	blob := ca.Marshal()
	for i := range t.authorities {
		if bytes.Equal(t.authorities[i].Key.Marshal(), blob) {
			return &t.authorities[i]
		}
	}
	return nil
}

// checkPlain is knownhosts' verdict on a plain key: revoked first, then
// one of the known keys, else a KeyError listing them.
func (t *hostTrust) checkPlain(key ssh.PublicKey) error {
	if r := t.db.revokedKey(key); r != nil {
		return &knownhosts.RevokedError{Revoked: *r}
	}
	blob := key.Marshal()
	for _, k := range t.known {
		if bytes.Equal(k.Key.Marshal(), blob) {
			return nil
		}
	}
	return &knownhosts.KeyError{Want: t.known}
}
