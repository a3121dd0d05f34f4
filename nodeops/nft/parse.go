package nft

import (
	"bytes"
	"fmt"
	"net/netip"
	"time"
)

// State is breakglass's table as read back from a node.
type State struct {
	// Present is false when the node has no table inet breakglass; every
	// other field is then zero.
	Present bool
	// Change, and Port, come from the comment; Mode and Rate from the rules
	// (the parsers check that the comment agrees).
	Change string
	Mode   Mode
	Rate   int
	Port   int
	// Allow is the allowed sources, in Merge's order.
	Allow []netip.Prefix
	// Active tells whether the dead-man element is in the set, that is
	// whether the rules match anything. Remaining is its "expires": 0 once
	// it lapsed, and whole seconds only in JSON from nft 1.0.6, which can
	// also show 0 during the element's last second while Active is true.
	Remaining time.Duration
	Active    bool
	// Packets and Bytes are the counters of the shed rule: the drop or the
	// reject, and in limit mode the drop of what exceeds the rate.
	Packets, Bytes uint64
}

// NotFound reports whether nft's stderr says the listed table does not exist
// (the list commands then exit 1 with empty stdout): the node has no shed.
func NotFound(stderr []byte) bool {
	return bytes.Contains(stderr, []byte("No such file or directory"))
}

// JSONUnsupported reports whether nft's stderr says the binary was built
// without JSON (`nft -j` then exits 1): read with ListTextCommand and
// ParseText instead.
func JSONUnsupported(stderr []byte) bool {
	return bytes.Contains(stderr, []byte("JSON support not compiled"))
}

// listing is what both parsers extract from nft's output before assemble
// interprets it.
type listing struct {
	present      bool
	tableComment string
	activeSet    bool
	active       []element
	allow        []netip.Prefix
	inputChain   bool
	rules        []rule
}

// element is one element of the set active.
type element struct {
	port             int
	hasTimeout       bool
	timeout, expires time.Duration
}

// rule is one rule of chain input, reduced to what tells the shed apart.
type rule struct {
	verdict   string // "accept", "drop", "reject" or ""
	limitRate int    // 0 without a limit statement
	limitPer  string
	counter   bool
	packets   uint64
	bytes     uint64
	comment   string
}

// assemble checks that the table is the one Render writes and turns it into
// a State.
func assemble(l listing) (State, error) {
	if !l.present {
		return State{}, nil
	}
	c := l.tableComment
	if !isOurComment(c) {
		c = ""
		for _, r := range l.rules {
			if isOurComment(r.comment) {
				c = r.comment
				break
			}
		}
	}
	if c == "" {
		return State{}, notOurs("it carries no breakglass comment")
	}
	m, err := parseComment(c)
	if err != nil {
		return State{}, notOurs(err.Error())
	}
	if !l.activeSet {
		return State{}, notOurs("it has no set active")
	}
	if !l.inputChain {
		return State{}, notOurs("it has no chain input")
	}

	var shed *rule
	limit := 0
	for i, r := range l.rules {
		switch {
		case r.verdict == "drop" || r.verdict == "reject":
			if shed != nil {
				return State{}, notOurs("chain input has more than one drop or reject rule")
			}
			shed = &l.rules[i]
		case r.limitRate > 0:
			if r.limitPer != "second" {
				return State{}, notOurs(fmt.Sprintf("its limit is %d/%s, not per second", r.limitRate, r.limitPer))
			}
			limit = r.limitRate
		}
	}
	if shed == nil {
		return State{}, notOurs("chain input has no drop or reject rule")
	}
	if !shed.counter {
		return State{}, notOurs("its shed rule has no counter")
	}
	st := State{
		Present: true,
		Change:  m.change,
		Mode:    ModeDrop,
		Rate:    limit,
		Port:    m.port,
		Allow:   Merge(l.allow),
		Packets: shed.packets,
		Bytes:   shed.bytes,
	}
	switch {
	case shed.verdict == "reject":
		st.Mode = ModeReject
	case limit > 0:
		st.Mode = ModeLimit
	}
	if st.Mode != m.mode || st.Rate != m.rate {
		return State{}, notOurs(fmt.Sprintf("its rules shed in mode %s rate %d, its comment says mode %s rate %d",
			st.Mode, st.Rate, m.mode, m.rate))
	}

	switch len(l.active) {
	case 0:
	case 1:
		e := l.active[0]
		if e.port != m.port {
			return State{}, notOurs(fmt.Sprintf("set active holds port %d, its comment says %d", e.port, m.port))
		}
		if !e.hasTimeout {
			return State{}, fmt.Errorf("table inet %s: port %d in set active has no timeout: the dead-man is disarmed and the shed never ends by itself\n"+
				"hint: extend the shed to re-arm it, or lift it", Table, e.port)
		}
		st.Active = true
		st.Remaining = max(e.expires, 0)
	default:
		return State{}, notOurs(fmt.Sprintf("set active holds %d elements", len(l.active)))
	}
	return st, nil
}

func notOurs(why string) error {
	return fmt.Errorf("table inet %s is not laid out as breakglass writes it: %s\n"+
		"hint: look at it with `%s`; lifting the shed deletes it", Table, why, ListTextCommand)
}
