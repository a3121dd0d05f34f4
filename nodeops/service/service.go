// Package service stops and starts a node component (kubelet, the
// controller-manager) the way the node runs it, over SSH:
//
//   - a systemd unit (kubelet.service on kubeadm nodes): systemctl stop and
//     start;
//   - a file a supervisor watches: a static-pod manifest kubelet runs from
//     /etc/kubernetes/manifests (kube-controller-manager.yaml), or a spec
//     file of the rehearsal lab's supervisor. Moving the file out of its
//     directory stops the component (kubelet removes a static pod whose
//     manifest is gone); putting it back starts it.
//
// Whether the component runs is read from /proc: processes of that name
// in the node's own network namespace (the SSH session's), so that a
// container's process of the same name in a pod network is not counted.
package service

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/manifest"
)

// How a component is run on a node.
const (
	Systemd = "systemd"
	File    = "file"
)

// Component says what to look for on a node.
type Component struct {
	// Name is the process's name (its argv[0] base name): "kubelet",
	// "kube-controller-manager".
	Name string
	// Unit is its systemd unit ("kubelet"; "" for none).
	Unit string
	// Files are where a supervisor may run it from, in order of
	// preference (the first that exists is the one).
	Files []string
	// BackupDir is where a file moved aside goes, one directory per
	// change (default manifest.DefaultBackupDir of the first file).
	BackupDir string
}

// Kubelet is the kubelet: kubelet.service, or the lab's supervisor.
func Kubelet() Component {
	return Component{Name: "kubelet", Unit: "kubelet", Files: []string{LabSpecDir + "/kubelet.json"}}
}

// ControllerManager is kube-controller-manager: kubeadm's static pod (as
// the lab runs it too), or a systemd unit.
func ControllerManager(manifestPath string) Component {
	files := []string{"/etc/kubernetes/manifests/kube-controller-manager.yaml"}
	if manifestPath != "" {
		files = []string{manifestPath}
	}
	return Component{Name: "kube-controller-manager", Unit: "kube-controller-manager", Files: files}
}

// LabSpecDir is where the rehearsal lab's supervisor reads its spec files
// (breakglass lab supervise restarts a component when its file changes and
// stops it while the file is gone).
const LabSpecDir = "/etc/kubernetes/lab"

func (c Component) backupDir() string {
	if c.BackupDir != "" {
		return c.BackupDir
	}
	if len(c.Files) == 0 {
		return "/etc/kubernetes/breakglass-backup"
	}
	return manifest.DefaultBackupDir(c.Files[0])
}

// BackupPath is where change id moves the file at p.
func (c Component) BackupPath(id, p string) string {
	return manifest.BackupPath(c.backupDir(), id, p)
}

// Check refuses components the scripts cannot work with.
func (c Component) Check() error {
	if c.Name == "" || strings.ContainsAny(c.Name, "/ \n'") {
		return fmt.Errorf("component name %q: want a process name such as kubelet", c.Name)
	}
	if len(c.Files) == 0 {
		return fmt.Errorf("component %s: no file to look for (a static-pod manifest or a supervisor's spec file)", c.Name)
	}
	for _, f := range c.Files {
		if err := manifest.CheckPath(f); err != nil {
			return err
		}
		if err := manifest.CheckBackupDir(c.backupDir(), f); err != nil {
			return err
		}
	}
	return nil
}

// State is what a node says about a component.
type State struct {
	// Mechanism is how the node runs it: Systemd, File, or "" (not found:
	// no unit, no file, maybe a file moved aside).
	Mechanism string `json:"mechanism"`
	// Unit and Active: the systemd unit and what systemctl is-active says.
	Unit   string `json:"unit,omitempty"`
	Active string `json:"active,omitempty"`
	// Path is the file it runs from (present), with its bytes' hash, mode
	// and owner; Dir is what the file's directory holds.
	Path  string `json:"path,omitempty"`
	Hash  string `json:"sha256,omitempty"`
	Bytes []byte `json:"-"`
	Mode  string `json:"mode,omitempty"`
	UID   int    `json:"uid"`
	GID   int    `json:"gid"`
	// Dirs are the names each candidate file's directory holds.
	Dirs map[string][]string `json:"dirs,omitempty"`
	// Aside are files moved aside by earlier changes (backup path ->
	// sha256), for a start without the journal.
	Aside map[string]string `json:"aside,omitempty"`
	// Procs are the component's processes in the node's own network
	// namespace (pid@start-time).
	Procs []string `json:"procs,omitempty"`
}

// Running reports whether the component runs on the node.
func (s State) Running() bool { return len(s.Procs) > 0 }

// NewestAside is the backup of the latest change that moved the
// component's file aside ("" for none): change IDs sort by time.
func (s State) NewestAside() (string, string) {
	var best string
	for p := range s.Aside {
		if best == "" || p > best {
			best = p
		}
	}
	return best, s.Aside[best]
}

// probeScript prints the component's systemd unit state, its file (the
// first that exists, as the manifest read does), files moved aside, and
// its processes in this session's network namespace.
//
// The walk over /proc forks nothing per process: each comm is read with
// the shell's builtin read (a command substitution would fork a subshell,
// cat another), and only the few processes whose comm matches are looked
// at further with external commands. A node runs thousands of processes;
// a fork or two for each took seconds on a loaded one. The read is in a
// group so that the error of a process gone meanwhile is silenced in dash
// and bash alike, and c is reset first because set -u ends the script on
// an unset variable.
const probeScript = `set -u
NAME=%s UNIT=%s BACKUPDIR=%s
if [ -n "$UNIT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  ls=$(systemctl show -p LoadState --value -- "$UNIT.service" 2>/dev/null)
  if [ "$ls" = loaded ]; then echo "U $(systemctl is-active -- "$UNIT.service" 2>/dev/null)"; fi
fi
for P in %s; do
  [ -f "$P" ] || continue
  echo "F $P"
  echo "S $(stat -c '%%a %%u %%g' -- "$P")"
  echo "H $(sha256sum -- "$P" | cut -d' ' -f1)"
  echo "B $(base64 < "$P" | tr -d '\n')"
  break
done
for P in %s; do
  d=$(dirname -- "$P")
  [ -d "$d" ] && ls -A -- "$d" | while IFS= read -r n; do echo "N $d/$n"; done
  for A in "$BACKUPDIR"/*/"$(basename -- "$P")"; do
    [ -f "$A" ] && echo "A $A $(sha256sum -- "$A" | cut -d' ' -f1)"
  done
done
me=$(readlink /proc/$$/ns/net)
short=$(printf %%s "$NAME" | cut -c1-15)
for s in /proc/[0-9]*/comm; do
  c=
  { IFS= read -r c < "$s"; } 2>/dev/null
  [ "$c" = "$short" ] || continue
  p=${s%%/comm}; p=${p#/proc/}
  [ "$(readlink /proc/$p/ns/net 2>/dev/null)" = "$me" ] || continue
  a0=$(tr '\0' '\n' < /proc/$p/cmdline 2>/dev/null | head -n 1)
  [ "$(basename -- "${a0:-x}")" = "$NAME" ] || continue
  f=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null) || continue
  set -- $f
  { [ "$#" -ge 20 ] && [ "$1" != Z ] && [ "$1" != X ]; } || continue
  echo "P $p@${20}"
done
exit 0`

// Probe reads the component's state on the node.
func Probe(ctx context.Context, r nodeops.Runner, t nodeops.Target, c Component) (State, error) {
	if err := c.Check(); err != nil {
		return State{}, err
	}
	files := make([]string, len(c.Files))
	for i, f := range c.Files {
		files[i] = nodeops.ShellQuote(f)
	}
	list := strings.Join(files, " ")
	line := fmt.Sprintf(probeScript, nodeops.ShellQuote(c.Name), nodeops.ShellQuote(c.Unit), nodeops.ShellQuote(c.backupDir()), list, list)
	out, err := r.Run(ctx, t, nodeops.Command{Line: line})
	if err != nil {
		return State{}, err
	}
	if out.Truncated {
		return State{}, fmt.Errorf("node %s: %s: the probe's output was cut", t.Name, c.Name)
	}
	s, err := ParseProbe(out.Stdout)
	if err != nil {
		return s, fmt.Errorf("node %s: %s: %w", t.Name, c.Name, err)
	}
	if s.Active != "" {
		s.Mechanism, s.Unit = Systemd, c.Unit
	} else if s.Path != "" {
		s.Mechanism = File
	}
	return s, nil
}

// ParseProbe reads probeScript's output.
func ParseProbe(out []byte) (State, error) {
	var s State
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		rec, rest, _ := strings.Cut(sc.Text(), " ")
		switch rec {
		case "U":
			s.Active = rest
			if s.Active == "" {
				s.Active = "unknown"
			}
		case "F":
			s.Path = rest
		case "S":
			if _, err := fmt.Sscanf(rest, "%s %d %d", &s.Mode, &s.UID, &s.GID); err != nil {
				return s, fmt.Errorf("stat %q: %w", rest, err)
			}
		case "H":
			s.Hash = rest
		case "N":
			if i := strings.LastIndexByte(rest, '/'); i > 0 {
				if s.Dirs == nil {
					s.Dirs = map[string][]string{}
				}
				s.Dirs[rest[:i]] = append(s.Dirs[rest[:i]], rest[i+1:])
			}
		case "B":
			b, err := base64.StdEncoding.DecodeString(rest)
			if err != nil {
				return s, fmt.Errorf("%s: %w", s.Path, err)
			}
			s.Bytes = b
		case "A":
			// The hash is the last field: the path may hold spaces.
			if i := strings.LastIndexByte(rest, ' '); i > 0 {
				p, h := rest[:i], rest[i+1:]
				if s.Aside == nil {
					s.Aside = map[string]string{}
				}
				s.Aside[p] = h
			}
		case "P":
			s.Procs = append(s.Procs, rest)
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	if s.Path != "" && manifest.Hash(s.Bytes) != s.Hash {
		return s, fmt.Errorf("%s: the bytes read do not have the sha256 the node computed", s.Path)
	}
	for d, names := range s.Dirs {
		// Two files in one directory list it twice.
		slices.Sort(names)
		s.Dirs[d] = slices.Compact(names)
	}
	return s, nil
}

// Dir is what the directory of the file at p holds, p's own name left
// out.
func (s State) Dir(p string) []string {
	var out []string
	for _, n := range s.Dirs[path.Dir(p)] {
		if n != path.Base(p) {
			out = append(out, n)
		}
	}
	return out
}

// StaleError says the file no longer has the bytes it was planned with.
type StaleError struct {
	Node, Path, Expected, Found string
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("%s: %s changed since it was planned (sha256 %.12s, planned %.12s)", e.Node, e.Path, e.Found, e.Expected)
}

const exitStale = 75

// asideScript moves the file at P out of its directory to BACKUP, if it
// still has the hash planned: BACKUP is written (hard link, else a copy)
// and synced before P is removed, so that the bytes are always in one of
// the two places.
const asideScript = `set -u
P=%s EXPECT=%s BACKUP=%s
h() { sha256sum -- "$1" | cut -d' ' -f1; }
if [ ! -f "$P" ]; then
  if [ -f "$BACKUP" ] && [ "$(h "$BACKUP")" = "$EXPECT" ]; then echo already; exit 0; fi
  echo absent; exit 75
fi
now=$(h "$P") || exit 1
[ "$now" = "$EXPECT" ] || { echo "$now"; exit 75; }
BD=$(dirname -- "$BACKUP")
mkdir -p -- "$BD" && chmod 700 -- "$BD" || exit 1
if [ -e "$BACKUP" ]; then
  [ "$(h "$BACKUP")" = "$EXPECT" ] || { echo "$BACKUP exists and holds other bytes" >&2; exit 1; }
else
  ln -- "$P" "$BACKUP" 2>/dev/null || { cp -p -- "$P" "$BACKUP.part" && mv -f -- "$BACKUP.part" "$BACKUP"; } || exit 1
fi
sync -- "$BACKUP" 2>/dev/null || sync
[ "$(h "$BACKUP")" = "$EXPECT" ] || { echo "$BACKUP does not hold the file's bytes" >&2; exit 1; }
rm -f -- "$P" || exit 1
sync -- "$(dirname -- "$P")" 2>/dev/null || sync
echo moved`

// Aside moves the file at p (with sha256 expect) to backup on the node.
// A file that changed since is a *StaleError, and nothing is moved.
func Aside(ctx context.Context, r nodeops.Runner, t nodeops.Target, p, expect, backup string) error {
	if err := manifest.CheckPath(p); err != nil {
		return err
	}
	if err := manifest.CheckBackupDir(path.Dir(backup), p); err != nil {
		return err
	}
	line := fmt.Sprintf(asideScript, nodeops.ShellQuote(p), nodeops.ShellQuote(expect), nodeops.ShellQuote(backup))
	out, err := r.Run(ctx, t, nodeops.Command{Line: line})
	var ee *nodeops.ExitError
	if err != nil && errors.As(err, &ee) && ee.Code == exitStale {
		return &StaleError{Node: t.Name, Path: p, Expected: expect, Found: strings.TrimSpace(string(out.Stdout))}
	}
	if err != nil {
		if msg := strings.TrimSpace(string(out.Stderr)); msg != "" {
			return fmt.Errorf("node %s: move %s aside: %s: %w", t.Name, p, msg, err)
		}
		return fmt.Errorf("node %s: move %s aside: %w", t.Name, p, err)
	}
	return nil
}

// Back puts a file moved aside back in place: written as a dotfile next to
// p and renamed over it (only where p is absent, or already has the
// bytes), from the backup when it still has them, else from the bytes
// given (the journal's). keep are the names the directory may hold
// besides p; any other is a *manifest.StrayError (p was written).
func Back(ctx context.Context, r nodeops.Runner, t nodeops.Target, id, p string, b []byte, mode string, uid, gid int, backup string, keep []string) error {
	w := manifest.Write{ID: id, Path: p, Expect: "absent", Bytes: b, Mode: mode, UID: uid, GID: gid, Source: backup,
		Keep: append(slices.Clone(keep), path.Base(p))}
	_, err := w.Run(ctx, r, t)
	var stale *manifest.StaleError
	if errors.As(err, &stale) {
		if stale.Found == manifest.Hash(b) {
			return nil // back already
		}
		return &StaleError{Node: t.Name, Path: p, Expected: "absent", Found: stale.Found}
	}
	return err
}

// Systemctl runs systemctl ACTION UNIT.service on the node.
func Systemctl(ctx context.Context, r nodeops.Runner, t nodeops.Target, action, unit string) error {
	if action != "stop" && action != "start" {
		return fmt.Errorf("systemctl %q: want stop or start", action)
	}
	out, err := r.Run(ctx, t, nodeops.Command{Line: fmt.Sprintf("systemctl %s -- %s", action, nodeops.ShellQuote(unit+".service"))})
	if err != nil {
		if msg := strings.TrimSpace(string(out.Stderr)); msg != "" {
			return fmt.Errorf("node %s: systemctl %s %s: %s: %w", t.Name, action, unit, msg, err)
		}
		return fmt.Errorf("node %s: systemctl %s %s: %w", t.Name, action, unit, err)
	}
	return nil
}
