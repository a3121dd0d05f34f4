package manifest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/breakglass/breakglass/nodeops"
)

// File is a manifest as read from a node.
type File struct {
	Path  string `json:"path"`
	Bytes []byte `json:"bytes"`
	Hash  string `json:"hash"`
	// Mode (octal, as chmod takes it), UID and GID are the file's.
	Mode string `json:"mode"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	// Dir is every name in the manifests directory (dotfiles included).
	Dir []string `json:"dir"`
}

// readScript prints the file's mode and owner, its hash, the names in its
// directory, then the file in base64 (exact bytes, checked against the
// hash).
const readScript = `P=%s
if [ ! -f "$P" ]; then echo "missing: $P" >&2; exit 66; fi
echo "S $(stat -c '%%a %%u %%g' -- "$P")" || exit 1
echo "H $(sha256sum -- "$P" | cut -d' ' -f1)" || exit 1
ls -A -- "$(dirname -- "$P")" | sed 's/^/N /'
echo B
base64 -- "$P"`

// exitMissing is readScript's status for a missing file.
const exitMissing = 66

// ErrMissing says the manifest is not on the node.
var ErrMissing = errors.New("no such file")

// Read reads the manifest at p on the node (under sudo where the SSH user
// is not root, as every command of the runner).
func Read(ctx context.Context, r nodeops.Runner, t nodeops.Target, p string) (*File, error) {
	if err := CheckPath(p); err != nil {
		return nil, err
	}
	out, err := r.Run(ctx, t, nodeops.Command{Line: fmt.Sprintf(readScript, nodeops.ShellQuote(p))})
	var ee *nodeops.ExitError
	if err != nil && errors.As(err, &ee) && ee.Code == exitMissing {
		return nil, &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "missing",
			Err: fmt.Errorf("%s: %w", p, ErrMissing), Hint: "is this a kubeadm control-plane node? the manifest path is the inventory's apiserver.manifest (or --manifest)"}
	}
	if err != nil {
		return nil, err
	}
	if out.Truncated {
		return nil, fmt.Errorf("node %s: %s: too large to read whole", t.Name, p)
	}
	f, err := parseRead(p, out.Stdout)
	if err != nil {
		return nil, fmt.Errorf("node %s: read %s: %w", t.Name, p, err)
	}
	return f, nil
}

func parseRead(p string, out []byte) (*File, error) {
	f := &File{Path: p}
	head, body, ok := bytes.Cut(out, []byte("\nB\n"))
	if !ok {
		return nil, fmt.Errorf("unexpected answer %q", firstLine(out))
	}
	sc := bufio.NewScanner(bytes.NewReader(head))
	for sc.Scan() {
		rec, rest, _ := strings.Cut(sc.Text(), " ")
		switch rec {
		case "S":
			fs := strings.Fields(rest)
			if len(fs) != 3 {
				return nil, fmt.Errorf("stat: %q", rest)
			}
			f.Mode = fs[0]
			f.UID, _ = strconv.Atoi(fs[1])
			f.GID, _ = strconv.Atoi(fs[2])
		case "H":
			f.Hash = rest
		case "N":
			f.Dir = append(f.Dir, rest)
		}
	}
	b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), ""))
	if err != nil {
		return nil, fmt.Errorf("content: %w", err)
	}
	if Hash(b) != f.Hash {
		return nil, fmt.Errorf("content does not match its sha256 %s (%d bytes read)", f.Hash, len(b))
	}
	if !regexp.MustCompile(`^[0-7]{3,4}$`).MatchString(f.Mode) {
		return nil, fmt.Errorf("mode %q", f.Mode)
	}
	f.Bytes = b
	slices.Sort(f.Dir)
	return f, nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// CheckPath refuses a manifest path that is not absolute and clean.
func CheckPath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || strings.ContainsAny(p, "\n") {
		return fmt.Errorf("manifest path %q: want an absolute, clean path such as %s", p, DefaultPath)
	}
	return nil
}

// DefaultBackupDir is where backups go for the manifest at p: a
// breakglass-backup directory next to the manifests directory
// (/etc/kubernetes/breakglass-backup), never inside it.
func DefaultBackupDir(p string) string {
	return path.Join(path.Dir(path.Dir(p)), "breakglass-backup")
}

// BackupPath is the backup of the manifest at p made by change id.
func BackupPath(dir, id, p string) string {
	return path.Join(dir, safeID(id), path.Base(p))
}

// CheckBackupDir refuses a backup directory inside the manifests
// directory: kubelet would not read a subdirectory, but the next person
// (or tool) to look there should not find a second kube-apiserver.yaml.
func CheckBackupDir(dir, p string) error {
	if !path.IsAbs(dir) || path.Clean(dir) != dir {
		return fmt.Errorf("backup directory %q: want an absolute, clean path", dir)
	}
	md := path.Dir(p)
	if dir == md || strings.HasPrefix(dir, md+"/") {
		return fmt.Errorf("backup directory %s is inside the manifests directory %s: keep backups out of it", dir, md)
	}
	return nil
}

// safeID keeps a change ID to characters a file name takes as they are.
func safeID(id string) string {
	return regexp.MustCompile(`[^A-Za-z0-9_-]`).ReplaceAllString(id, "_")
}

// TempName is the dotfile a write of change id puts next to the manifest
// at p before it renames it over p: kubelet ignores dotfiles.
func TempName(id, p string) string {
	return "." + path.Base(p) + ".breakglass-" + safeID(id) + ".tmp"
}

// Write is one atomic replacement of a manifest on a node.
type Write struct {
	// ID is the change's, for the temporary and backup names.
	ID   string
	Path string
	// Expect is the hash the manifest must have now (compare-and-swap):
	// when it differs nothing is written.
	Expect string
	// Bytes are the new manifest; Mode, UID and GID its mode and owner.
	Bytes    []byte
	Mode     string
	UID, GID int
	// Backup, if set, is where the bytes replaced are copied first
	// (cp -p: mode, owner and times kept), outside the manifests
	// directory.
	Backup string
	// Source, if set, is a backup on the node to copy the new manifest
	// from (cp -p) when it has the new bytes' hash; otherwise Bytes are
	// written.
	Source string
	// Keep are the names the manifests directory must hold afterwards
	// (those it held when the change was planned): a name more is a
	// stray file kubelet would start.
	Keep []string
}

// WriteResult is what a write did.
type WriteResult struct {
	// Backup is where the replaced bytes are ("" for none).
	Backup string `json:"backup,omitempty"`
	// FromBackup is set when the new bytes were copied from Source.
	FromBackup bool `json:"fromBackup,omitempty"`
	// Dir is what the manifests directory holds afterwards.
	Dir []string `json:"dir"`
}

// StaleError says the manifest did not have the expected hash: nothing
// was written.
type StaleError struct {
	Node, Path, Expected, Found string
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("node %s: %s changed since it was planned (sha256 %s, now %s): nothing was written", e.Node, e.Path, short(e.Expected), short(e.Found))
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// StrayError says the manifests directory holds names it did not hold
// when the change was planned.
type StrayError struct {
	Node, Dir string
	Names     []string
}

func (e *StrayError) Error() string {
	return fmt.Sprintf("node %s: %s now also holds %s: kubelet starts every file there that is not a dotfile", e.Node, e.Dir, strings.Join(e.Names, ", "))
}

// exitStale is writeScript's status when the manifest is not as expected.
const exitStale = 75

// writeScript: compare-and-swap on the hash, backup, dotfile written and
// synced, renamed over the manifest, directory synced, then the hash and
// the directory's names printed for the caller to check. The dotfile is
// removed on any failure before the rename.
const writeScript = `set -u
P=%s EXPECT=%s WANT=%s MODE=%s OWNER=%s BACKUP=%s SOURCE=%s T=%s
D=$(dirname -- "$P")
T="$D/$T"
h() { sha256sum -- "$1" | cut -d' ' -f1; }
now=absent
if [ -f "$P" ]; then now=$(h "$P") || exit 1; fi
if [ "$now" != "$EXPECT" ]; then echo "$now"; exit 75; fi
if [ -n "$BACKUP" ]; then
  BD=$(dirname -- "$BACKUP")
  mkdir -p -- "$BD" && chmod 700 -- "$BD" || exit 1
  if [ -e "$BACKUP" ]; then
    [ "$(h "$BACKUP")" = "$EXPECT" ] || { echo "backup $BACKUP exists and holds other bytes" >&2; exit 1; }
  else
    cp -p -- "$P" "$BACKUP.part" || exit 1
    sync -- "$BACKUP.part" 2>/dev/null || sync
    mv -f -- "$BACKUP.part" "$BACKUP" || exit 1
    [ "$(h "$BACKUP")" = "$EXPECT" ] || { echo "backup $BACKUP does not hold the manifest's bytes" >&2; exit 1; }
  fi
  echo "backup $BACKUP"
fi
trap 'rm -f -- "$T"' EXIT
trap 'exit 130' INT TERM HUP
rm -f -- "$T"
if [ -n "$SOURCE" ] && [ -f "$SOURCE" ] && [ "$(h "$SOURCE")" = "$WANT" ]; then
  cp -p -- "$SOURCE" "$T" || exit 1
  echo "from-backup"
else
  (umask 077; cat > "$T") && chown -- "$OWNER" "$T" && chmod -- "$MODE" "$T" || exit 1
fi
[ "$(h "$T")" = "$WANT" ] || { echo "the bytes written do not have sha256 $WANT" >&2; exit 1; }
sync -- "$T" 2>/dev/null || sync
mv -f -- "$T" "$P" || exit 1
trap - EXIT
sync -- "$D" 2>/dev/null || sync
[ "$(h "$P")" = "$WANT" ] || { echo "$P does not have sha256 $WANT after the rename" >&2; exit 1; }
ls -A -- "$D" | sed 's/^/N /'`

// Run writes the manifest on the node. A manifest whose hash is not
// Expect is a *StaleError (nothing written); names in the directory that
// Keep does not have are a *StrayError (the manifest was written).
func (w Write) Run(ctx context.Context, r nodeops.Runner, t nodeops.Target) (*WriteResult, error) {
	if err := CheckPath(w.Path); err != nil {
		return nil, err
	}
	if w.Backup != "" {
		if err := CheckBackupDir(path.Dir(w.Backup), w.Path); err != nil {
			return nil, err
		}
	}
	line := fmt.Sprintf(writeScript, nodeops.ShellQuote(w.Path), nodeops.ShellQuote(w.Expect), nodeops.ShellQuote(Hash(w.Bytes)),
		nodeops.ShellQuote(w.Mode), nodeops.ShellQuote(fmt.Sprintf("%d:%d", w.UID, w.GID)), nodeops.ShellQuote(w.Backup),
		nodeops.ShellQuote(w.Source), nodeops.ShellQuote(TempName(w.ID, w.Path)))
	out, err := r.Run(ctx, t, nodeops.Command{Line: line, Stdin: w.Bytes})
	var ee *nodeops.ExitError
	if err != nil && errors.As(err, &ee) && ee.Code == exitStale {
		return nil, &StaleError{Node: t.Name, Path: w.Path, Expected: w.Expect, Found: strings.TrimSpace(string(out.Stdout))}
	}
	if err != nil {
		if msg := strings.TrimSpace(string(out.Stderr)); msg != "" {
			return nil, fmt.Errorf("node %s: write %s: %s: %w", t.Name, w.Path, msg, err)
		}
		return nil, fmt.Errorf("node %s: write %s: %w", t.Name, w.Path, err)
	}
	res := &WriteResult{}
	for _, l := range strings.Split(string(out.Stdout), "\n") {
		switch {
		case strings.HasPrefix(l, "backup "):
			res.Backup = strings.TrimPrefix(l, "backup ")
		case l == "from-backup":
			res.FromBackup = true
		case strings.HasPrefix(l, "N "):
			res.Dir = append(res.Dir, strings.TrimPrefix(l, "N "))
		}
	}
	slices.Sort(res.Dir)
	if stray := Strays(res.Dir, w.Keep); len(stray) > 0 {
		return res, &StrayError{Node: t.Name, Dir: path.Dir(w.Path), Names: stray}
	}
	return res, nil
}

// Strays are the names of now that kubelet would load (not dotfiles) and
// keep does not have.
func Strays(now, keep []string) []string {
	var out []string
	for _, n := range now {
		if !strings.HasPrefix(n, ".") && !slices.Contains(keep, n) {
			out = append(out, n)
		}
	}
	return out
}
