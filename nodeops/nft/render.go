package nft

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Render returns the whole `nft -f -` script of a shed: it creates the table
// if it is missing, deletes it, and adds it back complete, all in one
// transaction, so loading it twice gives the same table (with counters reset
// and the dead-man renewed) and a node never sees a half-built table.
//
// Render expects a spec that passed Validate, except that it takes a TTL down
// to one second so that tests can watch the dead-man lapse. For any other
// invalid spec it returns a script that says why in a comment and that nft
// refuses as a whole, before it changes anything: a wrong shed never loads,
// and never a different one. The change ID is never written unchecked.
func Render(s Spec) string {
	if err := s.renderable(); err != nil {
		return refusal(err)
	}
	var b strings.Builder
	c := s.comment()
	fmt.Fprintf(&b, "# %s: one transaction, load with %q\n", c, LoadCommand)
	b.WriteString(renderLift())
	fmt.Fprintf(&b, "table inet %s {\n", Table)
	fmt.Fprintf(&b, "\tcomment %q\n", c)
	fmt.Fprintf(&b, "\tset active {\n\t\ttype inet_service\n\t\tflags timeout\n\t\telements = { %d timeout %s }\n\t}\n",
		s.Port, formatDuration(s.TTL))
	v4, v6 := splitFamilies(Merge(s.Allow))
	writeAllowSet(&b, "allow4", "ipv4_addr", v4)
	writeAllowSet(&b, "allow6", "ipv6_addr", v6)
	b.WriteString("\tchain input {\n")
	// After kube-proxy's DNAT (priority -100 in prerouting), before filter
	// chains at priority 0 (firewalld, distribution defaults) decide.
	b.WriteString("\t\ttype filter hook input priority -10; policy accept;\n")
	b.WriteString("\t\ttcp dport @active ip saddr @allow4 accept\n")
	b.WriteString("\t\ttcp dport @active ip6 saddr @allow6 accept\n")
	switch s.Mode {
	case ModeDrop:
		fmt.Fprintf(&b, "\t\ttcp dport @active counter drop comment %q\n", c)
	case ModeReject:
		fmt.Fprintf(&b, "\t\ttcp dport @active counter reject with tcp reset comment %q\n", c)
	case ModeLimit:
		b.WriteString("\t\ttcp dport @active ct state established,related accept\n")
		fmt.Fprintf(&b, "\t\ttcp dport @active ct state new limit rate %d/second accept\n", s.Rate)
		fmt.Fprintf(&b, "\t\ttcp dport @active counter drop comment %q\n", c)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// RenderExtend returns the script that renews the dead-man: it empties the
// set and adds the port back with a new timeout, in one transaction, so it
// works whether the element is still there or already lapsed. It fails (and
// changes nothing) when the table is gone: extending never brings back a
// lifted shed. Check ttl with ValidateTTL and port with ValidatePort first; a
// ttl under a second or over MaxTTL, or a port out of range, gives a script
// nft refuses.
func RenderExtend(ttl time.Duration, port int) string {
	if err := renderableTTL(ttl); err != nil {
		return refusal(err)
	}
	if err := ValidatePort(port); err != nil {
		return refusal(err)
	}
	return fmt.Sprintf("flush set inet %s active\nadd element inet %s active { %d timeout %s }\n",
		Table, Table, port, formatDuration(ttl))
}

// RenderLift returns the script that deletes breakglass's table, and only
// it. Declaring the table first makes the delete succeed when it is absent.
// (nft 1.0.8 and later have `destroy table` for this, but nodes run older
// ones.)
func RenderLift() string { return renderLift() }

func renderLift() string {
	return fmt.Sprintf("table inet %s {}\ndelete table inet %s\n", Table, Table)
}

// renderable is Validate with the TTL floor lowered from MinTTL to a second.
func (s Spec) renderable() error {
	if err := renderableTTL(s.TTL); err != nil {
		return err
	}
	v := s
	v.TTL = MinTTL
	return v.Validate()
}

// renderableTTL refuses what would break the dead-man: nft takes a timeout of
// 0 as "no timeout", and timeouts have millisecond resolution.
func renderableTTL(ttl time.Duration) error {
	if ttl < time.Second || ttl > MaxTTL {
		return fmt.Errorf("ttl %v is outside 1s..%v", ttl, MaxTTL)
	}
	return nil
}

// refusal is a script that nft rejects while parsing, so the transaction
// never starts; the reason is kept in comment lines for whoever reads it.
func refusal(err error) string {
	var b strings.Builder
	b.WriteString("# breakglass: refusing to render an invalid shed:\n")
	for _, l := range strings.Split(err.Error(), "\n") {
		b.WriteString("#   " + l + "\n")
	}
	b.WriteString("# nft fails on the next line, before it changes anything.\n")
	b.WriteString("breakglass-refused\n")
	return b.String()
}

func splitFamilies(ps []netip.Prefix) (v4, v6 []netip.Prefix) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

// writeAllowSet leaves out the elements line of an empty set: nft refuses
// `elements = { }`.
func writeAllowSet(b *strings.Builder, name, typ string, ps []netip.Prefix) {
	fmt.Fprintf(b, "\tset %s {\n\t\ttype %s\n\t\tflags interval\n", name, typ)
	if len(ps) > 0 {
		els := make([]string, len(ps))
		for i, p := range ps {
			els[i] = formatPrefix(p)
		}
		fmt.Fprintf(b, "\t\telements = { %s }\n", strings.Join(els, ", "))
	}
	b.WriteString("\t}\n")
}

// formatPrefix writes a single address without its /32 or /128, as nft
// lists it.
func formatPrefix(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// formatDuration writes d in nft's time syntax ("1d2h3m4s5ms"), to the
// millisecond, as nft lists it.
func formatDuration(d time.Duration) string {
	ms := d.Milliseconds()
	if ms <= 0 {
		return "0s"
	}
	var b strings.Builder
	for _, u := range durationUnits {
		if n := ms / u.ms; n > 0 {
			b.WriteString(strconv.FormatInt(n, 10) + u.name)
			ms %= u.ms
		}
	}
	return b.String()
}

var durationUnits = []struct {
	name string
	ms   int64
}{{"d", 86_400_000}, {"h", 3_600_000}, {"m", 60_000}, {"s", 1000}, {"ms", 1}}

// parseDuration reads nft's time syntax, as in "expires 14m59s980ms".
func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	var total int64
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i > 12 {
			return 0, fmt.Errorf("duration %q: want a number at %q", s, rest)
		}
		n, _ := strconv.ParseInt(rest[:i], 10, 64)
		rest = rest[i:]
		j := 0
		for j < len(rest) && rest[j] >= 'a' && rest[j] <= 'z' {
			j++
		}
		unit := rest[:j]
		rest = rest[j:]
		found := false
		for _, u := range durationUnits {
			if u.name == unit {
				total += n * u.ms
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("duration %q: unknown unit %q", s, unit)
		}
		if total > int64(100*365*24*time.Hour/time.Millisecond) {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
	}
	return time.Duration(total) * time.Millisecond, nil
}
