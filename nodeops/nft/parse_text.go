package nft

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ParseText reads the output of `nft list table inet breakglass` (or of
// `nft list ruleset`: other tables are skipped), for nft builds without JSON.
// Empty output means the table is absent (see NotFound).
//
// It reads the layout nft prints, one statement a line, with long element
// lists continued on the following lines.
func ParseText(out []byte) (State, error) {
	var l listing
	var stack []string // open blocks: "table inet breakglass", "set active", ...
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// A list of elements may run over several lines.
		if strings.HasPrefix(line, "elements = {") {
			start := n
			for !strings.Contains(line, "}") && sc.Scan() {
				n++
				line += " " + strings.TrimSpace(sc.Text())
			}
			if !strings.Contains(line, "}") {
				return State{}, fmt.Errorf("nft text: line %d: elements not closed", start)
			}
			if err := l.addTextElements(stack, line); err != nil {
				return State{}, fmt.Errorf("nft text: line %d: %w", start, err)
			}
			continue
		}
		switch {
		case line == "}":
			if len(stack) == 0 {
				return State{}, fmt.Errorf("nft text: line %d: unbalanced }", n)
			}
			stack = stack[:len(stack)-1]
			continue
		case strings.HasSuffix(line, "{"):
			block := strings.Join(strings.Fields(strings.TrimSuffix(line, "{")), " ")
			stack = append(stack, block)
			if len(stack) == 1 && block == "table inet "+Table {
				l.present = true
			}
			if ours(stack) && len(stack) == 2 {
				switch block {
				case "set active":
					l.activeSet = true
				case "chain input":
					l.inputChain = true
				}
			}
			continue
		}
		if !ours(stack) {
			continue
		}
		switch {
		case len(stack) == 1 && strings.HasPrefix(line, "comment "):
			c, err := textComment(line)
			if err != nil {
				return State{}, fmt.Errorf("nft text: line %d: %w", n, err)
			}
			l.tableComment = c
		case len(stack) == 2 && stack[1] == "chain input":
			if isChainProperty(line) {
				continue
			}
			r, err := textRule(line)
			if err != nil {
				return State{}, fmt.Errorf("nft text: line %d: %w", n, err)
			}
			l.rules = append(l.rules, r)
		}
	}
	if err := sc.Err(); err != nil {
		return State{}, fmt.Errorf("nft text: %w", err)
	}
	if len(stack) != 0 {
		return State{}, fmt.Errorf("nft text: %d blocks not closed", len(stack))
	}
	return assemble(l)
}

func ours(stack []string) bool {
	return len(stack) > 0 && stack[0] == "table inet "+Table
}

// isChainProperty tells the lines of a base chain's header from its rules.
func isChainProperty(line string) bool {
	for _, p := range []string{"type ", "policy ", "comment ", "devices ", "flags "} {
		if strings.HasPrefix(line, p) {
			return true
		}
	}
	return false
}

// textComment reads `comment "..."`. Render's comments hold no quote or
// backslash, so there is nothing to unescape.
func textComment(line string) (string, error) {
	rest := strings.TrimPrefix(line, "comment ")
	if len(rest) < 2 || rest[0] != '"' || rest[len(rest)-1] != '"' {
		return "", fmt.Errorf("comment %q is not quoted", rest)
	}
	return rest[1 : len(rest)-1], nil
}

func (l *listing) addTextElements(stack []string, line string) error {
	if !ours(stack) || len(stack) != 2 {
		return nil
	}
	inner := strings.TrimPrefix(line, "elements = {")
	inner, _, _ = strings.Cut(inner, "}")
	var items []string
	for _, it := range strings.Split(inner, ",") {
		if it = strings.TrimSpace(it); it != "" {
			items = append(items, it)
		}
	}
	switch stack[1] {
	case "set active":
		for _, it := range items {
			e, err := textActiveElement(it)
			if err != nil {
				return fmt.Errorf("set active: %w", err)
			}
			l.active = append(l.active, e)
		}
	case "set allow4", "set allow6":
		for _, it := range items {
			p, err := textPrefix(it)
			if err != nil {
				return fmt.Errorf("%s: %w", stack[1], err)
			}
			l.allow = append(l.allow, p)
		}
	}
	return nil
}

// textActiveElement reads "6443 timeout 15m expires 14m59s980ms".
func textActiveElement(it string) (element, error) {
	f := strings.Fields(it)
	port, err := atoiBounded(f[0], 0, 65535)
	if err != nil {
		return element{}, fmt.Errorf("element %q: port: %w (an nft that prints service names needs -n)", it, err)
	}
	e := element{port: port}
	for i := 1; i+1 < len(f); i += 2 {
		switch f[i] {
		case "timeout":
			if e.timeout, err = parseDuration(f[i+1]); err != nil {
				return element{}, fmt.Errorf("element %q: %w", it, err)
			}
			e.hasTimeout = e.timeout > 0
		case "expires":
			if e.expires, err = parseDuration(f[i+1]); err != nil {
				return element{}, fmt.Errorf("element %q: %w", it, err)
			}
		}
	}
	return e, nil
}

// textPrefix reads "10.0.0.0/8" or "192.0.2.1".
func textPrefix(it string) (netip.Prefix, error) {
	if strings.Contains(it, "/") {
		return netip.ParsePrefix(it)
	}
	a, err := netip.ParseAddr(it)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("element %q is not an address or a prefix", it)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// textRule reads a rule line such as
// `tcp dport @active counter packets 3 bytes 180 drop comment "..."`.
func textRule(line string) (rule, error) {
	var r rule
	if i := strings.Index(line, ` comment "`); i >= 0 {
		c, err := textComment(line[i+1:])
		if err != nil {
			return rule{}, err
		}
		r.comment = c
		line = line[:i]
	}
	f := strings.Fields(line)
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case "counter":
			if i+4 < len(f) && f[i+1] == "packets" && f[i+3] == "bytes" {
				p, err1 := strconv.ParseUint(f[i+2], 10, 64)
				b, err2 := strconv.ParseUint(f[i+4], 10, 64)
				if err1 != nil || err2 != nil {
					return rule{}, fmt.Errorf("counter in %q is not two numbers", line)
				}
				r.counter, r.packets, r.bytes = true, p, b
				i += 4
			}
		case "limit":
			if i+2 >= len(f) || f[i+1] != "rate" {
				return rule{}, fmt.Errorf("limit in %q is not a plain rate", line)
			}
			n, per, ok := strings.Cut(f[i+2], "/")
			rate, err := atoiBounded(n, 1, 1<<31-1)
			if !ok || err != nil {
				return rule{}, fmt.Errorf("limit in %q is not a plain rate", line)
			}
			r.limitRate, r.limitPer = rate, per
			i += 2
		case "accept", "drop", "reject":
			r.verdict = f[i]
		}
	}
	return r, nil
}
