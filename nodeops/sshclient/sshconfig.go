package sshclient

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// sshConfig is an OpenSSH client config (ssh_config(5)), read the way ssh
// reads it for the keywords breakglass uses: Host and Match blocks,
// Include, and the first value found for a keyword wins.
//
// A Match block is evaluated when its criteria can be: all, host and
// originalhost (against the node's name and address), localuser. Others
// (exec, user, canonical, final, tagged, localnetwork, ...) depend on
// things breakglass does not have or must not do (run a command from the
// config for every node); such a block is ignored with a warning naming
// its file and line, rather than stopping the run or guessing.
type sshConfig struct {
	blocks   []*configBlock
	warnings []string
	seq      int
}

// configBlock is the implicit block at the top of a file, a Host block or
// a Match block.
type configBlock struct {
	file string
	line int
	// hosts are the patterns of a Host line (nil: every host).
	hosts []configPattern
	// conds are the criteria of a Match line, all of which must hold.
	conds []matchCond
	// never marks a Match block that cannot be evaluated: it is ignored.
	never   bool
	entries []*configEntry
}

type configPattern struct {
	negate bool
	glob   string
}

// matchCond is one Match criterion: host or originalhost with its
// pattern list, or a criterion decided when the file is read.
type matchCond struct {
	negate bool
	hosts  string // comma-separated pattern list; "" for static
	static bool
}

// configEntry is one "Keyword value" line.
type configEntry struct {
	key  string // lower case
	args []string
	// raw is the value as written, for ProxyCommand, which ssh hands to
	// the shell unsplit.
	raw  string
	file string
	line int
	seq  int // position in the whole config, includes expanded
	// include holds the blocks of the files an Include line names.
	include []*configBlock
}

// maxIncludeDepth is OpenSSH's READCONF_MAX_DEPTH.
const maxIncludeDepth = 16

func loadSSHConfig(path string) (*sshConfig, error) {
	c := &sshConfig{}
	if path == "" {
		return c, nil
	}
	blocks, err := c.readFile(path, 0)
	if err != nil {
		return nil, fmt.Errorf("ssh config %w\nhint: fix the file, or set ssh.config: none in the inventory", err)
	}
	c.blocks = blocks
	return c, nil
}

func (c *sshConfig) readFile(path string, depth int) ([]*configBlock, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cur := &configBlock{file: path}
	blocks := []*configBlock{cur}
	for n, line := range strings.Split(string(b), "\n") {
		n++
		key, args, raw, err := splitConfigLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, n, err)
		}
		switch key {
		case "":
			continue
		case "host":
			if len(args) == 0 {
				return nil, fmt.Errorf("%s:%d: Host without a pattern", path, n)
			}
			cur = &configBlock{file: path, line: n}
			for _, a := range args {
				p := configPattern{glob: a}
				if p.glob, p.negate = strings.CutPrefix(a, "!"); p.glob == "" {
					return nil, fmt.Errorf("%s:%d: Host pattern %q: negation of nothing", path, n, a)
				}
				cur.hosts = append(cur.hosts, p)
			}
			blocks = append(blocks, cur)
			continue
		case "match":
			cur = &configBlock{file: path, line: n}
			if err := c.parseMatch(cur, args); err != nil {
				return nil, fmt.Errorf("%s:%d: %v", path, n, err)
			}
			blocks = append(blocks, cur)
			continue
		}
		c.seq++
		e := &configEntry{key: key, args: args, raw: raw, file: path, line: n, seq: c.seq}
		if key == "include" {
			if depth+1 > maxIncludeDepth {
				return nil, fmt.Errorf("%s:%d: Include nested deeper than %d", path, n, maxIncludeDepth)
			}
			if e.include, err = c.include(args, depth+1); err != nil {
				return nil, err
			}
		}
		cur.entries = append(cur.entries, e)
	}
	return blocks, nil
}

// include reads the files an Include line names, in the order ssh reads
// them: each argument in turn, a glob's matches sorted. Relative paths
// are in ~/.ssh; names that match no file are skipped, as by ssh.
func (c *sshConfig) include(args []string, depth int) ([]*configBlock, error) {
	var out []*configBlock
	for _, a := range args {
		p := expandHome(a)
		if !filepath.IsAbs(p) {
			home, err := os.UserHomeDir()
			if err != nil {
				//lint:ignore ST1005 the message starts with the ssh_config keyword, as ssh spells it
				return nil, fmt.Errorf("Include %s: %w", a, err)
			}
			p = filepath.Join(home, ".ssh", p)
		}
		matches, err := filepath.Glob(p)
		if err != nil {
			//lint:ignore ST1005 the message starts with the ssh_config keyword, as ssh spells it
			return nil, fmt.Errorf("Include %s: %w", a, err)
		}
		for _, m := range matches {
			if st, err := os.Stat(m); err == nil && st.IsDir() {
				continue
			}
			blocks, err := c.readFile(m, depth)
			if err != nil {
				return nil, err
			}
			out = append(out, blocks...)
		}
	}
	if out == nil {
		out = []*configBlock{}
	}
	return out, nil
}

// parseMatch reads the criteria of a Match line into b.
func (c *sshConfig) parseMatch(b *configBlock, args []string) error {
	if len(args) == 0 {
		//lint:ignore ST1005 the message starts with the ssh_config keyword, as ssh spells it
		return errors.New("Match without a criterion")
	}
	var cannot []string
	for i := 0; i < len(args); i++ {
		crit, negate := strings.CutPrefix(args[i], "!")
		crit = strings.ToLower(crit)
		switch crit {
		case "all":
			b.conds = append(b.conds, matchCond{negate: negate, static: true})
			continue
		case "canonical", "final":
			// These hold only in the second pass ssh makes (hostname
			// canonicalisation); breakglass makes one.
			cannot = append(cannot, args[i])
			continue
		}
		if i+1 >= len(args) {
			//lint:ignore ST1005 the message starts with the ssh_config keyword, as ssh spells it
			return fmt.Errorf("Match %s: missing argument", args[i])
		}
		arg := args[i+1]
		i++
		switch crit {
		case "host", "originalhost":
			b.conds = append(b.conds, matchCond{negate: negate, hosts: arg})
		case "localuser":
			u, err := user.Current()
			b.conds = append(b.conds, matchCond{negate: negate, static: err == nil && matchPatternList(u.Username, arg)})
		default:
			// exec runs a command per lookup; user depends on the value
			// being looked up; the others on the network or on how ssh
			// was invoked.
			cannot = append(cannot, args[i-1]+" "+strconv.Quote(arg))
		}
	}
	if len(cannot) > 0 {
		b.never = true
		c.warnings = append(c.warnings, fmt.Sprintf("ssh config %s:%d: Match block ignored: breakglass cannot evaluate %s; put what nodes need in a Host block or in the inventory",
			b.file, b.line, strings.Join(cannot, ", ")))
	}
	return nil
}

// matches reports whether the block applies to alias.
func (b *configBlock) matches(alias string) bool {
	if b.never {
		return false
	}
	if b.conds != nil {
		for _, c := range b.conds {
			ok := c.static
			if c.hosts != "" {
				ok = matchPatternList(strings.ToLower(alias), strings.ToLower(c.hosts))
			}
			if ok == c.negate {
				return false
			}
		}
		return true
	}
	if b.hosts == nil {
		return true
	}
	found := false
	for _, p := range b.hosts {
		if globMatch(p.glob, alias) {
			if p.negate {
				return false
			}
			found = true
		}
	}
	return found
}

// matchPatternList is OpenSSH's match_pattern_list: comma-separated
// patterns, a matching negated one vetoes.
func matchPatternList(s, list string) bool {
	found := false
	for _, p := range strings.Split(list, ",") {
		p, neg := strings.CutPrefix(p, "!")
		if p == "" || !globMatch(p, s) {
			continue
		}
		if neg {
			return false
		}
		found = true
	}
	return found
}

// lookup returns the first entry for key that applies to alias.
func lookup(blocks []*configBlock, alias, key string) *configEntry {
	for _, b := range blocks {
		if !b.matches(alias) {
			continue
		}
		for _, e := range b.entries {
			if e.key == "include" {
				if v := lookup(e.include, alias, key); v != nil {
					return v
				}
			} else if e.key == key {
				return e
			}
		}
	}
	return nil
}

// lookupAll returns every entry for key that applies to alias, in order.
func lookupAll(blocks []*configBlock, alias, key string, out []*configEntry) []*configEntry {
	for _, b := range blocks {
		if !b.matches(alias) {
			continue
		}
		for _, e := range b.entries {
			if e.key == "include" {
				out = lookupAll(e.include, alias, key, out)
			} else if e.key == key {
				out = append(out, e)
			}
		}
	}
	return out
}

// everyValue returns the arguments of every entry for key in the whole
// config, whatever block it is in.
func everyValue(blocks []*configBlock, key string, out [][]string) [][]string {
	for _, b := range blocks {
		for _, e := range b.entries {
			if e.key == "include" {
				out = everyValue(e.include, key, out)
			} else if e.key == key {
				out = append(out, e.args)
			}
		}
	}
	return out
}

// catchAll is a host name no Host pattern names: what it gets is what the
// catch-all blocks (Host *) give every host.
const catchAll = "\x00breakglass-no-such-host"

// entry returns the entry for key of the first of aliases that a block
// other than a catch-all sets it for, else the catch-all's: so that with
// "Host 10.2.0.*" and "Host *" blocks, a node named db-7 at 10.2.0.7 gets
// the address block's value, not the catch-all's that its name matched.
// (A name block that sets the same value as the catch-all counts as not
// setting it.)
func (c *sshConfig) entry(key string, aliases ...string) *configEntry {
	key = strings.ToLower(key)
	def := lookup(c.blocks, catchAll, key)
	for _, a := range aliases {
		if a == "" {
			continue
		}
		if e := lookup(c.blocks, a, key); e != nil && (def == nil || e.raw != def.raw) {
			return e
		}
	}
	return def
}

// get is entry's first argument ("" when unset).
func (c *sshConfig) get(key string, aliases ...string) string {
	if e := c.entry(key, aliases...); e != nil && len(e.args) > 0 {
		return e.args[0]
	}
	return ""
}

// getAll is get for keys that take several values (IdentityFile).
func (c *sshConfig) getAll(key string, aliases ...string) []string {
	key = strings.ToLower(key)
	firsts := func(es []*configEntry) []string {
		var out []string
		for _, e := range es {
			if len(e.args) > 0 {
				out = append(out, e.args[0])
			}
		}
		return out
	}
	def := firsts(lookupAll(c.blocks, catchAll, key, nil))
	for _, a := range aliases {
		if a == "" {
			continue
		}
		if v := firsts(lookupAll(c.blocks, a, key, nil)); len(v) > 0 && !slices.Equal(v, def) {
			return v
		}
	}
	return def
}

// splitConfigLine splits a line as ssh does: the keyword (lower case), an
// optional "=", then arguments separated by blanks, in double or single
// quotes where they contain blanks; a word that starts with '#' ends the
// line. raw is what follows the keyword, as written.
func splitConfigLine(line string) (key string, args []string, raw string, err error) {
	s := strings.TrimRight(line, " \t\r\f\v")
	s = strings.TrimLeft(s, " \t\f\v")
	if s == "" || s[0] == '#' {
		return "", nil, "", nil
	}
	i := strings.IndexAny(s, " \t=")
	if i < 0 {
		return strings.ToLower(s), nil, "", nil
	}
	key = strings.ToLower(s[:i])
	raw = strings.TrimLeft(s[i:], " \t")
	if strings.HasPrefix(raw, "=") {
		raw = strings.TrimLeft(raw[1:], " \t")
	}
	args, err = splitArgs(raw)
	return key, args, raw, err
}

func splitArgs(s string) ([]string, error) {
	var args []string
	for i := 0; i < len(s); {
		if s[i] == ' ' || s[i] == '\t' {
			i++
			continue
		}
		if s[i] == '#' {
			break
		}
		var w strings.Builder
		var quote byte
		for ; i < len(s); i++ {
			ch := s[i]
			switch {
			case quote == 0 && (ch == ' ' || ch == '\t'):
				goto done
			case quote == 0 && (ch == '"' || ch == '\''):
				quote = ch
			case quote != 0 && ch == quote:
				quote = 0
			case ch == '\\' && i+1 < len(s) && strings.IndexByte(`\"' `, s[i+1]) >= 0 && (quote == 0 || s[i+1] == quote || s[i+1] == '\\'):
				i++
				w.WriteByte(s[i])
			default:
				w.WriteByte(ch)
			}
		}
	done:
		if quote != 0 {
			return nil, errors.New("unterminated quote")
		}
		args = append(args, w.String())
	}
	return args, nil
}
