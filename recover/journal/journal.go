// Package journal is the append-only record of every change breakglass
// makes: one JSON line when a change is about to be made (with the exact
// value it replaces) and one when its outcome is known. It is what undo reads,
// and what an incident review reads afterwards. etcd writes, node operations
// and runbook steps all write the same Record.
package journal

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Record types.
const (
	TypeIntent  = "intent"
	TypeOutcome = "outcome"
)

// Statuses. An intent is always "pending"; an outcome is one of the others.
const (
	StatusPending  = "pending"
	StatusApplied  = "applied"
	StatusConflict = "conflict" // lost a compare-and-swap race; retried or given up
	StatusFailed   = "failed"   // refused or failed before anything was written
	StatusUnknown  = "unknown"  // the write was sent, its result lost
)

// Kinds of change.
const (
	KindEtcd = "etcd"
	KindNode = "node"
)

// Record is one line of the journal.
type Record struct {
	// Type is "intent" (written before the change) or "outcome".
	Type string `json:"type"`
	// ID names the change; its intents and outcomes share it.
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	// Kind is what is changed: "etcd" (a key), "node" (a file, a unit, a
	// container on a node).
	Kind string `json:"kind"`
	// Op is the operation: "scale", "daemonset-pause", "delete", "undo"...
	Op     string `json:"op"`
	Target Target `json:"target"`
	// Attempt numbers the tries of one change (compare-and-swap retries).
	Attempt int `json:"attempt,omitempty"`
	// Before is the exact previous state; After the new one (in an outcome,
	// with the revision the write produced).
	Before *Value `json:"before,omitempty"`
	After  *Value `json:"after,omitempty"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// Summary says what changes in a few words.
	Summary string `json:"summary,omitempty"`
	// Undoes is the ID of the change this one reverts.
	Undoes string `json:"undoes,omitempty"`
	// Runbook and Step tie a change to the runbook step that made it.
	Runbook string `json:"runbook,omitempty"`
	Step    string `json:"step,omitempty"`
	// User and Host say who made the change, from where. User is the
	// effective user: root under sudo.
	User string `json:"user,omitempty"`
	Host string `json:"host,omitempty"`
	// Operator is the human who made the change, as user@host: under sudo,
	// the user who ran sudo (SUDO_USER) rather than the effective user.
	Operator string `json:"operator"`
	// RunID groups the records one run wrote: one ID per breakglass process,
	// unless a runbook engine passes its own (Journal.WithRun).
	RunID string `json:"runId"`
	// Details holds kind-specific facts that have no field of their own.
	Details map[string]string `json:"details,omitempty"`
}

// Target is what a change is made to.
type Target struct {
	// Key is the etcd key.
	Key string `json:"key,omitempty"`
	// Resource ("deployments.apps"), Namespace and Name of an object.
	Resource  string `json:"resource,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Node and Path for node-side changes.
	Node string `json:"node,omitempty"`
	Path string `json:"path,omitempty"`
}

// Value is a state of the target: bytes (base64 in JSON) and, for etcd, the
// ModRevision. Absent means the key or file did not exist.
type Value struct {
	Bytes    []byte `json:"bytes,omitempty"`
	Revision int64  `json:"revision,omitempty"`
	Absent   bool   `json:"absent,omitempty"`
}

// DefaultPath is $XDG_STATE_HOME/breakglass/journal.jsonl, or
// ~/.local/state/breakglass/journal.jsonl.
func DefaultPath() string {
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = "."
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "breakglass", "journal.jsonl")
}

// Journal appends records to one file. Several processes may append to the
// same file: each record is one write under an exclusive flock, synced
// before Append returns, and Read takes a shared flock, so readers never see
// half a record that is still being written.
type Journal struct {
	path     string
	now      func() time.Time
	user     string
	host     string
	operator string
	run      string

	// mu is shared by the copies WithRun makes: they append to one file.
	mu *sync.Mutex
}

// Open returns the journal at path, creating its directory and file (0600:
// records hold object values). Its records name the operator and this
// process's run ID.
func Open(path string, now func() time.Time) (*Journal, error) {
	if now == nil {
		now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("journal %s: %w\nhint: pass --journal FILE in a writable directory", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w\nhint: pass --journal FILE in a writable directory", path, err)
	}
	f.Close()
	j := &Journal{path: path, now: now, run: processRun(), mu: new(sync.Mutex)}
	if u, err := user.Current(); err == nil && u.Username != "" {
		j.user = u.Username
	} else {
		// No passwd entry (a bare container): the uid still says who.
		j.user = strconv.Itoa(os.Geteuid())
	}
	j.host, _ = os.Hostname()
	j.operator = operator(j.user, j.host, os.Getenv)
	return j, nil
}

// processRun is the run ID of this process: every Journal it opens shares it
// (undo opens the journal twice), so that an incident review can group all
// the records one invocation wrote.
var processRun = sync.OnceValue(func() string { return "run-" + NewID(time.Now()) })

// operator names the human making the change, as user@host. Under sudo that
// is SUDO_USER, the user who ran sudo, not the effective user (root): an
// incident review wants the human. SUDO_USER is taken as sudo left it; it is
// a name for the record, not an authentication.
func operator(effective, host string, getenv func(string) string) string {
	u := effective
	if s := getenv("SUDO_USER"); s != "" {
		u = s
	}
	if host == "" {
		return u
	}
	return u + "@" + host
}

// WithRun returns a journal that appends to the same file as j, under the
// same lock, with id as the run ID of its records: a runbook engine passes
// its own run ID so that all the records of a run group together, even when
// the run is resumed by another process. An empty id keeps j's run ID.
func (j *Journal) WithRun(id string) *Journal {
	c := *j
	if id != "" {
		c.run = id
	}
	return &c
}

// Path returns the file the journal appends to.
func (j *Journal) Path() string { return j.path }

// RunID returns the run ID the journal's records carry.
func (j *Journal) RunID() string { return j.run }

// Operator returns the operator the journal's records name, user@host.
func (j *Journal) Operator() string { return j.operator }

// Append writes one record and syncs it to disk. It fills Time, User, Host,
// Operator and RunID when they are empty.
//
// The record is marshalled whole, newline included, and handed to one
// write(2) under an exclusive flock on the file. The kernel writes a regular
// file short only when it runs out of space or quota, hits the file size
// limit, or the process is being killed; os.File.Write then writes the rest
// with another write(2) (or returns how far it got and the error). The flock
// is held across both, so another breakglass process can never land between
// the halves of a line. If the write fails, what it wrote is truncated away
// under the same lock, and the journal still ends with a whole line. A
// process killed in the middle of a write leaves a torn last line: Read skips
// it, and the next Append removes it before writing (trimTorn).
func (j *Journal) Append(r *Record) error { return j.AppendAll([]*Record{r}) }

// AppendAll writes several records in order under one lock and one sync:
// a fan-out's per-node outcomes cost one sync, not one per node. The
// records are encoded straight into a buffered writer on the file rather
// than into one slice of all of them first (that slice was tens of
// megabytes for a fleet's intents, all of it garbage after the write), so
// a batch goes out in writes of appendBuffer bytes; the flock held across
// them keeps other breakglass processes from landing in between, as it
// does for Append's halves. On a failed write (or a record that cannot be
// encoded) what it wrote is truncated away again (best effort, as in
// Append), and nothing of the batch is left.
func (j *Journal) AppendAll(recs []*Record) error {
	if len(recs) == 0 {
		return nil
	}
	for _, r := range recs {
		if r.Time.IsZero() {
			r.Time = j.now().UTC()
		}
		if r.User == "" {
			r.User = j.user
		}
		if r.Host == "" {
			r.Host = j.host
		}
		if r.Operator == "" {
			r.Operator = j.operator
		}
		if r.RunID == "" {
			r.RunID = j.run
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	// Read-write: trimTorn reads the end of the file.
	f, err := os.OpenFile(j.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	defer f.Close()
	if err := flock(f, syscall.LOCK_EX); err != nil {
		return fmt.Errorf("journal %s: lock: %w", j.path, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	end, err := trimTorn(f)
	if err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	// A single record is marshalled whole and handed to one write(2), as
	// Append promises; a batch goes through the buffer. json.Encoder
	// writes what json.Marshal returns, and a newline.
	w := bufio.NewWriterSize(f, appendBuffer)
	enc := json.NewEncoder(w)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			// Best effort: if this fails too, the next Append's trimTorn cuts.
			f.Truncate(end)
			return fmt.Errorf("journal %s: %w", j.path, err)
		}
	}
	// os.File.Write (under the buffer) returns an error whenever it wrote
	// less than it was given.
	if err := w.Flush(); err != nil {
		f.Truncate(end)
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("journal %s: sync: %w", j.path, err)
	}
	return nil
}

// appendBuffer is the size of AppendAll's writes. A record larger than it,
// written alone (Append), still goes out in one write: bufio passes it
// straight through.
const appendBuffer = 256 << 10

// flock takes a lock on the whole file, waiting for it.
func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// trimTorn makes f, locked, end with a whole line before a record is appended
// to it, and returns its size. Bytes after the last newline were left by an
// Append that was killed mid-write: they are not a whole record, that Append
// never returned, so nothing acted on them, and they are cut off (else the
// next record would make them a bad line in the middle, which Read refuses).
// Bytes after the last newline that do make a record (a journal edited by
// hand) are kept and given their newline; blanks are cut off too.
func trimTorn(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	if size == 0 {
		return 0, nil
	}
	var last [1]byte
	if _, err := f.ReadAt(last[:], size-1); err != nil {
		return 0, err
	}
	if last[0] == '\n' {
		return size, nil
	}
	start, err := lineStart(f, size)
	if err != nil {
		return 0, err
	}
	tail := make([]byte, size-start)
	if _, err := f.ReadAt(tail, start); err != nil {
		return 0, err
	}
	if t := bytes.TrimSpace(tail); len(t) > 0 && json.Unmarshal(t, new(Record)) == nil {
		if _, err := f.Write([]byte{'\n'}); err != nil {
			return 0, err
		}
		return size + 1, nil
	}
	if err := f.Truncate(start); err != nil {
		return 0, err
	}
	return start, nil
}

// lineStart returns the offset just after the last newline before size, or 0.
func lineStart(f *os.File, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		off := max(end-int64(len(buf)), 0)
		n, err := f.ReadAt(buf[:end-off], off)
		if err != nil && !(err == io.EOF && int64(n) == end-off) {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return off + int64(i) + 1, nil
		}
		end = off
	}
	return 0, nil
}

// NewID returns a change ID: the UTC time to the second, then 6 random hex
// digits, so that IDs sort by time and are short enough to type.
func NewID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b[:])
}

// Read returns every record of the journal at path, in order. A last line
// cut short (a crash while appending) is skipped; any other bad line is an
// error naming its line number. It reads under a shared flock, so an Append
// in progress in another process is either wholly in or wholly out.
func Read(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("journal %s: no such file\nhint: pass --journal with the file the change was recorded in", path)
		}
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	// A filesystem without flock is still read, unlocked:
	// reading a journal is what an emergency needs most.
	if err := flock(f, syscall.LOCK_SH); err != nil && err != syscall.ENOLCK && err != syscall.EOPNOTSUPP {
		return nil, fmt.Errorf("journal %s: lock: %w", path, err)
	}
	return decode(f, path)
}

func decode(r io.Reader, path string) ([]Record, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	var out []Record
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		complete := err == nil
		if err != nil && err != io.EOF {
			return out, fmt.Errorf("journal %s: %w", path, err)
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			var rec Record
			if jerr := json.Unmarshal(t, &rec); jerr != nil {
				if !complete {
					return out, nil // torn last line
				}
				return out, fmt.Errorf("journal %s:%d: %w", path, n, jerr)
			}
			out = append(out, rec)
		}
		if !complete {
			return out, nil
		}
	}
}

// Find returns the records of one change, in order.
func Find(records []Record, id string) []Record {
	var out []Record
	for _, r := range records {
		if r.ID == id {
			out = append(out, r)
		}
	}
	return out
}
