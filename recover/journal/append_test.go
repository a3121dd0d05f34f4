package journal

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// These tests run real processes against one journal file: the test binary
// re-executes itself as TestHelperAppend, switched on by helperEnv.
//
// What they can catch (each checked by breaking a scratch copy of Append):
// on Linux, one write(2) to a regular file opened O_APPEND is not interleaved
// with another on a local filesystem (the inode lock is held for the whole
// write), so an Append with neither flock nor trimTorn still passes
// TestAppendMultiProcess, but fails TestAppendAfterCrash (the torn line ends
// up in the middle). Without the flock but with trimTorn, it fails
// TestAppendMultiProcess: one process cuts off another's record while it is
// being written. Without the flock and with a record sent in two write(2)s,
// as os.File.Write does after a short write (TestAppendShortWrite), lines
// are torn and mixed; with the flock, the same two writes pass.

const (
	helperEnv      = "BREAKGLASS_JOURNAL_HELPER" // mode: append, tear, fsize
	helperPathEnv  = "BREAKGLASS_JOURNAL_PATH"
	helperProcEnv  = "BREAKGLASS_JOURNAL_PROC"
	helperCountEnv = "BREAKGLASS_JOURNAL_COUNT"
)

// helper returns the command that runs the test binary again as a helper
// process doing mode on the journal at path, as process number proc.
func helper(mode, path string, proc, count int) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAppend$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		helperEnv+"="+mode, helperPathEnv+"="+path,
		helperProcEnv+"="+strconv.Itoa(proc), helperCountEnv+"="+strconv.Itoa(count))
	return cmd
}

// testRecord is record seq of process proc. Every 8th one carries 64 KiB of
// Before bytes (about 87 KiB of base64), so that its line is far larger than
// PIPE_BUF and the page size.
func testRecord(proc, seq int) *Record {
	r := &Record{Type: TypeIntent, ID: fmt.Sprintf("p%d-%d", proc, seq), Kind: KindNode, Op: "test", Status: StatusPending,
		Details: map[string]string{"proc": strconv.Itoa(proc), "seq": strconv.Itoa(seq)}}
	if seq%8 == 0 {
		r.Before = &Value{Bytes: payload(proc, seq)}
	}
	return r
}

func payload(proc, seq int) []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(proc*131 + seq*7 + i)
	}
	return b
}

// TestHelperAppend is not a test: it is the body of the helper processes.
func TestHelperAppend(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process of the multi-process tests")
	}
	path := os.Getenv(helperPathEnv)
	proc, _ := strconv.Atoi(os.Getenv(helperProcEnv))
	count, _ := strconv.Atoi(os.Getenv(helperCountEnv))
	switch mode {
	case "append":
		j, err := Open(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Start together: the parent closes stdin once every helper runs.
		io.Copy(io.Discard, os.Stdin)
		for seq := range count {
			if err := j.Append(testRecord(proc, seq)); err != nil {
				t.Fatal(err)
			}
		}
	case "tear":
		// What Append leaves when its process is killed in the middle of
		// the write: the lock held, half a line written. (Killing a real
		// Append mid-write(2) cannot be timed without a hook in Append.)
		b, _ := json.Marshal(testRecord(proc, 0))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := flock(f, syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(b[:len(b)/2]); err != nil {
			t.Fatal(err)
		}
		fmt.Println("torn")
		io.Copy(io.Discard, os.Stdin) // until SIGKILL
		t.Fatal("not killed")
	case "fsize":
		// A file size limit 1000 bytes past the end of the journal: the
		// kernel writes the next record short, then refuses the rest with
		// EFBIG (SIGXFSZ, which the Go runtime ignores).
		j, err := Open(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			t.Fatal(err)
		}
		lim.Cur = uint64(fi.Size()) + 1000
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("append: %v\n", j.Append(testRecord(proc, 0)))
	default:
		t.Fatalf("helper mode %q", mode)
	}
}

// TestAppendMultiProcess appends from several processes at once and checks
// that no record is lost, duplicated, torn or reordered within its process.
func TestAppendMultiProcess(t *testing.T) {
	const procs, per = 8, 200
	path := filepath.Join(t.TempDir(), "journal.jsonl")
	cmds := make([]*exec.Cmd, procs)
	outs := make([]bytes.Buffer, procs)
	var starts []io.Closer
	for p := range procs {
		cmd := helper("append", path, p, per)
		cmd.Stdout, cmd.Stderr = &outs[p], &outs[p]
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[p] = cmd
		starts = append(starts, in)
	}
	for _, in := range starts {
		in.Close()
	}
	for p, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper %d: %v\n%s", p, err, outs[p].Bytes())
		}
	}

	recs := readWhole(t, path, procs*per)
	next := make([]int, procs)
	runs := map[int]string{}
	switches := 0
	for i, r := range recs {
		proc, _ := strconv.Atoi(r.Details["proc"])
		seq, _ := strconv.Atoi(r.Details["seq"])
		if proc < 0 || proc >= procs || r.ID != fmt.Sprintf("p%d-%d", proc, seq) {
			t.Fatalf("record %d: mixed up: id %q, details %v", i, r.ID, r.Details)
		}
		if seq != next[proc] {
			t.Fatalf("record %d: process %d seq %d, want %d (lost, duplicated or out of order)", i, proc, seq, next[proc])
		}
		next[proc]++
		if seq%8 == 0 && (r.Before == nil || !bytes.Equal(r.Before.Bytes, payload(proc, seq))) {
			t.Fatalf("record %d (%s): payload differs", i, r.ID)
		}
		if r.Operator == "" || r.RunID == "" {
			t.Fatalf("record %d: operator %q, run %q", i, r.Operator, r.RunID)
		}
		if runs[proc] == "" {
			runs[proc] = r.RunID
		} else if r.RunID != runs[proc] {
			t.Fatalf("record %d: process %d has runs %s and %s", i, proc, runs[proc], r.RunID)
		}
		if i > 0 && r.Details["proc"] != recs[i-1].Details["proc"] {
			switches++
		}
	}
	for p, n := range next {
		if n != per {
			t.Errorf("process %d: %d records, want %d", p, n, per)
		}
	}
	distinct := map[string]bool{}
	for _, id := range runs {
		distinct[id] = true
	}
	if len(distinct) != procs {
		t.Errorf("%d run IDs for %d processes: %v", len(distinct), procs, runs)
	}
	t.Logf("%d records, the writer changed %d times", len(recs), switches)
}

// TestAppendAfterCrash kills a process holding the lock with half a record
// written, then appends from this process and others: the torn line is
// skipped by Read, then cut off by the next Append, and no record is lost.
func TestAppendAfterCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.jsonl")
	j, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for seq := 1; seq <= 3; seq++ {
		if err := j.Append(testRecord(0, seq)); err != nil {
			t.Fatal(err)
		}
	}

	cmd := helper("tear", path, 1, 1)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "torn\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %q %v\n%s", line, err, stderr.Bytes())
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != syscall.EWOULDBLOCK {
		t.Fatalf("the helper does not hold the lock: %v", err)
	}
	cmd.Process.Kill() // SIGKILL
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("helper: %v\n%s", err, stderr.Bytes())
	}
	// The kernel drops the lock of a dead process.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("lock still held after the holder died: %v", err)
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)

	if raw, _ := os.ReadFile(path); raw[len(raw)-1] == '\n' {
		t.Fatal("no torn line")
	}
	if recs, err := Read(path); err != nil || len(recs) != 3 {
		t.Fatalf("after the crash: %d records, %v", len(recs), err)
	}

	if err := j.Append(testRecord(0, 4)); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	for p := 2; p <= 3; p++ {
		cmd := helper("append", path, p, 10)
		cmd.Stdin = strings.NewReader("")
		cmds = append(cmds, cmd)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range readWhole(t, path, 3+1+2*10) {
		if r.ID == "p1-0" {
			t.Errorf("the torn record was read: %+v", r)
		}
	}
}

// TestAppendShortWrite makes the kernel write a record short, for real (a
// file size limit in a helper process): Append must fail and take back what
// it wrote, leaving the journal as it was.
func TestAppendShortWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.jsonl")
	j, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Append(testRecord(0, 1)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	out, err := helper("fsize", path, 1, 1).CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "append: journal "+path+": write "+path+": file too large") {
		t.Errorf("a short write is not an error:\n%s", out)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Errorf("the failed append left %d bytes behind", len(after)-len(before))
	}
	readWhole(t, path, 1)
}

// TestAppendTrimsTornTail checks what Append does with a journal that does
// not end with a newline.
func TestAppendTrimsTornTail(t *testing.T) {
	whole := `{"type":"intent","id":"whole","status":"pending"}`
	for name, tc := range map[string]struct {
		tail string
		want []string // IDs after one append ("new")
	}{
		"torn record":              {`{"type":"intent","id":"torn","before":{"bytes":"azhz`, []string{"first", "new"}},
		"torn record over chunks":  {`{"type":"intent","id":"torn","before":{"bytes":"` + strings.Repeat("A", 200<<10), []string{"first", "new"}},
		"whole record, no newline": {whole, []string{"first", "whole", "new"}},
		"blanks":                   {"  ", []string{"first", "new"}},
	} {
		t.Run(name, func(t *testing.T) {
			for _, first := range []string{`{"type":"intent","id":"first","status":"pending"}` + "\n", ""} {
				path := filepath.Join(t.TempDir(), "journal.jsonl")
				if err := os.WriteFile(path, []byte(first+tc.tail), 0o600); err != nil {
					t.Fatal(err)
				}
				j, err := Open(path, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := j.Append(&Record{Type: TypeIntent, ID: "new", Status: StatusPending}); err != nil {
					t.Fatal(err)
				}
				want := tc.want
				if first == "" {
					want = want[1:]
				}
				recs := readWhole(t, path, len(want))
				for i, r := range recs {
					if r.ID != want[i] {
						t.Errorf("records %v, want %v", ids(recs), want)
						break
					}
				}
			}
		})
	}
}

// readWhole reads the journal at path, checking that it holds n whole lines
// and that each is a record.
func readWhole(t *testing.T, path string, n int) []Record {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) == 0 || raw[len(raw)-1] != '\n' {
		t.Fatalf("the journal does not end with a newline")
	}
	if lines := bytes.Count(raw, []byte{'\n'}); lines != n {
		t.Fatalf("%d lines, want %d", lines, n)
	}
	recs, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Fatalf("%d records, want %d", len(recs), n)
	}
	return recs
}

func ids(recs []Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}

// TestAppendAllBatch writes a batch far larger than AppendAll's buffer
// (a fan-out's intents): every record reads back whole, in order, after
// what was there.
func TestAppendAllBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.jsonl")
	j, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Append(testRecord(0, 1)); err != nil {
		t.Fatal(err)
	}
	var batch []*Record
	for seq := 2; seq <= 4000; seq++ {
		batch = append(batch, testRecord(0, seq))
	}
	if err := j.AppendAll(batch); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Size() < 2*appendBuffer {
		t.Fatalf("the batch is %d bytes, not larger than the buffer", fi.Size())
	}
	recs := readWhole(t, path, 4000)
	for i, r := range recs {
		if want := fmt.Sprintf("p0-%d", i+1); r.ID != want {
			t.Fatalf("record %d is %s, want %s", i, r.ID, want)
		}
	}
}
