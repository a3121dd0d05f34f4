package sshclient

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/nodeops/simssh"
)

// TestKnownHostsIndexMatchesKnownhosts checks the index against
// knownhosts.New on the same files: for every address and key, the same
// verdict, the same known keys (file and line) and the same revocation.
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
		"@cert-authority " + line("*.ca.example", "a"),
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
		known, err := db.lookup(addr)
		if err != nil {
			t.Fatal(err)
		}
		for kn, k := range keys {
			remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
			w := want(addr, remote, k)
			g := db.check(addr, remote, k, known)
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
	remote := &net.TCPAddr{IP: net.IPv4(127, 88, 19, 249), Port: 2222}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		known, _ := db.lookup("127.88.19.249:2222")
		if err := db.check("127.88.19.249:2222", remote, key, known); err != nil {
			b.Fatal(err)
		}
	}
}
