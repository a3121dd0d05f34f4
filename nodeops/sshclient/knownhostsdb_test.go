package sshclient

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/nodeops/simssh"
)

// TestKnownHostsIndexMatchesKnownhosts checks the index against
// knownhosts.New on the same files: for every address and plain key, the
// same verdict, the same known keys (file and line) and the same
// revocation. (@cert-authority lines are left out: knownhosts also takes
// a CA's key for a host key of the hosts the line names, which OpenSSH
// does not; TestCAKeyIsNotAHostKey.)
func TestKnownHostsIndexMatchesKnownhosts(t *testing.T) {
	keys := map[string]ssh.PublicKey{}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "stranger"} {
		keys[n] = simssh.NewHostKey().PublicKey()
	}
	line := func(hosts string, k string) string {
		return hosts + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(keys[k])))
	}
	dir := t.TempDir()
	f1 := filepath.Join(dir, "known_hosts")
	f2 := filepath.Join(dir, "known_hosts2")
	os.WriteFile(f1, []byte(strings.Join([]string{
		"# a comment",
		line("plain.example", "a"),
		"",
		line("[plain.example]:2222,10.0.0.1", "b"),
		line(knownhosts.HashHostname("hashed.example"), "c"),
		line("*.wild.example,!bad.wild.example", "d"),
		line("10.0.0.1", "e"), // a second key for 10.0.0.1:22
		"@revoked " + line("*", "f"),
		line("revoked.example", "f"),
		line("[::1]:2200,fe80::1", "g"),
		line("host.wild.example:2022", "b"), // host:port without brackets
	}, "\n")+"\n"), 0o600)
	os.WriteFile(f2, []byte(strings.Join([]string{
		line("plain.example", "c"),
		line(knownhosts.HashHostname("[plain.example]:2222"), "d"),
	}, "\n")+"\n"), 0o600)

	files := []string{f1, f2}
	want, err := knownhosts.New(files...)
	if err != nil {
		t.Fatal(err)
	}
	db, err := loadKnownHosts(files)
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{"plain.example:22", "plain.example:2222", "10.0.0.1:22", "10.0.0.1:2222", "hashed.example:22",
		"hashed.example:2022", "x.wild.example:22", "bad.wild.example:22", "revoked.example:22", "[::1]:2200",
		"[fe80::1]:22", "[::1]:22", "y.ca.example:22", "host.wild.example:2022", "unknown.example:22"}
	for _, addr := range addrs {
		trust, err := db.lookup(addr)
		if err != nil {
			t.Fatal(err)
		}
		for kn, k := range keys {
			remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
			w := want(addr, remote, k)
			g := trust.checkPlain(k)
			if fmt.Sprint(w) != fmt.Sprint(g) {
				t.Errorf("%s key %s: got %v, want %v", addr, kn, g, w)
				continue
			}
			var wke, gke *knownhosts.KeyError
			if errors.As(w, &wke) && errors.As(g, &gke) && !reflect.DeepEqual(describe(wke.Want), describe(gke.Want)) {
				t.Errorf("%s key %s: known %v, want %v", addr, kn, describe(gke.Want), describe(wke.Want))
			}
			var wre, gre *knownhosts.RevokedError
			if errors.As(w, &wre) && (!errors.As(g, &gre) || wre.Revoked.String() != gre.Revoked.String()) {
				t.Errorf("%s key %s: revoked %v, want %v", addr, kn, g, wre.Revoked.String())
			}
		}
	}
}

func describe(ks []knownhosts.KnownKey) []string {
	var out []string
	for _, k := range ks {
		out = append(out, k.String())
	}
	return out
}

func TestKnownHostsIndexRejectsWhatKnownhostsRejects(t *testing.T) {
	f := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(f, []byte("host.example ssh-ed25519 not-base64!\n"), 0o600)
	_, werr := knownhosts.New(f)
	_, err := loadKnownHosts([]string{f})
	if werr == nil || err == nil || werr.Error() != err.Error() {
		t.Fatalf("got %v, want %v", err, werr)
	}
}

// BenchmarkKnownHostsLookup is a lookup and check in a 5,000-line file, as
// for one node of a 5,000-node fleet.
func BenchmarkKnownHostsLookup(b *testing.B) {
	key := simssh.NewHostKey().PublicKey()
	var sb strings.Builder
	for i := 0; i < 5000; i++ {
		fmt.Fprintln(&sb, knownhosts.Line([]string{fmt.Sprintf("[127.88.%d.%d]:2222", i/250, i%250)}, key))
	}
	f := filepath.Join(b.TempDir(), "known_hosts")
	os.WriteFile(f, []byte(sb.String()), 0o600)
	db, err := loadKnownHosts([]string{f})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		trust, _ := db.lookup("127.88.19.249:2222")
		if err := trust.checkPlain(key); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCAKeyIsNotAHostKey: knownhosts accepts a @cert-authority key as the
// host key of the hosts its line names; OpenSSH, and breakglass, do not.
func TestCAKeyIsNotAHostKey(t *testing.T) {
	ca := simssh.NewHostKey().PublicKey()
	f := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(f, []byte("@cert-authority *.ca.example "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca)))+"\n"), 0o600)
	db, err := loadKnownHosts([]string{f})
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := db.lookup("y.ca.example:22")
	if len(trust.authorities) != 1 || len(trust.known) != 0 {
		t.Fatalf("authorities %v known %v", describe(trust.authorities), describe(trust.known))
	}
	var ke *knownhosts.KeyError
	if err := newHostKeys(false).check(trust, ca); !errors.As(err, new(*HostKeyError)) {
		t.Errorf("the CA's own key as host key: %v", err)
	}
	if err := trust.checkPlain(ca); !errors.As(err, &ke) || len(ke.Want) != 0 {
		t.Errorf("checkPlain: %v", err)
	}
}

// TestAlgorithmsAskForCertificates: a host a @cert-authority line covers
// is asked for certificates first, then its known key types, or any key
// when none is known; a host with known keys only is asked for those.
func TestAlgorithmsAskForCertificates(t *testing.T) {
	ed := simssh.NewHostKey().PublicKey()
	kk := func(k ssh.PublicKey) []knownhosts.KnownKey { return []knownhosts.KnownKey{{Key: k}} }
	certAlgos := 0
	for _, a := range ssh.SupportedAlgorithms().HostKeys {
		if strings.Contains(a, "-cert-") {
			certAlgos++
		}
	}
	got := algorithms(&hostTrust{authorities: kk(ed), known: kk(ed)})
	if len(got) != certAlgos+1 || got[0] != ssh.SupportedAlgorithms().HostKeys[0] || got[len(got)-1] != ssh.KeyAlgoED25519 ||
		!slices.Contains(got, ssh.CertAlgoED25519v01) || !slices.Contains(got, ssh.CertAlgoRSASHA512v01) {
		t.Errorf("CA and an ed25519 key: %v", got)
	}
	got = algorithms(&hostTrust{authorities: kk(ed)})
	if !strings.Contains(got[0], "-cert-") || !slices.Contains(got, ssh.KeyAlgoED25519) || !slices.Contains(got, ssh.KeyAlgoRSASHA256) {
		t.Errorf("CA, no known key: %v", got)
	}
	if got := algorithms(&hostTrust{known: kk(ed)}); !reflect.DeepEqual(got, []string{ssh.KeyAlgoED25519}) {
		t.Errorf("known ed25519 key only: %v", got)
	}
	if got := algorithms(&hostTrust{}); got != nil {
		t.Errorf("unknown host: %v, want the library's default", got)
	}
}

// FuzzKnownHostsMatch holds the known_hosts reader and matcher to
// x/crypto/ssh/knownhosts on plain-key lines: the same files accepted
// (with the same error), the same verdict for the line's key and for
// another key, and the same known keys. pattern is the line's host field,
// hashed with salt when salt is not empty; the address is host:port.
func FuzzKnownHostsMatch(f *testing.F) {
	f.Add("node1.example,10.0.0.1", "10.0.0.1", "22", []byte(nil))
	f.Add("[10.0.0.1]:2222,!bad", "10.0.0.1", "2222", []byte(nil))
	f.Add("*.example,!bad.example", "bad.example", "22", []byte(nil))
	f.Add("[node1.example]:2222", "node1.example", "2222", []byte("salt"))
	f.Add("fe80::1", "fe80::1", "22", []byte(nil))
	dir := f.TempDir()
	key := simssh.NewHostKey().PublicKey()
	other := simssh.NewHostKey().PublicKey()
	keyText := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	f.Fuzz(func(t *testing.T, pattern, host, port string, salt []byte) {
		if len(salt) > 0 {
			mac := hmac.New(sha1.New, salt)
			mac.Write([]byte(pattern))
			pattern = "|1|" + base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(mac.Sum(nil))
		}
		line := pattern + " " + keyText
		if w, _ := nextWord(bytes.Trim([]byte(line), " \t")); w == markerCA || w == markerRevoked || strings.ContainsAny(line, "\r\n") {
			t.Skip("not a plain-key line")
		}
		if strings.Count(pattern, "*") > 3 || len(host) > 64 {
			// knownhosts' recursive wildcard matching takes time
			// exponential in the stars.
			t.Skip("too slow for knownhosts")
		}
		path := filepath.Join(dir, "known_hosts")
		if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		want, werr := knownhosts.New(path)
		file, gerr := parseKnownHosts(strings.NewReader(line+"\n"), path)
		if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
			t.Fatalf("line %q: knownhosts says %v, we say %v", line, werr, gerr)
		}
		if werr != nil {
			return
		}
		db := &knownHostsDB{files: []*knownHostsFile{file}}
		addr := net.JoinHostPort(host, port)
		remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
		trust, lerr := db.lookup(addr)
		for _, k := range []ssh.PublicKey{key, other} {
			w := want(addr, remote, k)
			var g error = lerr
			if lerr == nil {
				g = trust.checkPlain(k)
			}
			if fmt.Sprint(w) != fmt.Sprint(g) {
				t.Fatalf("line %q, address %q: knownhosts says %v, we say %v", line, addr, w, g)
			}
			var wke, gke *knownhosts.KeyError
			if errors.As(w, &wke) && errors.As(g, &gke) && !reflect.DeepEqual(describe(wke.Want), describe(gke.Want)) {
				t.Fatalf("line %q, address %q: known %v, want %v", line, addr, describe(gke.Want), describe(wke.Want))
			}
		}
	})
}
