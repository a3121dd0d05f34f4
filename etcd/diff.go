package etcd

import (
	"crypto/sha256"
	"fmt"
	"strings"

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
// lines of context. Objects are at most a few thousand lines, so a plain
// longest-common-subsequence table is fast enough.
func UnifiedDiff(nameA, nameB, a, b string, ctx int) string {
	if a == b {
		return ""
	}
	al, bl := splitLines(a), splitLines(b)
	n, m := len(al), len(bl)
	// lcs[i][j] = length of the LCS of al[i:] and bl[j:].
	lcs := make([][]int32, n+1)
	for i := range lcs {
		lcs[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if al[i] == bl[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type line struct {
		op   byte
		text string
		ai   int // line numbers (0-based) in a and b before this line
		bi   int
	}
	var ops []line
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && al[i] == bl[j]:
			ops = append(ops, line{' ', al[i], i, j})
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			ops = append(ops, line{'+', bl[j], i, j})
			j++
		default:
			ops = append(ops, line{'-', al[i], i, j})
			i++
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", nameA, nameB)
	for k := 0; k < len(ops); {
		if ops[k].op == ' ' {
			k++
			continue
		}
		// A hunk: from ctx lines before this change to ctx lines after the
		// last change that is within 2*ctx of the previous one.
		start := max(k-ctx, 0)
		end := k
		for end < len(ops) {
			if ops[end].op != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].op == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*ctx {
				end = min(end+ctx, len(ops))
				break
			}
			end = run
		}
		var na, nb int
		for _, l := range ops[start:end] {
			if l.op != '+' {
				na++
			}
			if l.op != '-' {
				nb++
			}
		}
		fmt.Fprintf(&out, "@@ -%d,%d +%d,%d @@\n", ops[start].ai+1, na, ops[start].bi+1, nb)
		for _, l := range ops[start:end] {
			out.WriteByte(l.op)
			out.WriteString(l.text)
			out.WriteByte('\n')
		}
		k = end
	}
	return out.String()
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}
