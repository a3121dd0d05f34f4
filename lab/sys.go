package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// sh runs a system tool (ip, mount, nsenter, ...) and returns its trimmed
// output; a failure carries the tool's own words.
func sh(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return out.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, msg)
	}
	return strings.TrimSpace(out.String()), nil
}

// inHost returns the argv prefix that enters a host's network, mount and UTS
// namespaces.
func (h Host) inHost(argv ...string) []string {
	return append([]string{"nsenter", "--net=/run/netns/" + h.Netns, "--mount=" + h.MountNS, "--uts=" + h.UTSNS, "--"}, argv...)
}

// shIn runs a command inside a host.
func shIn(ctx context.Context, h Host, argv ...string) (string, error) {
	full := h.inHost(argv...)
	return sh(ctx, full[0], full[1:]...)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, mode)
}

// writeAtomic writes data to path through a temporary file beside it and a
// rename, so that a reader sees the old bytes or the new, never a part.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func requireTools(tools ...string) error {
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s\nhint: apt-get install containerd runc openssh-server nftables containernetworking-plugins etcd-server etcd-client iproute2 util-linux (or run bash .ci/run once)", strings.Join(missing, ", "))
	}
	return nil
}

// poll checks cond every interval until it holds, ctx ends, or timeout
// passes; a check that fails only means "not yet". It returns ctx's error if
// ctx ended and errTimeout otherwise, so each caller says what it waited for.
func poll(ctx context.Context, interval, timeout time.Duration, cond func(context.Context) bool) error {
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		return cond(ctx), nil
	})
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return errTimeout
	}
	return nil
}

var errTimeout = errors.New("timed out")
