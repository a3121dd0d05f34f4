package journal

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestAppendAndRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "journal.jsonl")
	now := time.Date(2025, 3, 1, 10, 15, 0, 0, time.UTC)
	j, err := Open(path, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("journal file mode: %v %v", fi.Mode(), err)
	}
	id := NewID(now)
	if !strings.HasPrefix(id, "20250301T101500-") || len(id) != len("20250301T101500-")+6 {
		t.Errorf("id %q", id)
	}
	// Concurrent appends (several goroutines, as several processes would)
	// each land as one whole line.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &Record{Type: TypeIntent, ID: id, Kind: KindEtcd, Op: "scale", Attempt: i + 1, Status: StatusPending,
				Target: Target{Key: "/registry/deployments/a/b"}, Before: &Value{Bytes: []byte("k8s\x00\xff\x00binary"), Revision: 7}}
			if err := j.Append(rec); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	recs, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 20 {
		t.Fatalf("%d records", len(recs))
	}
	r := recs[0]
	if string(r.Before.Bytes) != "k8s\x00\xff\x00binary" || r.Before.Revision != 7 || !r.Time.Equal(now) || r.Host == "" {
		t.Errorf("record: %+v", r)
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(string(raw), `"bytes":"azhzAP8AYmluYXJ5"`) {
		t.Errorf("bytes are not base64 in the file:\n%s", raw[:200])
	}

	// A torn last line (crash while appending) is skipped; a bad line in the
	// middle is an error with its line number.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"type":"intent","id":"x"`)
	f.Close()
	if recs, err := Read(path); err != nil || len(recs) != 20 {
		t.Errorf("torn last line: %d records, %v", len(recs), err)
	}
	os.WriteFile(path, []byte("{\"type\":\"intent\"}\nnot json\n{}\n"), 0o600)
	if _, err := Read(path); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("bad line: %v", err)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "hint:") {
		t.Errorf("missing journal: %v", err)
	}
}

func TestApplied(t *testing.T) {
	recs := []Record{
		{Type: TypeIntent, ID: "a", Kind: KindEtcd, Attempt: 1, Status: StatusPending},
		{Type: TypeOutcome, ID: "a", Kind: KindEtcd, Attempt: 1, Status: StatusConflict},
		{Type: TypeIntent, ID: "a", Kind: KindEtcd, Attempt: 2, Status: StatusPending, Summary: "second"},
		{Type: TypeOutcome, ID: "a", Kind: KindEtcd, Attempt: 2, Status: StatusApplied, After: &Value{Revision: 9}},
		{Type: TypeIntent, ID: "b", Kind: KindEtcd, Attempt: 1, Status: StatusPending},
		{Type: TypeOutcome, ID: "b", Kind: KindEtcd, Attempt: 1, Status: StatusUnknown, Error: "timeout"},
		{Type: TypeIntent, ID: "c", Kind: KindEtcd, Attempt: 1, Status: StatusPending},
		{Type: TypeIntent, ID: "n", Kind: KindNode, Status: StatusPending},
	}
	in, out, err := Applied(recs, "a")
	if err != nil || in.Summary != "second" || out.After.Revision != 9 {
		t.Errorf("a: %+v %+v %v", in, out, err)
	}
	for id, want := range map[string]string{"b": "unknown", "c": "never applied", "n": "not an etcd one", "z": "not in the journal"} {
		if _, _, err := Applied(recs, id); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", id, err, want)
		}
	}
}
