package journal

import (
	"os"
	"path/filepath"
	"regexp"
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

func TestOperator(t *testing.T) {
	for _, tc := range []struct{ effective, host, sudo, want string }{
		{"alice", "ops-1", "", "alice@ops-1"},
		{"root", "ops-1", "alice", "alice@ops-1"}, // sudo: the human, not root
		{"postgres", "ops-1", "alice", "alice@ops-1"},
		{"root", "", "", "root"},
	} {
		env := map[string]string{"SUDO_USER": tc.sudo}
		if got := operator(tc.effective, tc.host, func(k string) string { return env[k] }); got != tc.want {
			t.Errorf("operator(%q, %q) with SUDO_USER=%q = %q, want %q", tc.effective, tc.host, tc.sudo, got, tc.want)
		}
	}
}

func TestRunAndOperator(t *testing.T) {
	t.Setenv("SUDO_USER", "")
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.jsonl")
	j, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(filepath.Join(dir, "other.jsonl"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// One run ID per process, whichever journal it opens and how often.
	if !regexp.MustCompile(`^run-\d{8}T\d{6}-[0-9a-f]{6}$`).MatchString(j.RunID()) || other.RunID() != j.RunID() {
		t.Errorf("run IDs %q, %q", j.RunID(), other.RunID())
	}
	host, _ := os.Hostname()
	if j.Operator() != j.user+"@"+host || j.user == "" {
		t.Errorf("operator %q, user %q, host %q", j.Operator(), j.user, host)
	}

	rb := j.WithRun("rb-42")
	if rb.Path() != path || rb.RunID() != "rb-42" || j.RunID() == "rb-42" || j.WithRun("").RunID() != j.RunID() {
		t.Errorf("WithRun: %q %q %q", rb.Path(), rb.RunID(), j.RunID())
	}
	for _, a := range []struct {
		j *Journal
		r *Record
	}{
		{j, &Record{ID: "a"}},
		{rb, &Record{ID: "b"}},
		{rb, &Record{ID: "c", RunID: "given", Operator: "bob@laptop"}},
	} {
		if err := a.j.Append(a.r); err != nil {
			t.Fatal(err)
		}
	}

	t.Setenv("SUDO_USER", "alice")
	sudo, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sudo.Append(&Record{ID: "d"}); err != nil {
		t.Fatal(err)
	}

	recs, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, r.ID+" "+r.RunID+" "+r.Operator+" "+r.User)
	}
	u := j.user
	want := []string{
		"a " + j.RunID() + " " + u + "@" + host + " " + u,
		"b rb-42 " + u + "@" + host + " " + u,
		"c given bob@laptop " + u,
		"d " + j.RunID() + " alice@" + host + " " + u, // the human, and the effective user
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("records:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	raw, _ := os.ReadFile(path)
	if !strings.Contains(string(raw), `"operator":"alice@`+host+`","runId":"`+j.RunID()+`"`) {
		t.Errorf("operator and runId in the file:\n%s", raw)
	}
}
