// Package iptables renders and reads back breakglass's shed for nodes that
// have no nft binary, only iptables: the fallback of the nft shed (package
// nft), with the same spec and the same state.
//
// The shed lives in a chain of its own, BREAKGLASS-SHED, in the filter
// table of IPv4 and IPv6, jumped to from the top of INPUT; lifting deletes
// that jump and that chain and nothing else. Each family's chain is loaded
// with one `iptables-restore --noflush` (atomic for the table).
//
// iptables has no timeout on rules either, so the shed rule matches only
// until a date: the xt_time match's --datestop, which the kernel checks on
// every packet. When the tool dies and nobody renews it, the date passes on
// the node and the shed ends by itself (the dead-man). The date is
// computed on the node when the rules are loaded (the placeholders
// ExpiresPlaceholder and ExpiresUnixPlaceholder, which ApplyScript fills
// in), so the node's clock, not the operator's, decides.
//
// Nothing here runs a command; it renders scripts and parses
// `iptables-save -c -t filter` output.
package iptables

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/breakglass/breakglass/nodeops/nft"
)

// Chain is breakglass's chain in the filter table of each family.
const Chain = "BREAKGLASS-SHED"

// The placeholders of a rendered script that ApplyScript fills in on the
// node: the dead-man's date as xt_time wants it, and as Unix seconds (kept
// in the comment, to read the time left back).
const (
	ExpiresPlaceholder     = "@EXPIRES@"
	ExpiresUnixPlaceholder = "@EXPIRES_UNIX@"
)

const commentPrefix = "breakglass shed "

// comment is the shed rule's comment: the spec's fields and the dead-man's
// date, for Parse.
func comment(s nft.Spec) string {
	return fmt.Sprintf("%schange=%s mode=%s port=%d rate=%d expires=%s", commentPrefix, s.Change, s.Mode, s.Port, s.Rate, ExpiresUnixPlaceholder)
}

// Render returns the iptables-restore input of each family for a shed (the
// IPv6 one too when no IPv6 source is allowed: the shed covers IPv6
// clients as well). The spec must pass Validate; its TTL is applied by
// ApplyScript, on the node.
func Render(s nft.Spec) (v4, v6 string, err error) {
	// The TTL is ApplyScript's (tests take it down to seconds).
	v := s
	v.TTL = nft.MinTTL
	if err := v.Validate(); err != nil {
		return "", "", err
	}
	var allow4, allow6 []netip.Prefix
	for _, p := range nft.Merge(s.Allow) {
		if p.Addr().Is4() {
			allow4 = append(allow4, p)
		} else {
			allow6 = append(allow6, p)
		}
	}
	return render(s, allow4, "ipv4"), render(s, allow6, "ipv6"), nil
}

func render(s nft.Spec, allow []netip.Prefix, family string) string {
	var b strings.Builder
	dport := fmt.Sprintf("-p tcp -m tcp --dport %d", s.Port)
	fmt.Fprintf(&b, "# breakglass shed (%s): load with iptables-restore --noflush\n*filter\n:%s - [0:0]\n-F %s\n", family, Chain, Chain)
	for _, p := range allow {
		fmt.Fprintf(&b, "-A %s -s %s %s -j RETURN\n", Chain, p, dport)
	}
	if s.Mode == nft.ModeLimit {
		fmt.Fprintf(&b, "-A %s %s -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN\n", Chain, dport)
		fmt.Fprintf(&b, "-A %s %s -m conntrack --ctstate NEW -m limit --limit %d/sec --limit-burst %d -j RETURN\n", Chain, dport, s.Rate, s.Rate)
	}
	verdict := "DROP"
	if s.Mode == nft.ModeReject {
		verdict = "REJECT --reject-with tcp-reset"
	}
	fmt.Fprintf(&b, "-A %s %s -m time --datestop %s -m comment --comment %q -j %s\nCOMMIT\n", Chain, dport, ExpiresPlaceholder, comment(s), verdict)
	return b.String()
}

// ApplyScript returns the shell that loads both families' rules with the
// dead-man's date set ttl from now on the node, then puts the jump at the
// top of INPUT when it is not there yet. The chain is complete before the
// jump to it exists.
func ApplyScript(v4, v6 string, ttl time.Duration) string {
	secs := int64(ttl / time.Second)
	return fmt.Sprintf(`exp_unix=$(( $(date +%%s) + %d ))
exp=$(date -u -d "@$exp_unix" +%%Y-%%m-%%dT%%H:%%M:%%S)
fill() { sed -e "s/%s/$exp_unix/g" -e "s/%s/$exp/g"; }
fill <<'BREAKGLASS_V4' | iptables-restore --noflush || exit $?
%sBREAKGLASS_V4
iptables -C INPUT -j %s 2>/dev/null || iptables -I INPUT 1 -j %s || exit $?
if command -v ip6tables-restore >/dev/null 2>&1; then
fill <<'BREAKGLASS_V6' | ip6tables-restore --noflush || exit $?
%sBREAKGLASS_V6
ip6tables -C INPUT -j %s 2>/dev/null || ip6tables -I INPUT 1 -j %s || exit $?
fi
`, secs, ExpiresUnixPlaceholder, ExpiresPlaceholder, v4, Chain, Chain, v6, Chain, Chain)
}

// LiftScript deletes the jump from INPUT (every copy) and the chain, in
// each family; an absent chain is not an error.
func LiftScript() string {
	return fmt.Sprintf(`for t in iptables ip6tables; do
  command -v $t >/dev/null 2>&1 || continue
  while $t -D INPUT -j %s 2>/dev/null; do :; done
  if $t -S %s >/dev/null 2>&1; then $t -F %s && $t -X %s || exit $?; fi
done
`, Chain, Chain, Chain, Chain)
}

// ChangeScript prints the change ID of the shed on the node ("absent" when
// there is none), for the compare-and-swap before an apply.
func ChangeScript() string {
	return fmt.Sprintf(`c=$(iptables-save -t filter 2>/dev/null | sed -n 's/.*--comment "breakglass shed change=\([^ "]*\).*/\1/p' | head -n 1)
if [ -z "$c" ] && ! iptables -S %s >/dev/null 2>&1; then echo absent; else echo "change=$c"; fi
`, Chain)
}

// Parse reads breakglass's shed back from the output of `iptables-save -c
// -t filter` (v4) and of ip6tables-save (v6, empty when the node has none)
// at the node's time now.
func Parse(v4, v6 string, now time.Time) (nft.State, error) {
	var st nft.State
	var errs []error
	found := false
	for _, out := range []string{v4, v6} {
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == ":"+Chain+" - [0:0]" || strings.HasPrefix(line, ":"+Chain+" ") {
				found = true
				continue
			}
			counters, rest := splitCounters(line)
			if !strings.HasPrefix(rest, "-A "+Chain+" ") {
				continue
			}
			found = true
			f := fields(rest)
			if src := f["-s"]; src != "" && f["-j"] == "RETURN" {
				p, err := netip.ParsePrefix(src)
				if err != nil {
					if a, aerr := netip.ParseAddr(src); aerr == nil {
						p, err = netip.PrefixFrom(a, a.BitLen()), nil
					}
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("allowed source %q: %w", src, err))
					continue
				}
				st.Allow = append(st.Allow, p)
				continue
			}
			if c := f["--comment"]; strings.HasPrefix(c, commentPrefix) {
				if err := readComment(&st, c, now); err != nil {
					errs = append(errs, err)
				}
				pk, by := counters[0], counters[1]
				st.Packets += pk
				st.Bytes += by
			}
		}
	}
	if !found {
		return nft.State{}, errors.Join(errs...)
	}
	st.Present = true
	st.Allow = nft.Merge(st.Allow)
	if st.Change == "" {
		errs = append(errs, fmt.Errorf("chain %s has no shed rule of breakglass's", Chain))
	}
	return st, errors.Join(errs...)
}

func readComment(st *nft.State, c string, now time.Time) error {
	for _, kv := range strings.Fields(strings.TrimPrefix(c, commentPrefix)) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("comment %q: %q is not key=value", c, kv)
		}
		var err error
		switch k {
		case "change":
			st.Change = v
		case "mode":
			st.Mode = nft.Mode(v)
		case "port":
			st.Port, err = strconv.Atoi(v)
		case "rate":
			st.Rate, err = strconv.Atoi(v)
		case "expires":
			var unix int64
			if unix, err = strconv.ParseInt(v, 10, 64); err == nil {
				st.Remaining = max(time.Unix(unix, 0).Sub(now), 0).Round(time.Second)
				st.Active = st.Remaining > 0
			}
		}
		if err != nil {
			return fmt.Errorf("comment %q: %s: %w", c, k, err)
		}
	}
	return nil
}

// splitCounters cuts iptables-save -c's "[packets:bytes]" off a line.
func splitCounters(line string) ([2]uint64, string) {
	var c [2]uint64
	if !strings.HasPrefix(line, "[") {
		return c, line
	}
	end := strings.IndexByte(line, ']')
	if end < 0 {
		return c, line
	}
	p, b, _ := strings.Cut(line[1:end], ":")
	c[0], _ = strconv.ParseUint(p, 10, 64)
	c[1], _ = strconv.ParseUint(b, 10, 64)
	return c, strings.TrimSpace(line[end+1:])
}

// fields reads the options of one iptables-save rule that Parse needs:
// each option's value, with --comment's quotes removed.
func fields(rule string) map[string]string {
	out := map[string]string{}
	toks := tokens(rule)
	for i := 0; i+1 < len(toks); i++ {
		if strings.HasPrefix(toks[i], "-") && !strings.HasPrefix(toks[i+1], "-") {
			out[toks[i]] = toks[i+1]
		}
	}
	return out
}

// tokens splits a rule on spaces, keeping a double-quoted string (with \"
// inside) as one token without its quotes.
func tokens(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case inQuote && ch == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case ch == '"':
			inQuote, have = !inQuote, true
		case ch == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}
