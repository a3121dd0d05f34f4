package sshclient

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// knownHostsDB answers "which keys does known_hosts hold for host:port" in
// constant time for the lines a fleet's known_hosts is made of (one plain
// host or [host]:port pattern list per line, as ssh-keyscan writes them).
//
// knownhosts.New's callback scans every line for every check, which at
// thousands of nodes is thousands x thousands pattern matches. The files are
// read once here: lines whose patterns are plain names are indexed by
// (host, port); the others (hashed |1| names, wildcards, negations) are
// handed to knownhosts itself, so matching keeps its semantics exactly.
// Only those lines are scanned per node: a hashed file still costs one HMAC
// per line per node.
type knownHostsDB struct {
	// plain holds the keys of the lines with plain patterns, by address,
	// in file order.
	plain map[hostPort][]knownhosts.KnownKey
	// revoked are the @revoked keys, by plainKeyBlob, as knownhosts checks
	// them before any line.
	revoked map[string]knownhosts.KnownKey
	// patterned is knownhosts over the lines that need pattern matching
	// and the @revoked ones (nil if none): it also checks host
	// certificates, which this index does not.
	patterned ssh.HostKeyCallback
	// files maps a temporary file name back to the known_hosts file whose
	// patterned lines it holds, so that errors name the real file.
	files map[string]string
	order map[string]int // file name -> position, for file order
	// probe is a key that is in no known_hosts file: checking it against
	// patterned returns the keys its lines hold for a host.
	probe ssh.PublicKey
}

type hostPort struct{ host, port string }

// loadKnownHosts reads the files (all must exist). The whole files are
// validated by knownhosts.New first, so they are accepted or rejected
// exactly as before, with its error messages; that copy is not kept.
func loadKnownHosts(files []string) (*knownHostsDB, error) {
	if _, err := knownhosts.New(files...); err != nil {
		return nil, err
	}
	db := &knownHostsDB{plain: map[hostPort][]knownhosts.KnownKey{}, revoked: map[string]knownhosts.KnownKey{},
		files: map[string]string{}, order: map[string]int{}}
	var temps []string
	defer func() {
		for _, t := range temps {
			os.Remove(t)
		}
	}()
	for i, f := range files {
		db.order[f] = i
		patterned, err := db.read(f)
		if err != nil {
			return nil, err
		}
		if patterned == nil {
			continue
		}
		tmp, err := os.CreateTemp("", "breakglass-known-hosts-")
		if err != nil {
			return nil, fmt.Errorf("known_hosts: %w", err)
		}
		temps = append(temps, tmp.Name())
		_, err = tmp.Write(patterned)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("known_hosts: %w", err)
		}
		db.files[tmp.Name()] = f
	}
	if len(temps) > 0 {
		var err error
		if db.patterned, err = knownhosts.New(temps...); err != nil {
			return nil, err
		}
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		if db.probe, err = ssh.NewPublicKey(pub); err != nil {
			return nil, err
		}
	}
	return db, nil
}

// read indexes the plain lines of file f and returns a copy of f in which
// every other line is blank, so that the line numbers knownhosts reports
// for the patterned lines are those of f; nil when f has no such line.
func (db *knownHostsDB) read(f string) ([]byte, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, err
	}
	var patterned bytes.Buffer
	any := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if db.index(line, f, n) {
			patterned.WriteByte('\n')
			continue
		}
		any = true
		patterned.Write(line)
		patterned.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("known_hosts %s: %w", f, err)
	}
	if !any {
		return nil, nil
	}
	return patterned.Bytes(), nil
}

// index records line n of file f if it needs no pattern matching, and
// reports whether it is done with it (blank lines and comments are). A
// @revoked line is recorded and also left to knownhosts, which checks
// certificates against it.
func (db *knownHostsDB) index(line []byte, f string, n int) bool {
	fields := strings.Fields(string(line))
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return true
	}
	marker := ""
	if strings.HasPrefix(fields[0], "@") {
		marker, fields = fields[0], fields[1:]
	}
	if len(fields) < 3 {
		return false // knownhosts accepted it: let it judge
	}
	kb, err := base64.StdEncoding.DecodeString(fields[2])
	if err != nil {
		return false
	}
	key, err := ssh.ParsePublicKey(kb)
	if err != nil {
		return false
	}
	kk := knownhosts.KnownKey{Key: key, Filename: f, Line: n}
	switch marker {
	case "@revoked":
		db.revoked[plainKeyBlob(key)] = kk
		return false
	case "":
	default:
		return false // @cert-authority: knownhosts matches those
	}
	hosts := fields[0]
	if strings.HasPrefix(hosts, "|") || strings.ContainsAny(hosts, "*?!") {
		return false
	}
	for _, p := range strings.Split(hosts, ",") {
		if p == "" {
			continue
		}
		hp, ok := patternAddr(p)
		if !ok {
			return false
		}
		db.plain[hp] = append(db.plain[hp], kk)
	}
	return true
}

// patternAddr reads a plain host pattern the way knownhosts does: [host]:port,
// host:port, or host (port 22).
func patternAddr(p string) (hostPort, bool) {
	if p[0] == '[' {
		h, port, err := net.SplitHostPort(p)
		return hostPort{h, port}, err == nil
	}
	if h, port, err := net.SplitHostPort(p); err == nil {
		return hostPort{h, port}, true
	}
	return hostPort{p, "22"}, true
}

// plainKeyBlob is knownhosts' key for revocations: the certified key of a
// certificate, else the key.
func plainKeyBlob(key ssh.PublicKey) string {
	if cert, ok := key.(*ssh.Certificate); ok {
		return string(cert.Key.Marshal())
	}
	return string(key.Marshal())
}

// lookup returns the keys known_hosts holds for addr (host:port), in file
// order, as knownhosts would list them in a KeyError.
func (db *knownHostsDB) lookup(addr string) ([]knownhosts.KnownKey, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("knownhosts: SplitHostPort(%s): %v", addr, err)
	}
	out := db.plain[hostPort{host, port}]
	if db.patterned == nil {
		return out, nil
	}
	out = slices.Clone(out)
	var ke *knownhosts.KeyError
	if err := db.patterned(addr, fakeAddr(addr), db.probe); errors.As(err, &ke) && len(ke.Want) > 0 {
		for _, k := range ke.Want {
			k.Filename = db.files[k.Filename]
			out = append(out, k)
		}
		slices.SortStableFunc(out, func(a, b knownhosts.KnownKey) int {
			if d := db.order[a.Filename] - db.order[b.Filename]; d != 0 {
				return d
			}
			return a.Line - b.Line
		})
	}
	return out, nil
}

// check is knownhosts' HostKeyCallback for addr, given the keys lookup
// returned for it: a revoked key is refused first, then the key must be one
// of the known ones.
func (db *knownHostsDB) check(addr string, remote net.Addr, key ssh.PublicKey, known []knownhosts.KnownKey) error {
	if _, ok := key.(*ssh.Certificate); ok {
		if db.patterned == nil {
			// What knownhosts says with no @cert-authority line.
			return fmt.Errorf("ssh: no authorities for hostname: %v", addr)
		}
		return db.patterned(addr, remote, key)
	}
	if r, ok := db.revoked[plainKeyBlob(key)]; ok {
		return &knownhosts.RevokedError{Revoked: r}
	}
	blob := key.Marshal()
	for _, k := range known {
		if bytes.Equal(k.Key.Marshal(), blob) {
			return nil
		}
	}
	return &knownhosts.KeyError{Want: known}
}
