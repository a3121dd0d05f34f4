package service_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/nodeops/service"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

// These tests run the package's scripts through a real OpenSSH sshd on
// loopback. sshd's sessions run on this machine as root, so every file a
// component runs from, and every backup, is in the test's own temporary
// directory: nothing under /etc is read or written. Process names are
// made unique to the test run, so that a kubelet running on this machine
// is never counted (nor mistaken for the test's).

type node struct {
	r  nodeops.Runner
	t  nodeops.Target
	fx *sshdtest.Fixture
}

func newNode(t *testing.T, o sshclient.Options) *node {
	t.Helper()
	if why := sshdtest.Available(); why != "" {
		t.Skip(why)
	}
	fx := sshdtest.Start(t, 1, sshdtest.Options{})
	o.User, o.IdentityFiles, o.KnownHosts = "root", []string{fx.ClientKey}, []string{fx.KnownHosts}
	o.GlobalKnownHosts = []string{filepath.Join(fx.Dir, "ssh_known_hosts")}
	o.DialTimeout, o.HandshakeTimeout, o.AuthTimeout, o.SessionTimeout = 10*time.Second, 10*time.Second, 10*time.Second, 10*time.Second
	o.ReuseConnections = true
	c, err := sshclient.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := fx.Servers[0]
	return &node{r: c, t: nodeops.Target{Name: s.Name, Address: s.Host, Port: s.Port}, fx: fx}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func writeFile(t *testing.T, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func modeOf(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func absent(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("%s: want absent, stat says %v", p, err)
	}
}

func probe(t *testing.T, ctx context.Context, n *node, c service.Component) service.State {
	t.Helper()
	s, err := service.Probe(ctx, n.r, n.t, c)
	if err != nil {
		t.Fatalf("Probe %s: %v", c.Name, err)
	}
	return s
}

// uniqueName is a process name no other process on this machine has:
// at most 15 bytes when short (comm holds it whole), else longer.
func uniqueName(long bool) string {
	if long {
		return fmt.Sprintf("bg-controller-manager-%d", os.Getpid())
	}
	return fmt.Sprintf("bgkube%d", os.Getpid()%10000000)
}

// A component whose file exists: the probe says how it runs, which file,
// its exact bytes, their hash, mode and owner, and what its directory
// holds.
func TestProbeFile(t *testing.T) {
	n := newNode(t, sshclient.Options{})
	ctx := testCtx(t)
	dir := t.TempDir()
	md := filepath.Join(dir, "manifests")
	p := filepath.Join(md, "kubelet.json")
	// Bytes base64 and a line-based read would both get wrong unless the
	// probe carries them exactly: NULs, CR, no final newline, non-UTF-8.
	content := []byte("{\"name\": \"kubelet\"}\n\x00\x01\xff\r\nlast line without newline")
	writeFile(t, p, content, 0o640)
	writeFile(t, filepath.Join(md, "other.json"), []byte("{}"), 0o644)
	writeFile(t, filepath.Join(md, ".hidden"), []byte("x"), 0o600)
	missing := filepath.Join(dir, "nowhere", "kubelet.json")
	c := service.Component{Name: uniqueName(false), Unit: "breakglass-test-no-such-unit-" + strconv.Itoa(os.Getpid()),
		Files: []string{missing, p}, BackupDir: filepath.Join(dir, "backup")}
	if err := c.Check(); err != nil {
		t.Fatal(err)
	}

	s := probe(t, ctx, n, c)
	if s.Mechanism != service.File {
		t.Errorf("Mechanism %q, want %q", s.Mechanism, service.File)
	}
	if s.Unit != "" || s.Active != "" {
		t.Errorf("Unit %q Active %q for a unit that does not exist", s.Unit, s.Active)
	}
	if s.Path != p {
		t.Errorf("Path %q, want %q", s.Path, p)
	}
	if want := sum(content); s.Hash != want {
		t.Errorf("Hash %q, want %q", s.Hash, want)
	}
	if !bytes.Equal(s.Bytes, content) {
		t.Errorf("Bytes %q, want %q", s.Bytes, content)
	}
	if s.Mode != "640" {
		t.Errorf("Mode %q, want 640", s.Mode)
	}
	if s.UID != os.Geteuid() || s.GID != os.Getegid() {
		t.Errorf("owner %d:%d, want %d:%d", s.UID, s.GID, os.Geteuid(), os.Getegid())
	}
	if want := []string{".hidden", "kubelet.json", "other.json"}; !slices.Equal(s.Dirs[md], want) {
		t.Errorf("Dirs[%s] = %q, want %q", md, s.Dirs[md], want)
	}
	if _, ok := s.Dirs[filepath.Dir(missing)]; ok || len(s.Dirs) != 1 {
		t.Errorf("Dirs %q: want only %s (%s does not exist)", s.Dirs, md, filepath.Dir(missing))
	}
	if got, want := s.Dir(p), []string{".hidden", "other.json"}; !slices.Equal(got, want) {
		t.Errorf("Dir(p) = %q, want %q", got, want)
	}
	if len(s.Aside) != 0 {
		t.Errorf("Aside %v, want none", s.Aside)
	}
	if b, h := s.NewestAside(); b != "" || h != "" {
		t.Errorf("NewestAside = %q %q, want none", b, h)
	}
	if s.Running() || len(s.Procs) != 0 {
		t.Errorf("Procs %v for a name no process has", s.Procs)
	}

	// The first file that exists is the one, in the order of Files.
	first := filepath.Join(dir, "first", "kubelet.json")
	firstContent := []byte("first\n")
	writeFile(t, first, firstContent, 0o600)
	c.Files = []string{first, p}
	s = probe(t, ctx, n, c)
	if s.Path != first || s.Hash != sum(firstContent) || !bytes.Equal(s.Bytes, firstContent) || s.Mode != "600" {
		t.Errorf("with both files: Path %q Hash %.12s Mode %s Bytes %q, want the first, %s", s.Path, s.Hash, s.Mode, s.Bytes, first)
	}
	if !slices.Equal(s.Dirs[filepath.Dir(first)], []string{"kubelet.json"}) || !slices.Equal(s.Dirs[md], []string{".hidden", "kubelet.json", "other.json"}) {
		t.Errorf("Dirs %q: want both candidates' directories", s.Dirs)
	}
	if err := os.Remove(first); err != nil {
		t.Fatal(err)
	}
	s = probe(t, ctx, n, c)
	if s.Path != p || s.Hash != sum(content) {
		t.Errorf("first removed: Path %q Hash %.12s, want %s", s.Path, s.Hash, p)
	}
	// An empty directory lists nothing, and so is not in Dirs.
	if d, ok := s.Dirs[filepath.Dir(first)]; ok {
		t.Errorf("Dirs[%s] = %q, want nothing", filepath.Dir(first), d)
	}

	// No file at all: not found.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	s = probe(t, ctx, n, c)
	if s.Mechanism != "" || s.Path != "" || s.Hash != "" || s.Bytes != nil || s.Mode != "" {
		t.Errorf("no file: %+v, want no mechanism and no file", s)
	}
	if want := []string{".hidden", "other.json"}; !slices.Equal(s.Dirs[md], want) {
		t.Errorf("no file: Dirs[%s] = %q, want %q", md, s.Dirs[md], want)
	}

	// An empty file is a file (hash of no bytes).
	writeFile(t, p, nil, 0o644)
	s = probe(t, ctx, n, c)
	if s.Mechanism != service.File || s.Path != p || s.Hash != sum(nil) || len(s.Bytes) != 0 || s.Mode != "644" {
		t.Errorf("empty file: %+v", s)
	}

	// A directory where the file should be is not the file.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	s = probe(t, ctx, n, c)
	if s.Mechanism != "" || s.Path != "" {
		t.Errorf("a directory at the path: Mechanism %q Path %q, want none", s.Mechanism, s.Path)
	}
}

// A file too large for the runner's output limit is an error, not a
// state with cut bytes; with room, its bytes come whole.
func TestProbeLargeFile(t *testing.T) {
	n := newNode(t, sshclient.Options{OutputLimit: 4 << 10})
	ctx := testCtx(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "manifests", "big.yaml")
	content := bytes.Repeat([]byte("0123456789abcdef\n"), 1<<10) // 17 KiB
	writeFile(t, p, content, 0o600)
	c := service.Component{Name: uniqueName(false), Files: []string{p}, BackupDir: filepath.Join(dir, "backup")}
	if _, err := service.Probe(ctx, n.r, n.t, c); err == nil || !strings.Contains(err.Error(), "cut") {
		t.Errorf("Probe with a 4 KiB output limit of a 17 KiB file: %v, want the output was cut", err)
	}

	big := newNode(t, sshclient.Options{OutputLimit: 1 << 20})
	s := probe(t, ctx, big, c)
	if !bytes.Equal(s.Bytes, content) || s.Hash != sum(content) {
		t.Errorf("17 KiB file: %d bytes read, hash %.12s, want %d bytes, %.12s", len(s.Bytes), s.Hash, len(content), sum(content))
	}
}

// proc is a process started for a test, killed when it ends.
type proc struct {
	cmd    *exec.Cmd
	waited bool
}

// startProc runs bin with argv, retrying while the freshly copied
// binary is still open for writing in a forked child (ETXTBSY).
func startProc(t *testing.T, bin string, argv ...string) *proc {
	t.Helper()
	var err error
	for i := 0; i < 50; i++ {
		cmd := &exec.Cmd{Path: bin, Args: argv}
		if err = cmd.Start(); err == nil {
			p := &proc{cmd: cmd}
			t.Cleanup(func() {
				cmd.Process.Kill()
				if !p.waited {
					cmd.Wait()
				}
			})
			return p
		}
		if !errors.Is(err, syscall.ETXTBSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("start %s %q: %v", bin, argv, err)
	return nil
}

func copyExe(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// statOf returns /proc/pid/stat's state and start time (fields 3 and
// 22), as the probe reports them.
func statOf(pid int) (state, start string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", "", err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return "", "", fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return f[0], f[19], nil
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The probe counts the processes of the component's name (comm, which
// the kernel cuts to 15 bytes, and argv[0]'s base name) in the SSH
// session's network namespace, not zombies, and reports each as
// pid@start-time.
func TestProbeProcesses(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	n := newNode(t, sshclient.Options{})
	ctx := testCtx(t)
	for _, long := range []bool{false, true} {
		name := uniqueName(long)
		t.Run(fmt.Sprintf("%s(%d bytes)", name, len(name)), func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, name)
			copyExe(t, sleep, bin)
			c := service.Component{Name: name, Files: []string{filepath.Join(dir, "manifests", name+".yaml")}, BackupDir: filepath.Join(dir, "backup")}

			if s := probe(t, ctx, n, c); s.Running() {
				t.Fatalf("before the process starts: Procs %v", s.Procs)
			}

			// Decoys: the same binary (so the same comm) with another
			// argv[0]; for a long name, another binary whose name has the
			// same first 15 bytes, so the same comm.
			decoys := []*proc{startProc(t, bin, "decoy", "600")}
			if long {
				other := filepath.Join(dir, name[:15]+"zzz")
				copyExe(t, sleep, other)
				decoys = append(decoys, startProc(t, other, other, "600"))
			}

			p := startProc(t, bin, bin, "600")
			pid := p.cmd.Process.Pid
			var s service.State
			waitFor(t, "the probe to see the process", 60*time.Second, func() bool {
				s = probe(t, ctx, n, c)
				return s.Running()
			})
			_, start, err := statOf(pid)
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{fmt.Sprintf("%d@%s", pid, start)}; !slices.Equal(s.Procs, want) {
				t.Errorf("Procs %q, want %q (decoys: %d)", s.Procs, want, len(decoys))
			}
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); long && strings.TrimSpace(string(comm)) != name[:15] {
				t.Errorf("comm %q: the test expected the kernel to cut it to %q", comm, name[:15])
			}

			// A process of the same name in another network namespace (a
			// pod's) is not the node's. Wait until unshare has exec'd it.
			if un, err := exec.LookPath("unshare"); err == nil {
				cmd := exec.Command(un, "-n", bin, "600")
				if err := cmd.Start(); err != nil {
					t.Logf("unshare: %v: the other network namespace is not checked", err)
				} else {
					t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
					upid := cmd.Process.Pid
					ok := false
					deadline := time.Now().Add(10 * time.Second)
					for time.Now().Before(deadline) {
						comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", upid))
						if err != nil {
							break // unshare failed (no privilege here)
						}
						if strings.TrimSpace(string(comm)) == name[:min(15, len(name))] {
							mine, _ := os.Readlink("/proc/self/ns/net")
							theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", upid))
							ok = theirs != "" && theirs != mine
							break
						}
						time.Sleep(20 * time.Millisecond)
					}
					if ok {
						s = probe(t, ctx, n, c)
						if want := []string{fmt.Sprintf("%d@%s", pid, start)}; !slices.Equal(s.Procs, want) {
							t.Errorf("with a process in another network namespace: Procs %q, want %q", s.Procs, want)
						}
					} else {
						t.Log("unshare -n did not run a process in another network namespace: that case is not checked")
					}
				}
			}

			// Killed but not reaped: a zombie does not run.
			if err := p.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the process to be a zombie", 10*time.Second, func() bool {
				st, _, err := statOf(pid)
				return err == nil && st == "Z"
			})
			if s := probe(t, ctx, n, c); s.Running() {
				t.Errorf("zombie: Procs %q, want none", s.Procs)
			}
			p.cmd.Wait()
			p.waited = true
			if s := probe(t, ctx, n, c); s.Running() {
				t.Errorf("after the process is gone: Procs %q, want none", s.Procs)
			}

			// Two processes of the name: both.
			p1 := startProc(t, bin, bin, "600")
			p2 := startProc(t, bin, filepath.Join("relative", name), "600")
			waitFor(t, "the probe to see both processes", 60*time.Second, func() bool {
				s = probe(t, ctx, n, c)
				return len(s.Procs) == 2
			})
			var pids []string
			for _, pr := range s.Procs {
				pid, _, _ := strings.Cut(pr, "@")
				pids = append(pids, pid)
			}
			slices.Sort(pids)
			want := []string{strconv.Itoa(p1.cmd.Process.Pid), strconv.Itoa(p2.cmd.Process.Pid)}
			slices.Sort(want)
			if !slices.Equal(pids, want) {
				t.Errorf("Procs %q, want pids %q", s.Procs, want)
			}
			p1.cmd.Process.Kill()
			p2.cmd.Process.Kill()
			waitFor(t, "the probe to see no process", 60*time.Second, func() bool {
				return !probe(t, ctx, n, c).Running()
			})
		})
	}
}

// straceRunner runs every command under strace on the node, recording
// the processes it creates (fork, vfork, clone) in log.
type straceRunner struct {
	inner nodeops.Runner
	log   string
}

func (r *straceRunner) Run(ctx context.Context, t nodeops.Target, c nodeops.Command) (nodeops.Output, error) {
	c.Line = "exec strace -f -qq -e trace=fork,vfork,clone,clone3 -o " + nodeops.ShellQuote(r.log) + " sh -c " + nodeops.ShellQuote(c.Line)
	return r.inner.Run(ctx, t, c)
}

// forks counts the process creations strace recorded in log.
func forks(t *testing.T, log string) int {
	t.Helper()
	n := 0
	for _, l := range strings.Split(string(readFile(t, log)), "\n") {
		if strings.Contains(l, "clone(") || strings.Contains(l, "clone3(") || strings.Contains(l, "fork(") {
			n++
		}
	}
	return n
}

// The probe walks /proc without a fork per process: what it forks does
// not grow with the processes the node runs (a node runs thousands; a
// fork for each took seconds on a loaded one). Counted with strace, not
// timed.
func TestProbeForksNothingPerProcess(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("no strace: the probe's forks are not counted")
	}
	n := newNode(t, sshclient.Options{})
	ctx := testCtx(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "manifests", "kubelet.json")
	content := []byte("{}\n")
	writeFile(t, p, content, 0o600)
	c := service.Component{Name: uniqueName(false), Files: []string{p}, BackupDir: filepath.Join(dir, "backup")}
	log := filepath.Join(dir, "strace.log")
	r := &straceRunner{inner: n.r, log: log}
	if _, err := r.Run(ctx, n.t, nodeops.Command{Line: "true"}); err != nil {
		t.Skipf("strace does not run here (%v): the probe's forks are not counted", err)
	}

	count := func() int {
		t.Helper()
		s, err := service.Probe(ctx, r, n.t, c)
		if err != nil {
			t.Fatalf("Probe under strace: %v", err)
		}
		if s.Mechanism != service.File || s.Path != p || s.Hash != sum(content) || s.Running() {
			t.Fatalf("Probe under strace: %+v", s)
		}
		return forks(t, log)
	}
	before := count()
	// Processes the probe must look at and pass over: none has the
	// component's name.
	const extra = 200
	for i := 0; i < extra; i++ {
		startProc(t, sleep, "sleep", "600")
	}
	after := count()
	// A fork per process would add at least extra; the fixed part can
	// vary by one or two (the shell's own subshells on a busy machine).
	if after-before >= extra/4 {
		t.Errorf("the probe forked %d times with %d more processes running, %d before: want no fork per process", after, extra, before)
	} else {
		t.Logf("the probe forked %d times, with and without %d more processes", after, extra)
	}
}

// Aside moves the file to its backup and Back puts it back, with the
// bytes and the mode; both refuse to act on a file that is not as
// planned.
func TestAsideAndBack(t *testing.T) {
	n := newNode(t, sshclient.Options{})
	ctx := testCtx(t)
	dir := t.TempDir()
	md := filepath.Join(dir, "manifests")
	p := filepath.Join(md, "kube-controller-manager.yaml")
	content := []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-controller-manager\n")
	writeFile(t, p, content, 0o600)
	writeFile(t, filepath.Join(md, "etcd.yaml"), []byte("# etcd\n"), 0o600)
	backupDir := filepath.Join(dir, "breakglass-backup")
	c := service.Component{Name: uniqueName(true), Files: []string{p}, BackupDir: backupDir}
	h := sum(content)

	const id1, id2 = "20250101T000000Z-aside", "20250102T000000Z-aside"
	backup := c.BackupPath(id1, p)
	if want := filepath.Join(backupDir, id1, "kube-controller-manager.yaml"); backup != want {
		t.Fatalf("BackupPath = %q, want %q", backup, want)
	}
	if got, want := c.BackupPath("2025-01-01 12:00/x", p), filepath.Join(backupDir, "2025-01-01_12_00_x", "kube-controller-manager.yaml"); got != want {
		t.Errorf("BackupPath of an ID with / and spaces = %q, want %q", got, want)
	}
	if got, want := (service.Component{Name: "x", Files: []string{p}}).BackupPath(id1, p), filepath.Join(dir, "breakglass-backup", id1, "kube-controller-manager.yaml"); got != want {
		t.Errorf("default BackupPath = %q, want %q (next to the manifests directory)", got, want)
	}

	// A wrong expected hash: stale, nothing moved, no backup made.
	wrong := sum([]byte("what the plan saw"))
	err := service.Aside(ctx, n.r, n.t, p, wrong, backup)
	var stale *service.StaleError
	if !errors.As(err, &stale) {
		t.Fatalf("Aside with a wrong hash: %v (%T), want *service.StaleError", err, err)
	}
	if stale.Node != n.t.Name || stale.Path != p || stale.Expected != wrong || stale.Found != h {
		t.Errorf("StaleError %+v, want node %s path %s expected %.12s found %.12s", *stale, n.t.Name, p, wrong, h)
	}
	if !strings.Contains(stale.Error(), h[:12]) || !strings.Contains(stale.Error(), wrong[:12]) {
		t.Errorf("StaleError message %q does not name both hashes", stale.Error())
	}
	if got := readFile(t, p); !bytes.Equal(got, content) || modeOf(t, p) != 0o600 {
		t.Errorf("after a stale Aside the file holds %q mode %o, want it unchanged", got, modeOf(t, p))
	}
	absent(t, backupDir)

	// As planned: moved.
	if err := service.Aside(ctx, n.r, n.t, p, h, backup); err != nil {
		t.Fatalf("Aside: %v", err)
	}
	absent(t, p)
	if got := readFile(t, backup); !bytes.Equal(got, content) {
		t.Errorf("backup holds %q, want %q", got, content)
	}
	if m := modeOf(t, backup); m != 0o600 {
		t.Errorf("backup mode %o, want 600 (the file's)", m)
	}
	if m := modeOf(t, filepath.Dir(backup)); m != 0o700 {
		t.Errorf("backup directory mode %o, want 700", m)
	}
	if got := readFile(t, filepath.Join(md, "etcd.yaml")); string(got) != "# etcd\n" {
		t.Errorf("the other manifest was changed: %q", got)
	}
	s := probe(t, ctx, n, c)
	if s.Mechanism != "" || s.Path != "" {
		t.Errorf("after Aside: Mechanism %q Path %q, want the file gone", s.Mechanism, s.Path)
	}
	if want := map[string]string{backup: h}; !maps.Equal(s.Aside, want) {
		t.Errorf("Aside %v, want %v", s.Aside, want)
	}
	if b, bh := s.NewestAside(); b != backup || bh != h {
		t.Errorf("NewestAside = %q %.12s, want %q %.12s", b, bh, backup, h)
	}
	if got := s.Dir(p); !slices.Equal(got, []string{"etcd.yaml"}) {
		t.Errorf("Dir(p) after Aside = %q, want [etcd.yaml]", got)
	}

	// Again (a retry after a lost answer): done already, nothing changes.
	if err := service.Aside(ctx, n.r, n.t, p, h, backup); err != nil {
		t.Errorf("Aside again: %v, want done already", err)
	}
	if got := readFile(t, backup); !bytes.Equal(got, content) {
		t.Errorf("backup after a second Aside holds %q", got)
	}
	absent(t, p)

	// The file is gone and the backup is not the planned one: stale
	// (absent), nothing made.
	otherBackup := c.BackupPath("20250101T000000Z-other", p)
	err = service.Aside(ctx, n.r, n.t, p, h, otherBackup)
	if !errors.As(err, &stale) || stale.Found != "absent" {
		t.Errorf("Aside of a file that is gone: %v, want *StaleError found absent", err)
	}
	absent(t, filepath.Dir(otherBackup))

	// Back where the file already exists with other bytes: stale, the
	// file is not overwritten.
	other := []byte("someone else's manifest\n")
	writeFile(t, p, other, 0o644)
	err = service.Back(ctx, n.r, n.t, id1, p, content, "600", 0, 0, backup, []string{"etcd.yaml"})
	if !errors.As(err, &stale) {
		t.Fatalf("Back over an existing file: %v (%T), want *service.StaleError", err, err)
	}
	if stale.Expected != "absent" || stale.Found != sum(other) || stale.Path != p || stale.Node != n.t.Name {
		t.Errorf("StaleError %+v, want expected absent found %.12s", *stale, sum(other))
	}
	if got := readFile(t, p); !bytes.Equal(got, other) || modeOf(t, p) != 0o644 {
		t.Errorf("Back overwrote the existing file: %q mode %o", got, modeOf(t, p))
	}
	assertNoTemp(t, md)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}

	// Back from the backup: the bytes and the mode of the file moved
	// aside, the backup kept.
	if err := service.Back(ctx, n.r, n.t, id1, p, content, "600", 0, 0, backup, []string{"etcd.yaml"}); err != nil {
		t.Fatalf("Back: %v", err)
	}
	if got := readFile(t, p); !bytes.Equal(got, content) {
		t.Errorf("after Back the file holds %q, want %q", got, content)
	}
	if m := modeOf(t, p); m != 0o600 {
		t.Errorf("after Back the file's mode is %o, want 600", m)
	}
	if got := readFile(t, backup); !bytes.Equal(got, content) {
		t.Errorf("after Back the backup holds %q", got)
	}
	assertNoTemp(t, md)
	s = probe(t, ctx, n, c)
	if s.Mechanism != service.File || s.Path != p || s.Hash != h || s.Mode != "600" {
		t.Errorf("after Back: Mechanism %q Path %q Hash %.12s Mode %s", s.Mechanism, s.Path, s.Hash, s.Mode)
	}

	// Back again (a retry): already back, nothing changes.
	if err := service.Back(ctx, n.r, n.t, id1, p, content, "600", 0, 0, backup, []string{"etcd.yaml"}); err != nil {
		t.Errorf("Back again: %v, want back already", err)
	}
	if got := readFile(t, p); !bytes.Equal(got, content) {
		t.Errorf("after a second Back the file holds %q", got)
	}

	// A later change moves it aside again: the newest backup is its.
	backup2 := c.BackupPath(id2, p)
	if err := service.Aside(ctx, n.r, n.t, p, h, backup2); err != nil {
		t.Fatalf("second Aside: %v", err)
	}
	absent(t, p)
	s = probe(t, ctx, n, c)
	if want := map[string]string{backup: h, backup2: h}; !maps.Equal(s.Aside, want) {
		t.Errorf("Aside %v, want %v", s.Aside, want)
	}
	if b, bh := s.NewestAside(); b != backup2 || bh != h {
		t.Errorf("NewestAside = %q %.12s, want %q", b, bh, backup2)
	}

	// Back with no backup left: the bytes given, with the mode given.
	if err := os.RemoveAll(backupDir); err != nil {
		t.Fatal(err)
	}
	if err := service.Back(ctx, n.r, n.t, id2, p, content, "640", os.Geteuid(), os.Getegid(), backup2, []string{"etcd.yaml"}); err != nil {
		t.Fatalf("Back from the journal's bytes: %v", err)
	}
	if got := readFile(t, p); !bytes.Equal(got, content) {
		t.Errorf("after Back from bytes the file holds %q", got)
	}
	if m := modeOf(t, p); m != 0o640 {
		t.Errorf("after Back from bytes the mode is %o, want 640", m)
	}
	assertNoTemp(t, md)

	// A backup that no longer has the bytes is not used: the bytes given
	// are written.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	writeFile(t, backup2, []byte("tampered backup\n"), 0o600)
	if err := service.Back(ctx, n.r, n.t, id2, p, content, "600", 0, 0, backup2, []string{"etcd.yaml"}); err != nil {
		t.Fatalf("Back with a tampered backup: %v", err)
	}
	if got := readFile(t, p); !bytes.Equal(got, content) {
		t.Errorf("Back with a tampered backup wrote %q, want the bytes given", got)
	}

	// A name the directory did not hold when planned: written, and a
	// *manifest.StrayError names it.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(md, "stray.yaml"), []byte("# stray\n"), 0o600)
	err = service.Back(ctx, n.r, n.t, id2, p, content, "600", 0, 0, backup2, []string{"etcd.yaml"})
	var stray *manifest.StrayError
	if !errors.As(err, &stray) || !slices.Equal(stray.Names, []string{"stray.yaml"}) {
		t.Errorf("Back with a stray file: %v, want *manifest.StrayError naming stray.yaml", err)
	}
	if got := readFile(t, p); !bytes.Equal(got, content) {
		t.Errorf("Back with a stray file: the file holds %q, want it written", got)
	}
}

// A backup that exists with other bytes is not overwritten, and the file
// stays; a backup that exists with the file's bytes (an earlier attempt
// that copied it) is used.
func TestAsideExistingBackup(t *testing.T) {
	n := newNode(t, sshclient.Options{})
	ctx := testCtx(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "manifests", "kubelet.json")
	content := []byte(`{"argv": ["kubelet"]}`)
	writeFile(t, p, content, 0o644)
	c := service.Component{Name: uniqueName(false), Files: []string{p}, BackupDir: filepath.Join(dir, "backup")}
	backup := c.BackupPath("id-1", p)
	other := []byte("another change's backup")
	writeFile(t, backup, other, 0o600)

	err := service.Aside(ctx, n.r, n.t, p, sum(content), backup)
	var stale *service.StaleError
	if err == nil || errors.As(err, &stale) || !strings.Contains(err.Error(), "holds other bytes") {
		t.Errorf("Aside onto a backup with other bytes: %v, want an error that says so (not stale)", err)
	}
	if got := readFile(t, p); !bytes.Equal(got, content) {
		t.Errorf("the file holds %q, want it left", got)
	}
	if got := readFile(t, backup); !bytes.Equal(got, other) {
		t.Errorf("the backup holds %q, want it left", got)
	}

	writeFile(t, backup, content, 0o644)
	if err := service.Aside(ctx, n.r, n.t, p, sum(content), backup); err != nil {
		t.Fatalf("Aside onto a backup with the file's bytes: %v", err)
	}
	absent(t, p)
	if got := readFile(t, backup); !bytes.Equal(got, content) {
		t.Errorf("the backup holds %q", got)
	}
}

// failRunner fails the test if anything is run: bad input is refused
// before a command goes to the node.
type failRunner struct {
	t *testing.T
	n atomic.Int32
}

func (r *failRunner) Run(_ context.Context, _ nodeops.Target, c nodeops.Command) (nodeops.Output, error) {
	r.n.Add(1)
	r.t.Errorf("a command ran for bad input: %.80q", c.Line)
	return nodeops.Output{}, errors.New("not run")
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	r := &failRunner{t: t}
	tg := nodeops.Target{Name: "node1"}
	dir := t.TempDir()
	p := filepath.Join(dir, "manifests", "kubelet.json")
	backup := filepath.Join(dir, "backup")

	for _, c := range []service.Component{
		{Name: "", Files: []string{p}, BackupDir: backup},
		{Name: "kube/let", Files: []string{p}, BackupDir: backup},
		{Name: "kube let", Files: []string{p}, BackupDir: backup},
		{Name: "kube\nlet", Files: []string{p}, BackupDir: backup},
		{Name: "kube'let", Files: []string{p}, BackupDir: backup},
		{Name: "kubelet", Files: []string{"manifests/kubelet.json"}, BackupDir: backup},
		{Name: "kubelet", Files: []string{dir + "/manifests/../manifests/kubelet.json"}, BackupDir: backup},
		{Name: "kubelet", Files: []string{p + "/"}, BackupDir: backup},
		{Name: "kubelet", Files: []string{p, dir + "/x\ny/kubelet.json"}, BackupDir: backup},
		{Name: "kubelet", Files: []string{p}, BackupDir: "backup"},
		{Name: "kubelet", Files: []string{p}, BackupDir: backup + "/"},
		{Name: "kubelet", Files: []string{p}, BackupDir: filepath.Dir(p)},
		{Name: "kubelet", Files: []string{p}, BackupDir: filepath.Join(filepath.Dir(p), "backup")},
		// The default backup directory of the first file is inside the
		// second's directory.
		{Name: "kubelet", Files: []string{dir + "/a/b/kubelet.json", dir + "/a/kubelet.json"}},
		// Nothing to look for.
		{Name: "kubelet"},
	} {
		if err := c.Check(); err == nil {
			t.Errorf("Check(%+v): nil, want an error", c)
		}
		if _, err := service.Probe(ctx, r, tg, c); err == nil {
			t.Errorf("Probe(%+v): nil, want an error", c)
		}
	}
	for _, c := range []service.Component{
		{Name: "kubelet", Files: []string{p}},
		{Name: "kube-controller-manager", Files: []string{p}, BackupDir: backup},
		service.Kubelet(),
		service.ControllerManager(""),
		service.ControllerManager(p),
	} {
		if err := c.Check(); err != nil {
			t.Errorf("Check(%+v): %v", c, err)
		}
	}

	h := sum([]byte("x"))
	for _, tc := range []struct{ p, backup string }{
		{"manifests/kubelet.json", backup + "/id/kubelet.json"},
		{dir + "/manifests/./kubelet.json", backup + "/id/kubelet.json"},
		{p, ""},
		{p, "id/kubelet.json"},
		{p, filepath.Join(filepath.Dir(p), "kubelet.json.bak")},
		{p, filepath.Join(filepath.Dir(p), "backup", "kubelet.json")},
	} {
		if err := service.Aside(ctx, r, tg, tc.p, h, tc.backup); err == nil {
			t.Errorf("Aside(%q, backup %q): nil, want an error", tc.p, tc.backup)
		}
	}
	if err := service.Back(ctx, r, tg, "id", "manifests/kubelet.json", []byte("x"), "600", 0, 0, backup+"/id/kubelet.json", nil); err == nil {
		t.Error("Back of a relative path: nil, want an error")
	}
	for _, a := range []string{"restart", "", "stop; reboot", "Stop"} {
		if err := service.Systemctl(ctx, r, tg, a, "kubelet"); err == nil {
			t.Errorf("Systemctl(%q): nil, want an error", a)
		}
	}
	if r.n.Load() != 0 {
		t.Errorf("%d commands ran for bad input", r.n.Load())
	}

	// The presets the steps use.
	if k := service.Kubelet(); k.Name != "kubelet" || k.Unit != "kubelet" || !slices.Equal(k.Files, []string{service.LabSpecDir + "/kubelet.json"}) {
		t.Errorf("Kubelet() = %+v", k)
	}
	if cm := service.ControllerManager(p); cm.Name != "kube-controller-manager" || !slices.Equal(cm.Files, []string{p}) {
		t.Errorf("ControllerManager(p) = %+v", cm)
	}
	if cm := service.ControllerManager(""); !slices.Equal(cm.Files, []string{"/etc/kubernetes/manifests/kube-controller-manager.yaml"}) {
		t.Errorf("ControllerManager(\"\") = %+v", cm)
	}
}

// pathRunner puts a directory first in the PATH of every command, for a
// stand-in systemctl: no unit of this machine is touched.
type pathRunner struct {
	inner nodeops.Runner
	bin   string
}

func (r *pathRunner) Run(ctx context.Context, t nodeops.Target, c nodeops.Command) (nodeops.Output, error) {
	c.Line = "PATH=" + nodeops.ShellQuote(r.bin) + ":$PATH; export PATH\n" + c.Line
	return r.inner.Run(ctx, t, c)
}

// Systemctl runs systemctl ACTION -- UNIT.service on the node, and says
// what systemctl said when it fails. systemctl here is a stand-in script
// that records its arguments.
func TestSystemctl(t *testing.T) {
	n := newNode(t, sshclient.Options{})
	ctx := testCtx(t)
	bin := t.TempDir()
	log := filepath.Join(bin, "calls")
	script := "#!/bin/sh\nprintf '%s|' \"$@\" >> " + nodeops.ShellQuote(log) + "\necho >> " + nodeops.ShellQuote(log) + "\n" +
		"case \"$3\" in fail*) echo \"Failed to $1 $3: Unit not found.\" >&2; exit 5;; esac\nexit 0\n"
	writeFile(t, filepath.Join(bin, "systemctl"), []byte(script), 0o755)
	r := &pathRunner{inner: n.r, bin: bin}

	if err := service.Systemctl(ctx, r, n.t, "stop", "kubelet"); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := service.Systemctl(ctx, r, n.t, "start", "my unit's"); err != nil {
		t.Fatalf("start: %v", err)
	}
	err := service.Systemctl(ctx, r, n.t, "start", "failing")
	var ee *nodeops.ExitError
	if err == nil || !errors.As(err, &ee) || ee.Code != 5 || !strings.Contains(err.Error(), "Unit not found") || !strings.Contains(err.Error(), n.t.Name) {
		t.Errorf("a failing systemctl: %v, want exit 5 with its message and the node", err)
	}
	got := string(readFile(t, log))
	want := "stop|--|kubelet.service|\nstart|--|my unit's.service|\nstart|--|failing.service|\n"
	if got != want {
		t.Errorf("systemctl calls:\n%s\nwant:\n%s", got, want)
	}
}

// ParseProbe refuses bytes that do not have the hash the node computed,
// and what is not base64 or a stat line.
func TestParseProbe(t *testing.T) {
	b := []byte("hello\n")
	enc := "aGVsbG8K"
	good := "F /m/a.yaml\nS 600 0 0\nH " + sum(b) + "\nB " + enc + "\nN /m/b\nN /m/a.yaml\nA /bk/1/a.yaml " + sum(b) + "\nA /bk/2/a.yaml " + sum(nil) + "\nP 12@345\nU \n"
	s, err := service.ParseProbe([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if s.Path != "/m/a.yaml" || s.Mode != "600" || !bytes.Equal(s.Bytes, b) || s.Active != "unknown" ||
		!slices.Equal(s.Dirs["/m"], []string{"a.yaml", "b"}) || !slices.Equal(s.Procs, []string{"12@345"}) {
		t.Errorf("ParseProbe: %+v", s)
	}
	if p, h := s.NewestAside(); p != "/bk/2/a.yaml" || h != sum(nil) {
		t.Errorf("NewestAside = %q %q", p, h)
	}
	// A backup directory with a space in it, and a directory listed twice
	// (two files of the component in it).
	s, err = service.ParseProbe([]byte("N /m/a.yaml\nN /m/b\nN /m/a.yaml\nN /m/b\nA /my dir/bk/1/a.yaml " + sum(b) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := s.Aside["/my dir/bk/1/a.yaml"]; !ok || h != sum(b) {
		t.Errorf("a backup path with a space: Aside = %v", s.Aside)
	}
	if !slices.Equal(s.Dirs["/m"], []string{"a.yaml", "b"}) {
		t.Errorf("a directory listed twice: Dirs = %v", s.Dirs)
	}
	for name, out := range map[string]string{
		"hash":   "F /m/a.yaml\nS 600 0 0\nH " + sum([]byte("other")) + "\nB " + enc + "\n",
		"no B":   "F /m/a.yaml\nS 600 0 0\nH " + sum(b) + "\n",
		"base64": "F /m/a.yaml\nS 600 0 0\nH " + sum(b) + "\nB !!!\n",
		"stat":   "F /m/a.yaml\nS 600 root 0\nH " + sum(b) + "\nB " + enc + "\n",
	} {
		if _, err := service.ParseProbe([]byte(out)); err == nil {
			t.Errorf("%s: nil, want an error", name)
		}
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("%s holds %s after a write", dir, e.Name())
		}
	}
}
