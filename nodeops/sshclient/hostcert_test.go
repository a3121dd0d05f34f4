package sshclient_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

// caLine is a @cert-authority line for pattern.
func caLine(pattern string, ca ssh.PublicKey) string {
	return "@cert-authority " + pattern + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca)))
}

func revokedLine(k ssh.PublicKey) string {
	return "@revoked * " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

func writeLines(t *testing.T, path string, lines ...string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hostCAFixture starts one sshd whose host key a fresh CA signed, and
// returns options whose user known_hosts does not exist and whose global
// known_hosts (which the test writes) is the fixture's.
func hostCAFixture(t *testing.T, principals ...string) (*sshdtest.Fixture, ssh.PublicKey, sshclient.Options) {
	t.Helper()
	if why := sshdtest.Available(); why != "" {
		t.Skip(why)
	}
	ca, caPub, err := sshdtest.WriteKey(filepath.Join(t.TempDir(), "host_ca"))
	if err != nil {
		t.Fatal(err)
	}
	fx := sshdtest.Start(t, 1, sshdtest.Options{HostCA: ca, HostPrincipals: principals})
	o := fixtureOptions(fx)
	o.KnownHosts = []string{filepath.Join(t.TempDir(), "known_hosts")}
	return fx, caPub, o
}

func globalFile(o sshclient.Options) string { return o.GlobalKnownHosts[0] }

func runTrue(t *testing.T, o sshclient.Options, tg nodeops.Target) error {
	t.Helper()
	_, err := newClient(t, o).Run(context.Background(), tg, nodeops.Command{Line: "true"})
	return err
}

func wantRefused(t *testing.T, err error, reason string, mention ...string) {
	t.Helper()
	var ne *nodeops.Error
	if !errors.As(err, &ne) || ne.Status != nodeops.StatusRefused || ne.Reason != reason {
		t.Fatalf("want refused %s, got %v", reason, err)
	}
	for _, m := range append(mention, "hint: ") {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error does not mention %q:\n%v", m, err)
		}
	}
}

// TestHostCertificateTrustedThroughGlobalCA: the host's key is in no
// known_hosts file; a @cert-authority line in the global file trusts the
// CA that signed its certificate, which must be enough, without recording
// anything.
func TestHostCertificateTrustedThroughGlobalCA(t *testing.T) {
	fx, caPub, o := hostCAFixture(t)
	s := fx.Servers[0]
	writeLines(t, globalFile(o), "# the fleet's host CA", caLine("[127.0.0.1]:"+strconv.Itoa(s.Port), caPub))
	o.AcceptNewHostKeys = true // a fall back to trust on first use would show as a recorded key
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("host certificate signed by the global CA: %v", err)
	}
	if _, err := os.Stat(o.KnownHosts[0]); !os.IsNotExist(err) {
		b, _ := os.ReadFile(o.KnownHosts[0])
		t.Fatalf("the host was accepted by recording its key, not by its certificate: %s", b)
	}
	// A hashed and wildcard pattern for the host works the same.
	writeLines(t, globalFile(o), caLine(knownhosts.HashHostname(knownhosts.Normalize(s.Addr())), caPub))
	o.AcceptNewHostKeys = false
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("hashed @cert-authority pattern: %v", err)
	}
	writeLines(t, globalFile(o), caLine("[127.0.0.*]:"+strconv.Itoa(s.Port), caPub))
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("wildcard @cert-authority pattern: %v", err)
	}
}

// TestHostCertificateBeatsStaleKnownKey: a node rebuilt with a new key and
// a new certificate still has its old key in known_hosts. As with ssh, the
// client asks it for its certificate first (the CA covers it), rather than
// only for the known key's type, which would end in HOST KEY CHANGED.
func TestHostCertificateBeatsStaleKnownKey(t *testing.T) {
	fx, caPub, o := hostCAFixture(t)
	s := fx.Servers[0]
	_, old, _ := sshdtest.WriteKey(filepath.Join(t.TempDir(), "old"))
	writeLines(t, o.KnownHosts[0], knownhosts.Line([]string{s.Addr()}, old))
	writeLines(t, globalFile(o), caLine("[127.0.0.1]:"+strconv.Itoa(s.Port), caPub))
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("certificate with a stale known key: %v", err)
	}
	// Without the CA, the stale key is a changed key.
	os.Remove(globalFile(o))
	wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-key-changed", o.KnownHosts[0]+":1")
}

// TestCertificateAuthorityForOtherHostsNotTrusted: a CA line whose host
// pattern does not cover the host trusts nothing for it, and a certificate
// from a CA the host's line does not name, or for other principals, is
// refused rather than taken as a bare key.
func TestCertificateAuthorityForOtherHostsNotTrusted(t *testing.T) {
	fx, caPub, o := hostCAFixture(t)
	s := fx.Servers[0]
	port := strconv.Itoa(s.Port)
	for _, pattern := range []string{"[10.9.9.9]:" + port, "*.example.com", "127.0.0.1", "[127.0.0.1]:1" + port, "[127.0.0.*]:" + port + ",![127.0.0.1]:" + port} {
		writeLines(t, globalFile(o), caLine(pattern, caPub))
		wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-key-unknown", ssh.FingerprintSHA256(s.HostKey))
	}

	// The host's line names another CA.
	_, otherCA, err := sshdtest.WriteKey(filepath.Join(t.TempDir(), "other_ca"))
	if err != nil {
		t.Fatal(err)
	}
	writeLines(t, globalFile(o), caLine("[127.0.0.1]:"+port, otherCA))
	wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-cert-invalid", ssh.FingerprintSHA256(caPub), "@cert-authority")
	// Even --accept-new-host-keys does not fall back to the bare key.
	o.AcceptNewHostKeys = true
	wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-cert-invalid")
	if _, err := os.Stat(o.KnownHosts[0]); !os.IsNotExist(err) {
		t.Errorf("a host whose certificate failed was recorded")
	}
}

func TestHostCertificateForOtherPrincipalsRefused(t *testing.T) {
	fx, caPub, o := hostCAFixture(t, "node1.example.com")
	s := fx.Servers[0]
	writeLines(t, globalFile(o), caLine("[127.0.0.1]:"+strconv.Itoa(s.Port), caPub))
	wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-cert-invalid", "principal", "node1.example.com")

	// Its bare key in known_hosts is still trusted, as by ssh.
	writeLines(t, o.KnownHosts[0], knownhosts.Line([]string{s.Addr()}, s.HostKey))
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("bare key in known_hosts: %v", err)
	}
}

// TestRevokedHostKeysRefused: a @revoked key is refused although it is
// also listed as the host's key, and a certificate is refused when its
// key or the CA that signed it is revoked.
func TestRevokedHostKeysRefused(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		fx := sshdtest.Start(t, 1, sshdtest.Options{})
		o := fixtureOptions(fx) // the user file lists the key
		s := fx.Servers[0]
		if err := runTrue(t, o, targets(fx)[0]); err != nil {
			t.Fatal(err)
		}
		writeLines(t, globalFile(o), revokedLine(s.HostKey))
		wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-key-revoked", globalFile(o)+":1")
	})

	fx, caPub, o := hostCAFixture(t)
	s := fx.Servers[0]
	ca := caLine("[127.0.0.1]:"+strconv.Itoa(s.Port), caPub)
	writeLines(t, globalFile(o), ca)
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatal(err)
	}
	t.Run("certificate's key", func(t *testing.T) {
		writeLines(t, globalFile(o), ca, revokedLine(s.HostKey))
		wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-key-revoked", globalFile(o)+":2")
	})
	t.Run("certificate's CA", func(t *testing.T) {
		// The revocation is in the user's file, the CA in the global one.
		writeLines(t, globalFile(o), ca)
		writeLines(t, o.KnownHosts[0], revokedLine(caPub))
		wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-key-revoked", o.KnownHosts[0]+":1")
	})
}

// TestGlobalKnownHosts: a key listed only in the global file is trusted; a
// global line with another key for the host is a changed key.
func TestGlobalKnownHosts(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	s := fx.Servers[0]
	o := fixtureOptions(fx)
	o.KnownHosts = []string{filepath.Join(t.TempDir(), "known_hosts")}
	writeLines(t, globalFile(o), knownhosts.Line([]string{s.Addr()}, s.HostKey))
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("key in the global known_hosts: %v", err)
	}
	_, other, _ := sshdtest.WriteKey(filepath.Join(t.TempDir(), "other"))
	writeLines(t, globalFile(o), knownhosts.Line([]string{s.Addr()}, other))
	o.AcceptNewHostKeys = true
	wantRefused(t, runTrue(t, o, targets(fx)[0]), "host-key-changed", globalFile(o)+":1")
}

// TestAcceptNewRecordsInFirstUserFile: with several user files and a
// global one, a new key goes to the first user file and nowhere else.
func TestAcceptNewRecordsInFirstUserFile(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	s := fx.Servers[0]
	dir := t.TempDir()
	o := fixtureOptions(fx)
	o.KnownHosts = []string{filepath.Join(dir, "known_hosts"), filepath.Join(dir, "known_hosts2")}
	_, other, _ := sshdtest.WriteKey(filepath.Join(dir, "other"))
	global := knownhosts.Line([]string{"[192.0.2.1]:22"}, other) + "\n"
	os.WriteFile(globalFile(o), []byte(global), 0o600)
	o.AcceptNewHostKeys = true
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(o.KnownHosts[0])
	if want := knownhosts.Line([]string{s.Addr()}, s.HostKey); strings.TrimSpace(string(b)) != want {
		t.Errorf("first user file: %q, want %q", b, want)
	}
	if _, err := os.Stat(o.KnownHosts[1]); !os.IsNotExist(err) {
		t.Errorf("second user file was written")
	}
	if b, _ := os.ReadFile(globalFile(o)); string(b) != global {
		t.Errorf("global file was written: %q", b)
	}
}

// TestUserCertificateLogin: sshd trusts a user CA and does not list the
// client's key: the certificate named by CertificateFile in the ssh config
// logs in, and so does one beside the key (id-cert.pub), as with ssh.
func TestUserCertificateLogin(t *testing.T) {
	if why := sshdtest.Available(); why != "" {
		t.Skip(why)
	}
	dir := t.TempDir()
	userCA, _, err := sshdtest.WriteKey(filepath.Join(dir, "user_ca"))
	if err != nil {
		t.Fatal(err)
	}
	fx := sshdtest.Start(t, 1, sshdtest.Options{UserCA: userCA + ".pub", NoAuthorizedKey: true})
	o := fixtureOptions(fx)
	var ne *nodeops.Error
	if err := runTrue(t, o, targets(fx)[0]); !errors.As(err, &ne) || ne.Reason != "auth" {
		t.Fatalf("the bare key must be refused (not in authorized_keys): %v", err)
	}

	// The certificate lives apart from the key: only CertificateFile finds it.
	certDir := filepath.Join(dir, "certs")
	os.Mkdir(certDir, 0o700)
	pub, _ := os.ReadFile(fx.ClientKey + ".pub")
	os.WriteFile(filepath.Join(certDir, "operator.pub"), pub, 0o644)
	cert, err := sshdtest.SignCert(userCA, filepath.Join(certDir, "operator.pub"), false, "root")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "ssh_config")
	writeLines(t, cfg, "Host node*", "  CertificateFile "+cert)
	o.ConfigFile = cfg
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("CertificateFile: %v", err)
	}

	// A certificate for another user is offered, and refused.
	os.WriteFile(filepath.Join(certDir, "deploy.pub"), pub, 0o644)
	wrong, err := sshdtest.SignCert(userCA, filepath.Join(certDir, "deploy.pub"), false, "deploy")
	if err != nil {
		t.Fatal(err)
	}
	writeLines(t, cfg, "Host node*", "  CertificateFile "+wrong)
	if err := runTrue(t, o, targets(fx)[0]); !errors.As(err, &ne) || ne.Reason != "auth" {
		t.Fatalf("certificate for principal deploy, logging in as root: %v", err)
	}

	// ssh also offers KEY-cert.pub beside an identity file KEY.
	if _, err := sshdtest.SignCert(userCA, fx.ClientKey+".pub", false, "root"); err != nil {
		t.Fatal(err)
	}
	o.ConfigFile = ""
	if err := runTrue(t, o, targets(fx)[0]); err != nil {
		t.Fatalf("identity-cert.pub beside the key: %v", err)
	}
}

// relay returns a ProxyCommand prefix that takes "%h %p" and connects
// there, and whether it logs its uses to the returned file: the test's own
// relay (testdata/relay) when the go tool is here, else nc.
func relay(t *testing.T) (prefix, log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "relay.log")
	if _, err := exec.LookPath("go"); err == nil {
		bin := filepath.Join(dir, "relay")
		if out, err := exec.Command("go", "build", "-o", bin, "./testdata/relay").CombinedOutput(); err != nil {
			t.Fatalf("build relay: %v\n%s", err, out)
		}
		return bin + " " + log, log
	}
	if nc, err := exec.LookPath("nc"); err == nil {
		return nc, ""
	}
	t.Skip("neither the go tool (to build testdata/relay) nor nc is here")
	return "", ""
}

func TestProxyCommand(t *testing.T) {
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	prefix, log := relay(t)
	cfg := filepath.Join(t.TempDir(), "ssh_config")
	writeLines(t, cfg,
		"Host node1",
		"  ProxyCommand "+prefix+" %h %p",
		"Host broken",
		"  ProxyCommand sh -c 'echo cannot reach %h:%p as %r >&2; exit 3'",
		"Host jumped",
		"  ProxyJump root@"+fx.Servers[0].Addr(),
		"  ProxyCommand false")
	o := fixtureOptions(fx)
	o.ConfigFile = cfg
	c := newClient(t, o)
	tg := targets(fx)[0]
	out, err := c.Run(context.Background(), tg, nodeops.Command{Line: "echo through"})
	if err != nil || string(out.Stdout) != "through\n" {
		t.Fatalf("through the ProxyCommand: %q %v", out.Stdout, err)
	}
	if log != "" {
		b, _ := os.ReadFile(log)
		if want := tg.Address + " " + strconv.Itoa(tg.Port) + "\n"; string(b) != want {
			t.Fatalf("relay log %q, want %q: the ProxyCommand was not used", b, want)
		}
	}
	if now, _ := c.OpenConnections(); now != 0 {
		t.Errorf("%d connections still open", now)
	}

	// A ProxyCommand that fails says so, with what it printed.
	broken := nodeops.Target{Name: "broken", Address: tg.Address, Port: tg.Port}
	_, err = c.Run(context.Background(), broken, nodeops.Command{Line: "true"})
	var ne *nodeops.Error
	if !errors.As(err, &ne) || ne.Status != nodeops.StatusUnreachable || ne.Reason != "proxy-command" {
		t.Fatalf("failing ProxyCommand: %v", err)
	}
	for _, want := range []string{"cannot reach " + tg.Address + ":" + strconv.Itoa(tg.Port) + " as root", "exit status 3", "hint: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}

	// ProxyJump comes first in its block, so it wins over ProxyCommand.
	jumped := nodeops.Target{Name: "jumped", Address: tg.Address, Port: tg.Port}
	if _, err := c.Run(context.Background(), jumped, nodeops.Command{Line: "true"}); err != nil {
		t.Fatalf("ProxyJump before ProxyCommand: %v", err)
	}
}
