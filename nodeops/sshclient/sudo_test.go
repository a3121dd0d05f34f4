package sshclient_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

// throwawayUser creates a local user that can log in with the fixture's
// key, and removes it, and its sudoers drop-in if any, when the test ends.
func throwawayUser(t *testing.T, fx *sshdtest.Fixture, suffix string, sudoers string) string {
	t.Helper()
	name := fmt.Sprintf("bgt%d%s", os.Getpid()%100000, suffix)
	// "*" rather than useradd's "!": sshd without PAM refuses a locked
	// account even for key authentication.
	if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", "-p", "*", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() {
		// -f: a session of the user may outlive the test's sshd.
		if out, err := exec.Command("userdel", "-f", "-r", name).CombinedOutput(); err != nil {
			t.Logf("userdel %s: %v %s", name, err, out)
		}
	})
	// sshd reads authorized_keys as the user: the fixture's own file is
	// root's, so the key goes into the user's home.
	pub, err := os.ReadFile(fx.ClientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	script := `mkdir -p ~/.ssh && cat > ~/.ssh/authorized_keys && chmod 700 ~/.ssh && chmod 600 ~/.ssh/authorized_keys`
	cmd := exec.Command("su", "-s", "/bin/sh", "-c", script, name)
	cmd.Stdin = strings.NewReader(string(pub))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("authorized_keys for %s: %v %s", name, err, out)
	}
	if sudoers != "" {
		f := filepath.Join("/etc/sudoers.d", name)
		if err := os.WriteFile(f, []byte(strings.ReplaceAll(sudoers, "USER", name)+"\n"), 0o440); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(f) })
		if out, err := exec.Command("visudo", "-c", "-f", f).CombinedOutput(); err != nil {
			t.Fatalf("sudoers drop-in: %v %s", err, out)
		}
	}
	return name
}

// TestSudoForNonRootUser logs in to real sshd as non-root users: one with
// passwordless sudo (commands run as root through sudo -n), one without
// (refused with reason sudo and a hint, never a password prompt), and
// NoSudo commands run as the user itself.
func TestSudoForNonRootUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create users")
	}
	for _, tool := range []string{"useradd", "userdel", "sudo", "visudo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	withSudo := throwawayUser(t, fx, "s", "USER ALL=(ALL) NOPASSWD: ALL")
	without := throwawayUser(t, fx, "n", "")
	target := func(user string) nodeops.Target {
		s := fx.Servers[0]
		return nodeops.Target{Name: user, Address: s.Host, Port: s.Port, User: user}
	}
	c := newClient(t, fixtureOptions(fx))

	if !c.UsesSudo(target(withSudo)) || c.UsesSudo(nodeops.Target{Name: "r", Address: "x", User: "root"}) {
		t.Fatalf("sudo policy auto: want sudo for %s and not for root", withSudo)
	}
	out, err := c.Run(context.Background(), target(withSudo), nodeops.Command{Line: "id -u; echo \"$0\""})
	if err != nil {
		t.Fatalf("%s with NOPASSWD: %v\n%s\nsshd log:\n%s", withSudo, err, out.Stderr, fx.Servers[0].Log())
	}
	if got := strings.Fields(string(out.Stdout)); len(got) != 2 || got[0] != "0" || got[1] != "sh" {
		t.Errorf("%s under sudo: stdout %q, want uid 0 from sh -c", withSudo, out.Stdout)
	}
	out, err = c.Run(context.Background(), target(withSudo), nodeops.Command{Line: "id -un", NoSudo: true})
	if err != nil || strings.TrimSpace(string(out.Stdout)) != withSudo {
		t.Errorf("NoSudo: %q %v, want %s", out.Stdout, err, withSudo)
	}

	out, err = c.Run(context.Background(), target(without), nodeops.Command{Line: "id -u"})
	st, reason := nodeops.StatusOf(err)
	if st != nodeops.StatusRefused || reason != "sudo" {
		t.Fatalf("%s without sudoers: %s %s: %v\nstderr: %s", without, st, reason, err, out.Stderr)
	}
	if msg := err.Error(); !strings.Contains(msg, "sudo -n refused for "+without) || !strings.Contains(msg, "hint: ") {
		t.Errorf("error: %s", msg)
	}
	if len(out.Stdout) != 0 {
		t.Errorf("the command ran anyway: %q", out.Stdout)
	}

	// sudo never: the command runs as the user, without sudo.
	o := fixtureOptions(fx)
	o.Sudo = "never"
	out, err = newClient(t, o).Run(context.Background(), target(without), nodeops.Command{Line: "id -un"})
	if err != nil || strings.TrimSpace(string(out.Stdout)) != without {
		t.Errorf("sudo never: %q %v", out.Stdout, err)
	}
}
