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
	// User and Host say who made the change, from where.
	User string `json:"user,omitempty"`
	Host string `json:"host,omitempty"`
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
// same file: each record is one write under an exclusive lock, synced
// before Append returns.
type Journal struct {
	path string
	now  func() time.Time
	user string
	host string

	mu sync.Mutex
}

// Open returns the journal at path, creating its directory and file (0600:
// records hold object values).
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
	j := &Journal{path: path, now: now}
	if u, err := user.Current(); err == nil {
		j.user = u.Username
	}
	j.host, _ = os.Hostname()
	return j, nil
}

// Path returns the file the journal appends to.
func (j *Journal) Path() string { return j.path }

// Append writes one record and syncs it to disk. It fills Time, User and
// Host when they are empty.
func (j *Journal) Append(r *Record) error {
	if r.Time.IsZero() {
		r.Time = j.now().UTC()
	}
	if r.User == "" {
		r.User = j.user
	}
	if r.Host == "" {
		r.Host = j.host
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	j.mu.Lock()
	defer j.mu.Unlock()
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("journal %s: lock: %w", j.path, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("journal %s: sync: %w", j.path, err)
	}
	return nil
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
// error naming its line number.
func Read(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("journal %s: no such file\nhint: pass --journal with the file the change was recorded in", path)
		}
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
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
