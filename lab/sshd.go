package lab

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// writeKeyPair writes an OpenSSH private key and its .pub file.
func writeKeyPair(path string, key crypto.Signer, comment string) (ssh.PublicKey, error) {
	block, err := ssh.MarshalPrivateKey(key, comment)
	if err != nil {
		return nil, err
	}
	if err := writeFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " " + comment + "\n"
	return pub, writeFile(path+".pub", []byte(line), 0o644)
}

// newOperatorKey writes the operator's SSH key that every host trusts.
func newOperatorKey(dir string) (ssh.PublicKey, string, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	path := filepath.Join(dir, "ssh", "id_ed25519")
	pub, err := writeKeyPair(path, priv, "breakglass-lab-operator")
	return pub, path, err
}

// setupSSHD writes a host's sshd configuration and host keys (ed25519,
// ecdsa and rsa, as a stock sshd offers) and returns its known_hosts lines.
func setupSSHD(h Host, operator ssh.PublicKey) (knownHosts []string, err error) {
	dir := filepath.Join(h.Root, "sshd")
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	var hostKeyLines []string
	for _, k := range []struct {
		name string
		key  crypto.Signer
	}{{"ssh_host_ed25519_key", edKey}, {"ssh_host_ecdsa_key", ecKey}, {"ssh_host_rsa_key", rsaKey}} {
		p := filepath.Join(dir, k.name)
		pub, err := writeKeyPair(p, k.key, "root@"+h.Name)
		if err != nil {
			return nil, err
		}
		hostKeyLines = append(hostKeyLines, "HostKey "+p)
		knownHosts = append(knownHosts, fmt.Sprintf("%s %s", h.Address, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))))
	}
	auth := filepath.Join(dir, "authorized_keys")
	// Public keys only; readable by every user sshd lets in (it reads the
	// file as the user), so that tests can log in as a non-root user.
	if err := writeFile(auth, ssh.MarshalAuthorizedKey(operator), 0o644); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`# sshd of lab host %s, written by breakglass lab up
ListenAddress %s
Port 22
%s
AuthorizedKeysFile %s
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 200:30:400
MaxSessions 50
AllowStreamLocalForwarding yes
AllowTcpForwarding yes
Subsystem sftp internal-sftp
`, h.Name, h.Address, strings.Join(hostKeyLines, "\n"), auth)
	return knownHosts, writeFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o644)
}

func sshdSpec(h Host) Spec {
	return Spec{Argv: []string{"/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(h.Root, "sshd", "sshd_config")}}
}
