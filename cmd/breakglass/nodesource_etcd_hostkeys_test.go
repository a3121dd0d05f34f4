package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/sshclient"
)

type fakeNodeSource []nodeops.ClusterNode

func (s fakeNodeSource) ListNodes(context.Context) ([]nodeops.ClusterNode, error) { return s, nil }

// okRunner answers every command with success.
type okRunner struct{}

func (okRunner) Run(context.Context, nodeops.Target, nodeops.Command) (nodeops.Output, error) {
	return nodeops.Output{}, nil
}
func (okRunner) Close() error { return nil }

// TestAcceptNewHostKeysRefusedForEtcdAddresses: a node whose address comes
// from its Node object in etcd could name any address to trust, so
// --accept-new-host-keys is refused (exit 4) before any node is reached;
// nodes whose address the inventory gives are fine.
func TestAcceptNewHostKeysRefusedForEtcdAddresses(t *testing.T) {
	inv := filepath.Join(t.TempDir(), "breakglass.yaml")
	os.WriteFile(inv, []byte("ssh:\n  config: none\nnodes:\n  - {name: cp-1, address: 10.0.0.1, roles: [control-plane]}\n"), 0o600)
	cluster := fakeNodeSource{
		{Name: "cp-1", InternalIP: "10.0.0.1"},
		{Name: "w-1", InternalIP: "10.0.0.21", Roles: []string{"worker"}},
	}
	run := func(args ...string) (string, int, bool) {
		var out, errOut bytes.Buffer
		d := newDeps()
		d.In, d.Out, d.ErrOut = strings.NewReader(""), &out, &errOut
		d.InIsTTY, d.OutIsTTY, d.ErrIsTTY = false, false, false
		d.NodeSource = func(context.Context) (nodeops.NodeSource, error) { return cluster, nil }
		dialled := false
		d.NewRunner = func(sshclient.Options) (NodeRunner, error) {
			dialled = true
			return okRunner{}, nil
		}
		root := newRootCmd(d)
		root.SetArgs(append([]string{"--inventory", inv}, args...))
		ctx := context.Background()
		code := reportError(&errOut, root.ExecuteContext(ctx), ctx)
		return errOut.String(), code, dialled
	}
	for _, cmd := range [][]string{{"exec"}, {"nodes", "check"}} {
		args := append(append([]string{}, cmd...), "--nodes-source", "etcd", "--accept-new-host-keys")
		if cmd[0] == "exec" {
			args = append(args, "--", "true")
		}
		errOut, code, dialled := run(args...)
		if code != exitRefused || dialled {
			t.Errorf("%s: exit %d, runner made: %v\n%s", cmd, code, dialled, errOut)
		}
		for _, want := range []string{"w-1", "etcd", "hint: ", "inventory", "@cert-authority"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("%s: error does not mention %q:\n%s", cmd, want, errOut)
			}
		}
	}
	// Only inventory addresses (cp-1 is completed from etcd, its address is
	// the inventory's), or no --accept-new-host-keys: no refusal.
	for _, args := range [][]string{
		{"exec", "--nodes-source", "etcd", "--nodes", "cp-1", "--accept-new-host-keys", "--", "true"},
		{"exec", "--nodes-source", "etcd", "--", "true"},
		{"exec", "--accept-new-host-keys", "--", "true"},
	} {
		if errOut, code, dialled := run(args...); code != exitOK || !dialled {
			t.Errorf("%s: exit %d, runner made: %v\n%s", args, code, dialled, errOut)
		}
	}
}
