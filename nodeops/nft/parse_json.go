package nft

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"time"
)

// ParseJSON reads the output of `nft -j list table inet breakglass` (or of
// `nft -j list ruleset`: other tables are skipped). Empty output means the
// table is absent (see NotFound). Time values in nft's JSON are seconds; nft
// 1.0.6 writes whole seconds, later versions may write fractions.
func ParseJSON(out []byte) (State, error) {
	if len(bytes.TrimSpace(out)) == 0 {
		return State{}, nil
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return State{}, fmt.Errorf("nft json: %w", err)
	}
	var l listing
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			if err := l.addJSON(kind, raw); err != nil {
				return State{}, fmt.Errorf("nft json: %s: %w", kind, err)
			}
		}
	}
	return assemble(l)
}

type jsonObject struct {
	Family  string                       `json:"family"`
	Name    string                       `json:"name"`
	Table   string                       `json:"table"`
	Chain   string                       `json:"chain"`
	Comment string                       `json:"comment"`
	Elem    []json.RawMessage            `json:"elem"`
	Expr    []map[string]json.RawMessage `json:"expr"`
}

func (l *listing) addJSON(kind string, raw json.RawMessage) error {
	switch kind {
	case "table", "set", "chain", "rule":
	default:
		return nil
	}
	var o jsonObject
	if err := json.Unmarshal(raw, &o); err != nil {
		return err
	}
	if o.Family != "inet" {
		return nil
	}
	switch kind {
	case "table":
		if o.Name == Table {
			l.present = true
			l.tableComment = o.Comment
		}
	case "set":
		if o.Table != Table {
			return nil
		}
		switch o.Name {
		case "active":
			l.activeSet = true
			for _, e := range o.Elem {
				el, err := jsonActiveElement(e)
				if err != nil {
					return fmt.Errorf("set active: %w", err)
				}
				l.active = append(l.active, el)
			}
		case "allow4", "allow6":
			for _, e := range o.Elem {
				p, err := jsonPrefix(e)
				if err != nil {
					return fmt.Errorf("set %s: %w", o.Name, err)
				}
				l.allow = append(l.allow, p)
			}
		}
	case "chain":
		if o.Table == Table && o.Name == "input" {
			l.inputChain = true
		}
	case "rule":
		if o.Table != Table || o.Chain != "input" {
			return nil
		}
		r, err := jsonRule(o)
		if err != nil {
			return fmt.Errorf("chain input: %w", err)
		}
		l.rules = append(l.rules, r)
	}
	return nil
}

// jsonActiveElement reads {"elem": {"val": 6443, "timeout": 900,
// "expires": 899}}, or a bare 6443 for an element without timeout.
func jsonActiveElement(raw json.RawMessage) (element, error) {
	var wrapped struct {
		Elem *struct {
			Val     json.Number  `json:"val"`
			Timeout *json.Number `json:"timeout"`
			Expires *json.Number `json:"expires"`
		} `json:"elem"`
	}
	if err := json.Unmarshal(raw, &wrapped); err == nil && wrapped.Elem != nil {
		port, err := jsonPort(wrapped.Elem.Val)
		if err != nil {
			return element{}, err
		}
		e := element{port: port}
		if wrapped.Elem.Timeout != nil {
			e.hasTimeout = true
			if e.timeout, err = jsonSeconds(*wrapped.Elem.Timeout); err != nil {
				return element{}, fmt.Errorf("timeout: %w", err)
			}
			if e.timeout == 0 {
				e.hasTimeout = false // nft's "no timeout"
			}
		}
		if wrapped.Elem.Expires != nil {
			if e.expires, err = jsonSeconds(*wrapped.Elem.Expires); err != nil {
				return element{}, fmt.Errorf("expires: %w", err)
			}
		}
		return e, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return element{}, fmt.Errorf("element %s is not a port", raw)
	}
	port, err := jsonPort(n)
	return element{port: port}, err
}

func jsonPort(n json.Number) (int, error) {
	return atoiBounded(n.String(), 0, 65535)
}

func jsonSeconds(n json.Number) (time.Duration, error) {
	f, err := strconv.ParseFloat(n.String(), 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 100*365*24*3600 {
		return 0, fmt.Errorf("%q is not a number of seconds", n)
	}
	return time.Duration(f * float64(time.Second)).Round(time.Millisecond), nil
}

// jsonPrefix reads "192.0.2.1", {"prefix": {"addr": "10.0.0.0", "len": 8}},
// or either inside {"elem": {"val": ...}}.
func jsonPrefix(raw json.RawMessage) (netip.Prefix, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	var o struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Elem *struct {
			Val json.RawMessage `json:"val"`
		} `json:"elem"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		return netip.Prefix{}, fmt.Errorf("element %s is not an address or a prefix", raw)
	}
	switch {
	case o.Prefix != nil:
		a, err := netip.ParseAddr(o.Prefix.Addr)
		if err != nil {
			return netip.Prefix{}, err
		}
		p := netip.PrefixFrom(a, o.Prefix.Len)
		if !p.IsValid() {
			return netip.Prefix{}, fmt.Errorf("prefix %s/%d is not valid", a, o.Prefix.Len)
		}
		return p, nil
	case o.Elem != nil && len(o.Elem.Val) > 0:
		// Val is a strict part of raw: the recursion ends.
		return jsonPrefix(o.Elem.Val)
	}
	// Ranges ({"range": [...]}) are not written by Render.
	return netip.Prefix{}, fmt.Errorf("element %s is not an address or a prefix", raw)
}

func jsonRule(o jsonObject) (rule, error) {
	r := rule{comment: o.Comment}
	for _, st := range o.Expr {
		for k, v := range st {
			switch k {
			case "accept", "drop", "reject":
				r.verdict = k
			case "counter":
				var c struct {
					Packets json.Number `json:"packets"`
					Bytes   json.Number `json:"bytes"`
				}
				if err := json.Unmarshal(v, &c); err != nil {
					return rule{}, fmt.Errorf("counter %s: %w", v, err)
				}
				var err1, err2 error
				r.packets, err1 = strconv.ParseUint(c.Packets.String(), 10, 64)
				r.bytes, err2 = strconv.ParseUint(c.Bytes.String(), 10, 64)
				if err1 != nil || err2 != nil {
					return rule{}, fmt.Errorf("counter %s is not two numbers", v)
				}
				r.counter = true
			case "limit":
				var lim struct {
					Rate json.Number `json:"rate"`
					Per  string      `json:"per"`
					Inv  bool        `json:"inv"`
				}
				if err := json.Unmarshal(v, &lim); err != nil {
					return rule{}, fmt.Errorf("limit %s: %w", v, err)
				}
				rate, err := atoiBounded(lim.Rate.String(), 1, math.MaxInt32)
				if err != nil || lim.Inv {
					return rule{}, fmt.Errorf("limit %s is not a plain rate", v)
				}
				r.limitRate, r.limitPer = rate, lim.Per
			}
		}
	}
	return r, nil
}
