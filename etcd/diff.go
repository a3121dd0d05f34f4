package etcd

import (
	"crypto/sha256"
	"fmt"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
	"sigs.k8s.io/yaml"
)

// Render returns a value as YAML for people: the decoded object, or a line
// saying what it is when it cannot be decoded. An absent value renders as "".
func (c *Codec) Render(key string, value []byte) string {
	if value == nil {
		return ""
	}
	d, err := c.Decode(key, value, 0)
	if err != nil {
		return fmt.Sprintf("# %d bytes, %s, sha256 %x: %v\n", len(value), DetectEncoding(value), sha256.Sum256(value), err)
	}
	if m := d.Meta(); m != nil {
		m.SetResourceVersion("")
	}
	b, err := yaml.Marshal(d.Object)
	if err != nil {
		return fmt.Sprintf("# %d bytes, %s: %v\n", len(value), d.Encoding, err)
	}
	return string(b)
}

// DiffChange renders the change as a unified diff of the object's YAML.
func (c *Codec) DiffChange(ch *Change) string {
	before := c.Render(ch.Key, ch.Before)
	after := ""
	if !ch.Delete {
		after = c.Render(ch.Key, ch.After)
	}
	return UnifiedDiff(ch.Key+" (revision "+revString(ch.BeforeRevision)+")", ch.Key+" (new)", before, after, 3)
}

// UnifiedDiff returns a unified diff of two texts, line by line, with ctx
// lines of context, or "" when they are equal. A missing final newline counts
// as present. difflib's matcher (a port of Python's) finds matching lines
// through a hash index, and in a text over 200 lines it does not start a
// match on a line repeated in more than 1% of it: a 20,000-line object
// diffs in milliseconds, where a longest-common-subsequence table needed
// 400M cells. The price is a hunk that can be larger than the smallest one.
func UnifiedDiff(nameA, nameB, a, b string, ctx int) string {
	if a == b {
		return ""
	}
	d, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: splitLines(a), B: splitLines(b), FromFile: nameA, ToFile: nameB, Context: ctx,
	})
	if err != nil { // only a failed write, and a bytes.Buffer does not fail
		return fmt.Sprintf("--- %s\n+++ %s\n# diff: %v\n", nameA, nameB, err)
	}
	return d
}

// splitLines splits s into lines that each end in a newline, as difflib
// writes them. difflib.SplitLines would add an empty last line to a text that
// ends in a newline.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.SplitAfter(s, "\n")
	if last := len(lines) - 1; lines[last] == "" {
		lines = lines[:last]
	} else {
		lines[last] += "\n"
	}
	return lines
}
