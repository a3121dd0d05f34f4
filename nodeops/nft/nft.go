// Package nft renders and reads back breakglass's own nftables table, the one
// a shed loads on a control-plane node to drop, reject or rate-limit traffic
// to the kube-apiserver port.
//
// Nothing here runs a command: the caller sends Render's script to
// `nft -f -` over SSH (one atomic transaction) and hands the output of
// `nft -j list table inet breakglass` (or, where nft lacks JSON, of
// `nft list table inet breakglass`) to ParseJSON or ParseText.
//
// nftables has no timeout on rules or tables, so every rule of the table
// matches only while the port is an element of the set "active", and that
// element has a timeout: when the tool dies and nobody renews it, the element
// lapses on the node and the shed ends by itself (a dead-man). Renewing is
// RenderExtend; ending it is RenderLift.
package nft

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Table is the name of breakglass's table; its family is always inet, so one
// table covers IPv4 and IPv6.
const Table = "breakglass"

// Commands the caller runs on the node, with the script on stdin for Load.
const (
	LoadCommand     = "nft -f -"
	ListJSONCommand = "nft -j list table inet " + Table
	ListTextCommand = "nft list table inet " + Table
)

// Mode says what happens to connections to the port from sources that are not
// allowed.
type Mode string

const (
	// ModeDrop drops their packets: clients wait for their connect timeout.
	ModeDrop Mode = "drop"
	// ModeReject answers with a TCP reset: clients fail at once, which also
	// cuts established connections.
	ModeReject Mode = "reject"
	// ModeLimit lets Rate new connections per second through (and keeps
	// established ones) and drops the rest.
	ModeLimit Mode = "limit"
)

// Bounds that Validate enforces.
const (
	MinTTL = time.Minute
	MaxTTL = 24 * time.Hour
	// MaxRate bounds Spec.Rate; it also keeps the comment short.
	MaxRate = 1_000_000
	// MaxChangeLen bounds Spec.Change: nft keeps at most 128 bytes of a
	// comment, and the rest of ours takes up to 59.
	MaxChangeLen = 64
)

// Spec is what a shed puts on one node.
type Spec struct {
	// Port is the apiserver's port (6443 on kubeadm clusters).
	Port int
	Mode Mode
	// Rate is, in limit mode, how many new connections per second are let
	// through from sources that are not allowed; 0 in the other modes.
	Rate int
	// Allow are the sources always let through, IPv4 and IPv6 (single
	// addresses as /32 or /128). Callers usually include loopback and the
	// control-plane nodes' own addresses: connections between local
	// components and the apiserver also pass the input hook.
	Allow []netip.Prefix
	// TTL is the dead-man element's timeout: the shed ends by itself this
	// long after it was loaded or last extended.
	TTL time.Duration
	// Change is the change ID, kept in the table's comment so that a shed
	// found on a node can be traced to its journal entry.
	Change string
}

// Validate reports every problem of the spec, joined, or nil.
func (s Spec) Validate() error {
	var errs []error
	if err := ValidatePort(s.Port); err != nil {
		errs = append(errs, err)
	}
	switch s.Mode {
	case ModeDrop, ModeReject:
		if s.Rate != 0 {
			errs = append(errs, fmt.Errorf("rate %d given with mode %s: a rate applies to mode limit only", s.Rate, s.Mode))
		}
	case ModeLimit:
		if s.Rate < 1 || s.Rate > MaxRate {
			errs = append(errs, fmt.Errorf("mode limit needs a rate from 1 to %d new connections per second, got %d", MaxRate, s.Rate))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown mode %q: want %s, %s or %s", s.Mode, ModeDrop, ModeReject, ModeLimit))
	}
	if err := ValidateTTL(s.TTL); err != nil {
		errs = append(errs, err)
	}
	if err := validateChange(s.Change); err != nil {
		errs = append(errs, err)
	}
	if len(s.Allow) == 0 {
		errs = append(errs, errors.New("no allowed source: a shed must let at least one source through (usually loopback and the operator's own address)"))
	}
	for _, p := range s.Allow {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("allowed source %v is not a valid prefix", p))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("nft shed spec: %w", errors.Join(errs...))
}

// ValidateTTL checks a dead-man timeout, for Spec.Validate and before
// RenderExtend.
func ValidateTTL(ttl time.Duration) error {
	if ttl < MinTTL || ttl > MaxTTL {
		return fmt.Errorf("ttl %v is outside %v..%v: the dead-man must outlive the SSH round trip that renews it, "+
			"and a forgotten shed must end within a day\nhint: use a ttl from 1m to 24h and extend a shed that must last longer", ttl, MinTTL, MaxTTL)
	}
	return nil
}

// ValidatePort checks a TCP port, for Spec.Validate and before RenderExtend.
func ValidatePort(port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d is outside 1..65535", port)
	}
	return nil
}

// validateChange keeps the change ID to characters that need no quoting in an
// nft string and cannot break the comment's key=value fields apart.
func validateChange(id string) error {
	if id == "" {
		return errors.New("no change ID: a shed must name the change it belongs to")
	}
	if len(id) > MaxChangeLen {
		return fmt.Errorf("change ID is %d bytes long, more than %d", len(id), MaxChangeLen)
	}
	for _, r := range id {
		if !isChangeRune(r) {
			return fmt.Errorf("change ID %q holds %q: only letters, digits and . _ : - are allowed", id, r)
		}
	}
	return nil
}

func isChangeRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		r == '.' || r == '_' || r == ':' || r == '-'
}

// Merge returns the prefixes as Render writes them into the allow sets and
// the parsers read them back: masked, IPv4-mapped IPv6 prefixes turned into
// IPv4 ones (such a connection reaches the input hook as IPv4), IPv4 before
// IPv6, sorted, with duplicates and prefixes contained in another dropped
// (nft refuses overlapping elements in an interval set). Invalid prefixes are
// left out.
func Merge(prefixes []netip.Prefix) []netip.Prefix {
	ps := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		ps = append(ps, p.Masked())
	}
	// By address, then the wider prefix first: a prefix that contains others
	// comes before them, and prefixes are either nested or disjoint, so it
	// is enough to compare each one with the last one kept.
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	out := ps[:0]
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Overlaps(p) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// comment is the table's comment. It is also set on the shed rule, because
// nft 1.0.6 (Debian 12) leaves table comments out of its JSON output but
// keeps rule comments.
func (s Spec) comment() string {
	return fmt.Sprintf("breakglass shed change=%s mode=%s port=%d rate=%d", s.Change, s.Mode, s.Port, s.Rate)
}

// meta is what the comment says.
type meta struct {
	change string
	mode   Mode
	port   int
	rate   int
}

const commentPrefix = "breakglass shed "

func isOurComment(c string) bool { return strings.HasPrefix(c, commentPrefix) }

// parseComment reads a comment written by Spec.comment; unknown keys are
// ignored so that later versions can add some.
func parseComment(c string) (meta, error) {
	if !isOurComment(c) {
		return meta{}, fmt.Errorf("comment %q is not breakglass's", c)
	}
	var m meta
	seen := map[string]bool{}
	for _, f := range strings.Fields(strings.TrimPrefix(c, commentPrefix)) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return meta{}, fmt.Errorf("comment %q: field %q is not key=value", c, f)
		}
		var err error
		switch k {
		case "change":
			m.change = v
		case "mode":
			m.mode = Mode(v)
		case "port":
			m.port, err = atoiBounded(v, 1, 65535)
		case "rate":
			m.rate, err = atoiBounded(v, 0, MaxRate)
		default:
			continue
		}
		if err != nil {
			return meta{}, fmt.Errorf("comment %q: %s: %w", c, k, err)
		}
		seen[k] = true
	}
	for _, k := range []string{"change", "mode", "port", "rate"} {
		if !seen[k] {
			return meta{}, fmt.Errorf("comment %q has no %s", c, k)
		}
	}
	return m, nil
}

func atoiBounded(s string, lo, hi int) (int, error) {
	if s == "" || len(s) > 10 {
		return 0, fmt.Errorf("%q is not a number from %d to %d", s, lo, hi)
	}
	n := 0
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, fmt.Errorf("%q is not a number from %d to %d", s, lo, hi)
		}
		n = n*10 + int(r-'0')
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%d is not from %d to %d", n, lo, hi)
	}
	return n, nil
}
