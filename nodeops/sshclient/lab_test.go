package sshclient_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/breakglass/breakglass/lab/labtest"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/inventory"
	"github.com/breakglass/breakglass/nodeops/selector"
	"github.com/breakglass/breakglass/nodeops/sshclient"
)

func labClient(t *testing.T, edit func(*sshclient.Options)) ([]nodeops.Target, *sshclient.Client) {
	s := labtest.Lab(t)
	inv, err := inventory.Load(s.Inventory)
	if err != nil {
		t.Fatal(err)
	}
	nodes, _, err := selector.Universe(context.Background(), inv, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := sshclient.FromInventory(inv)
	if edit != nil {
		edit(&o)
	}
	c, err := sshclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return nodes, c
}

// TestLabExecOnAllHosts runs a command on every lab host's real sshd.
func TestLabExecOnAllHosts(t *testing.T) {
	nodes, c := labClient(t, nil)
	res := fanout.RunCommand(context.Background(), c, nodes, nodeops.Command{Line: "cat /proc/sys/kernel/hostname; id -u"}, fanout.Options{Concurrency: 8})
	for _, r := range res {
		if r.Status != nodeops.StatusOK {
			t.Errorf("%s: %v", r.Target.Name, r.Err)
			continue
		}
		if !strings.HasSuffix(string(r.Output.Stdout), "0\n") {
			t.Errorf("%s: %q", r.Target.Name, r.Output.Stdout)
		}
	}
}

// TestLabChangedHostKey: a lab host whose known_hosts line holds another
// key is refused; the others proceed.
func TestLabChangedHostKey(t *testing.T) {
	s := labtest.Lab(t)
	b, err := os.ReadFile(s.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	victim := s.Hosts[len(s.Hosts)-1]
	// Give the victim the key of another host.
	var other, kept []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		if f[0] == knownhosts.Normalize(victim.Address+":22") {
			continue
		}
		kept = append(kept, line)
		if other == nil {
			other = f
		}
	}
	kept = append(kept, knownhosts.Normalize(victim.Address+":22")+" "+other[1]+" "+other[2])
	kh := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(kh, []byte(strings.Join(kept, "\n")+"\n"), 0o600)
	nodes, c := labClient(t, func(o *sshclient.Options) { o.KnownHosts = []string{kh} })
	res := fanout.RunCommand(context.Background(), c, nodes, nodeops.Command{Line: "true"}, fanout.Options{Concurrency: 8})
	for _, r := range res {
		want := nodeops.StatusOK
		if r.Target.Address == victim.Address {
			want = nodeops.StatusRefused
		}
		if r.Status != want {
			t.Errorf("%s: %s, want %s: %v", r.Target.Name, r.Status, want, r.Err)
		}
	}
}

// TestLabJumpHost reaches the workers through the control-plane host.
func TestLabJumpHost(t *testing.T) {
	s := labtest.Lab(t)
	bastion := s.Hosts[0]
	nodes, c := labClient(t, func(o *sshclient.Options) { o.JumpHost = "root@" + bastion.Address })
	res := fanout.RunCommand(context.Background(), c, nodes[1:], nodeops.Command{Line: `echo "$SSH_CONNECTION"`}, fanout.Options{Concurrency: 8})
	for _, r := range res {
		if r.Status != nodeops.StatusOK {
			t.Fatalf("%s: %v", r.Target.Name, r.Err)
		}
		if !strings.HasPrefix(string(r.Output.Stdout), bastion.Address+" ") {
			t.Errorf("%s: connection does not come from the bastion: %q", r.Target.Name, r.Output.Stdout)
		}
	}
}
