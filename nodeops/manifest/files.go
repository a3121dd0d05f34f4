package manifest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/breakglass/breakglass/nodeops"
)

// Referenced are the files on the node that the API server's manifest
// names: every absolute path in a flag value of the kube-apiserver
// container (--tls-cert-file=/etc/kubernetes/pki/apiserver.crt, and each
// element of a comma-separated list) that lies under one of the
// container's hostPath mounts, as the path on the node. Paths that are
// not under a hostPath mount are the image's own and are not listed.
// The list is sorted and has no duplicates.
func Referenced(p *corev1.Pod) ([]string, error) {
	c, err := Container(p)
	if err != nil {
		return nil, err
	}
	hostPaths := map[string]string{}
	for _, v := range p.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = path.Clean(v.HostPath.Path)
		}
	}
	type mount struct{ in, host string }
	var mounts []mount
	for _, m := range c.VolumeMounts {
		if h, ok := hostPaths[m.Name]; ok && m.SubPath == "" {
			mounts = append(mounts, mount{path.Clean(m.MountPath), h})
		}
	}
	onHost := func(p string) (string, bool) {
		best := -1
		for i, m := range mounts {
			if (p == m.in || strings.HasPrefix(p, strings.TrimSuffix(m.in, "/")+"/")) && (best < 0 || len(m.in) > len(mounts[best].in)) {
				best = i
			}
		}
		if best < 0 {
			return "", false
		}
		return path.Join(mounts[best].host, strings.TrimPrefix(p, mounts[best].in)), true
	}
	seen := map[string]bool{}
	var out []string
	for _, list := range [][]string{c.Command, c.Args} {
		for _, a := range list {
			_, v, ok := strings.Cut(a, "=")
			if !ok || !strings.HasPrefix(a, "--") {
				continue
			}
			for _, e := range strings.Split(v, ",") {
				if !strings.HasPrefix(e, "/") || path.Clean(e) != e {
					continue
				}
				if h, ok := onHost(e); ok && !seen[h] {
					seen[h] = true
					out = append(out, h)
				}
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// NodeFile is a file as read from a node, or as to be written on one.
// Bytes may be secret (keys, kubeconfigs with credentials): they are
// never marshalled; Hash is.
type NodeFile struct {
	Path string `json:"path"`
	// Exists is false when there is no file at Path (then only Path is
	// set).
	Exists bool   `json:"exists"`
	Bytes  []byte `json:"-"`
	Hash   string `json:"sha256,omitempty"`
	Mode   string `json:"mode,omitempty"`
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
}

// readFilesScript prints, for each path given as an argument, a header
// "F <path-quoted> <state> [mode uid gid sha256]" (state: file, absent or
// other) and, for a regular file, its bytes in base64 up to a line "E".
const readFilesScript = `set -u
for P in %s; do
  if [ -f "$P" ] && [ ! -L "$P" ]; then
    echo "F $(printf %%s "$P" | base64 -w0) file $(stat -c '%%a %%u %%g' -- "$P") $(sha256sum -- "$P" | cut -d' ' -f1)" || exit 1
    base64 -- "$P" || exit 1
    echo E
  elif [ -e "$P" ] || [ -L "$P" ]; then
    echo "F $(printf %%s "$P" | base64 -w0) other"
  else
    echo "F $(printf %%s "$P" | base64 -w0) absent"
  fi
done`

// ReadFiles reads the files at paths on the node in one command. A path
// that is not there is returned with Exists false; one that is not a
// regular file (a directory, a symbolic link) is an error naming it.
func ReadFiles(ctx context.Context, r nodeops.Runner, t nodeops.Target, paths []string) ([]NodeFile, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	var quoted []string
	for _, p := range paths {
		if err := checkFilePath(p); err != nil {
			return nil, err
		}
		quoted = append(quoted, nodeops.ShellQuote(p))
	}
	out, err := r.Run(ctx, t, nodeops.Command{Line: fmt.Sprintf(readFilesScript, strings.Join(quoted, " "))})
	if err != nil {
		return nil, err
	}
	if out.Truncated {
		return nil, fmt.Errorf("node %s: the files are too large to read whole", t.Name)
	}
	files, err := parseReadFiles(out.Stdout)
	if err != nil {
		return nil, fmt.Errorf("node %s: read files: %w", t.Name, err)
	}
	if len(files) != len(paths) {
		return nil, fmt.Errorf("node %s: read %d files, got %d", t.Name, len(paths), len(files))
	}
	// The script answers in the order asked: each answer is the path asked.
	for i := range files {
		files[i].Path = paths[i]
	}
	return files, nil
}

func parseReadFiles(out []byte) ([]NodeFile, error) {
	var files []NodeFile
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var body *strings.Builder
	for sc.Scan() {
		l := sc.Text()
		if body != nil {
			if l != "E" {
				body.WriteString(l)
				continue
			}
			f := &files[len(files)-1]
			b, err := base64.StdEncoding.DecodeString(body.String())
			if err != nil {
				return nil, fmt.Errorf("%s: content: %w", f.Path, err)
			}
			if Hash(b) != f.Hash {
				return nil, fmt.Errorf("%s: content does not match its sha256", f.Path)
			}
			f.Bytes, body = b, nil
			continue
		}
		fs := strings.Fields(l)
		if len(fs) < 3 || fs[0] != "F" {
			return nil, fmt.Errorf("unexpected answer %q", l)
		}
		pb, err := base64.StdEncoding.DecodeString(fs[1])
		if err != nil {
			return nil, fmt.Errorf("unexpected answer %q", l)
		}
		f := NodeFile{Path: string(pb)}
		switch fs[2] {
		case "absent":
		case "other":
			return nil, fmt.Errorf("%s is not a regular file (a directory or a symbolic link): breakglass copies only files", f.Path)
		case "file":
			if len(fs) != 7 {
				return nil, fmt.Errorf("unexpected answer %q", l)
			}
			f.Exists, f.Mode, f.Hash = true, fs[3], fs[6]
			f.UID, _ = strconv.Atoi(fs[4])
			f.GID, _ = strconv.Atoi(fs[5])
			body = &strings.Builder{}
		default:
			return nil, fmt.Errorf("unexpected answer %q", l)
		}
		files = append(files, f)
	}
	if body != nil {
		return nil, fmt.Errorf("%s: content cut short", files[len(files)-1].Path)
	}
	return files, sc.Err()
}

var modeRe = regexp.MustCompile(`^[0-7]{3,4}$`)

// checkFilePath refuses paths the scripts cannot take as they are: not
// absolute and clean, or with white space (no kubeadm path has any).
func checkFilePath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsAny(p, " \t\n\x00") {
		return fmt.Errorf("file path %q: want an absolute, clean path without white space", p)
	}
	return nil
}

// ExistsError says files were found where a create expected none:
// nothing was written.
type ExistsError struct {
	Node  string
	Paths []string
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("node %s: %s already there: nothing was written", e.Node, strings.Join(e.Paths, ", "))
}

// createFilesScript: every path is checked to be absent first (exit 75
// and the paths found otherwise: nothing written); then each file is
// written as a dotfile in its directory (created 0755 where missing),
// owned and moded, synced, renamed into place and checked. It prints
// "D dir" for each directory it made and "C path" for each file. Stdin
// holds the files' bytes one after the other, SIZE bytes each.
const createFilesScript = `set -u
found=
set -- %s
while [ $# -gt 0 ]; do
  if [ -e "$1" ] || [ -L "$1" ]; then found="$found $1"; fi
  shift 5
done
if [ -n "$found" ]; then echo "$found"; exit 75; fi
h() { sha256sum -- "$1" | cut -d' ' -f1; }
set -- %s
while [ $# -gt 0 ]; do
  P=$1 SIZE=$2 WANT=$3 MODE=$4 OWNER=$5; shift 5
  D=$(dirname -- "$P")
  if [ ! -d "$D" ]; then
    missing= mk=$D
    while [ ! -d "$mk" ]; do missing="$mk $missing"; mk=$(dirname -- "$mk"); done
    mkdir -p -m 0755 -- "$D" || exit 1
    for m in $missing; do echo "D $m"; done
  fi
  T=$D/.$(basename -- "$P").breakglass-%s.tmp
  trap 'rm -f -- "$T"' EXIT
  (umask 077; head -c "$SIZE" > "$T") && chown -- "$OWNER" "$T" && chmod -- "$MODE" "$T" || exit 1
  [ "$(h "$T")" = "$WANT" ] || { echo "$P: the bytes written do not have sha256 $WANT" >&2; exit 1; }
  sync -- "$T" 2>/dev/null || sync
  mv -f -- "$T" "$P" || exit 1
  trap - EXIT
  sync -- "$D" 2>/dev/null || sync
  echo "C $P"
done`

// CreateFiles writes files that must not exist yet on the node (a
// *ExistsError, and nothing written, when any does), each atomically with
// its mode and owner. It returns the directories it had to make (the
// topmost first) and the files written, for an undo to remove again. A
// failure partway leaves the files written so far, as the returned lists
// say.
func CreateFiles(ctx context.Context, r nodeops.Runner, t nodeops.Target, id string, files []NodeFile) (dirs, written []string, err error) {
	if len(files) == 0 {
		return nil, nil, nil
	}
	var check, args []string
	var stdin []byte
	for _, f := range files {
		if err := checkFilePath(f.Path); err != nil {
			return nil, nil, err
		}
		if !modeRe.MatchString(f.Mode) {
			return nil, nil, fmt.Errorf("%s: mode %q", f.Path, f.Mode)
		}
		q := []string{nodeops.ShellQuote(f.Path), strconv.Itoa(len(f.Bytes)), Hash(f.Bytes), nodeops.ShellQuote(f.Mode), fmt.Sprintf("%d:%d", f.UID, f.GID)}
		check = append(check, q...)
		args = append(args, q...)
		stdin = append(stdin, f.Bytes...)
	}
	line := fmt.Sprintf(createFilesScript, strings.Join(check, " "), strings.Join(args, " "), safeID(id))
	out, rerr := r.Run(ctx, t, nodeops.Command{Line: line, Stdin: stdin})
	for _, l := range strings.Split(string(out.Stdout), "\n") {
		switch {
		case strings.HasPrefix(l, "D "):
			if d := strings.TrimPrefix(l, "D "); !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		case strings.HasPrefix(l, "C "):
			written = append(written, strings.TrimPrefix(l, "C "))
		}
	}
	var ee *nodeops.ExitError
	if rerr != nil && errors.As(rerr, &ee) && ee.Code == exitStale {
		return nil, nil, &ExistsError{Node: t.Name, Paths: strings.Fields(string(out.Stdout))}
	}
	if rerr != nil {
		if msg := strings.TrimSpace(string(out.Stderr)); msg != "" {
			return dirs, written, fmt.Errorf("node %s: write files: %s: %w", t.Name, msg, rerr)
		}
		return dirs, written, fmt.Errorf("node %s: write files: %w", t.Name, rerr)
	}
	return dirs, written, nil
}

// removeFilesScript removes each file that still has the hash it was
// written with ("R path"), keeps one that changed ("K path hash"), and
// then removes the directories given when they are empty ("r dir").
const removeFilesScript = `set -u
h() { sha256sum -- "$1" | cut -d' ' -f1; }
set -- %s
while [ "$1" != -- ]; do
  P=$1 WANT=$2; shift 2
  if [ ! -e "$P" ]; then echo "G $P"; continue; fi
  now=$(h "$P") || exit 1
  if [ "$now" = "$WANT" ]; then rm -f -- "$P" || exit 1; echo "R $P"; else echo "K $P $now"; fi
done
shift
for D in "$@"; do
  if [ -d "$D" ] && rmdir -- "$D" 2>/dev/null; then echo "r $D"; fi
done
sync`

// Removal is what RemoveFiles did.
type Removal struct {
	Removed []string `json:"removed,omitempty"`
	// Gone were not there any more; Kept had other bytes than the ones
	// written, and are left in place.
	Gone []string `json:"gone,omitempty"`
	Kept []string `json:"kept,omitempty"`
}

// RemoveFiles removes the files written (path -> the sha256 they were
// written with) that still have those bytes, then the directories dirs
// (deepest first) where they are empty.
func RemoveFiles(ctx context.Context, r nodeops.Runner, t nodeops.Target, files map[string]string, dirs []string) (*Removal, error) {
	var args []string
	for _, p := range slices.Sorted(maps.Keys(files)) {
		if err := checkFilePath(p); err != nil {
			return nil, err
		}
		args = append(args, nodeops.ShellQuote(p), nodeops.ShellQuote(files[p]))
	}
	args = append(args, "--")
	ds := slices.Clone(dirs)
	slices.SortFunc(ds, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, d := range ds {
		if err := checkFilePath(d); err != nil {
			return nil, err
		}
		args = append(args, nodeops.ShellQuote(d))
	}
	out, err := r.Run(ctx, t, nodeops.Command{Line: fmt.Sprintf(removeFilesScript, strings.Join(args, " "))})
	res := &Removal{}
	for _, l := range strings.Split(string(out.Stdout), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "R":
			res.Removed = append(res.Removed, f[1])
		case "G":
			res.Gone = append(res.Gone, f[1])
		case "K":
			res.Kept = append(res.Kept, f[1])
		}
	}
	if err != nil {
		return res, fmt.Errorf("node %s: remove files: %w", t.Name, err)
	}
	return res, nil
}
