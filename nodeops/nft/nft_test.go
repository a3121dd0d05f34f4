package nft_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops/nft"
)

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		if !strings.Contains(s, "/") {
			a := netip.MustParseAddr(s)
			out[i] = netip.PrefixFrom(a, a.BitLen())
			continue
		}
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func validSpec() nft.Spec {
	return nft.Spec{
		Port:   6443,
		Mode:   nft.ModeDrop,
		Allow:  pfx("127.0.0.0/8", "::1", "192.0.2.3"),
		TTL:    15 * time.Minute,
		Change: "chg-20240601-01",
	}
}

// stateDiff names the fields where two states differ, or "".
func stateDiff(a, b nft.State) string {
	var d []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			d = append(d, fmt.Sprintf("%s: %v != %v", va.Type().Field(i).Name, va.Field(i).Interface(), vb.Field(i).Interface()))
		}
	}
	return strings.Join(d, "; ")
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*nft.Spec)
		want []string // substrings of the error; none means valid
	}{
		{"valid drop", func(*nft.Spec) {}, nil},
		{"valid reject", func(s *nft.Spec) { s.Mode = nft.ModeReject }, nil},
		{"valid limit", func(s *nft.Spec) { s.Mode, s.Rate = nft.ModeLimit, 50 }, nil},
		{"ttl bounds", func(s *nft.Spec) { s.TTL = time.Minute }, nil},
		{"ttl max", func(s *nft.Spec) { s.TTL = 24 * time.Hour }, nil},
		{"port 0", func(s *nft.Spec) { s.Port = 0 }, []string{"port 0 is outside 1..65535"}},
		{"port too big", func(s *nft.Spec) { s.Port = 65536 }, []string{"port 65536"}},
		{"mode unknown", func(s *nft.Spec) { s.Mode = "block" }, []string{`unknown mode "block"`}},
		{"mode empty", func(s *nft.Spec) { s.Mode = "" }, []string{`unknown mode ""`}},
		{"limit without rate", func(s *nft.Spec) { s.Mode = nft.ModeLimit }, []string{"mode limit needs a rate"}},
		{"limit rate too big", func(s *nft.Spec) { s.Mode, s.Rate = nft.ModeLimit, nft.MaxRate+1 }, []string{"mode limit needs a rate"}},
		{"rate with drop", func(s *nft.Spec) { s.Rate = 5 }, []string{"rate 5 given with mode drop"}},
		{"ttl too short", func(s *nft.Spec) { s.TTL = 59 * time.Second }, []string{"ttl 59s is outside 1m0s..24h0m0s", "hint:"}},
		{"ttl too long", func(s *nft.Spec) { s.TTL = 25 * time.Hour }, []string{"ttl 25h0m0s is outside"}},
		{"ttl zero", func(s *nft.Spec) { s.TTL = 0 }, []string{"ttl 0s"}},
		{"no allow", func(s *nft.Spec) { s.Allow = nil }, []string{"no allowed source"}},
		{"invalid allow", func(s *nft.Spec) { s.Allow = []netip.Prefix{{}} }, []string{"not a valid prefix"}},
		{"no change", func(s *nft.Spec) { s.Change = "" }, []string{"no change ID"}},
		{"change with quote", func(s *nft.Spec) { s.Change = `a"; flush ruleset; "` }, []string{"only letters, digits"}},
		{"change with space", func(s *nft.Spec) { s.Change = "a b" }, []string{"only letters"}},
		{"change with equals", func(s *nft.Spec) { s.Change = "mode=reject" }, []string{"only letters"}},
		{"change with newline", func(s *nft.Spec) { s.Change = "a\nb" }, []string{"only letters"}},
		{"change too long", func(s *nft.Spec) { s.Change = strings.Repeat("x", 65) }, []string{"65 bytes long"}},
		{"all wrong at once", func(s *nft.Spec) { *s = nft.Spec{} }, []string{"port 0", "unknown mode", "ttl 0s", "no change ID", "no allowed source"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.edit(&s)
			err := s.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted %+v", s)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name   string
		in     []netip.Prefix
		expect []netip.Prefix
	}{
		{"empty", nil, []netip.Prefix{}},
		{"contained address", pfx("10.1.2.3", "10.0.0.0/8"), pfx("10.0.0.0/8")},
		{"contained prefix", pfx("10.1.0.0/16", "10.0.0.0/8", "10.1.2.0/24"), pfx("10.0.0.0/8")},
		{"duplicates", pfx("192.0.2.3", "192.0.2.3"), pfx("192.0.2.3")},
		{"unmasked", pfx("10.1.2.3/8"), pfx("10.0.0.0/8")},
		{"adjacent kept apart", pfx("10.0.0.128/25", "10.0.0.0/25"), pfx("10.0.0.0/25", "10.0.0.128/25")},
		{"v4 before v6, sorted", pfx("2001:db8::1", "192.0.2.9", "::1", "10.0.0.1"), pfx("10.0.0.1", "192.0.2.9", "::1", "2001:db8::1")},
		{"v6 nesting", pfx("2001:db8:1::/48", "2001:db8::/32", "::1"), pfx("::1", "2001:db8::/32")},
		{"4in6 unmapped", pfx("::ffff:192.0.2.3", "::ffff:10.0.0.0/104"), pfx("10.0.0.0/8", "192.0.2.3")},
		{"4in6 merged with v4", pfx("::ffff:10.1.2.3", "10.0.0.0/8"), pfx("10.0.0.0/8")},
		{"everything", pfx("0.0.0.0/0", "10.0.0.0/8", "::/0", "::1"), pfx("0.0.0.0/0", "::/0")},
		{"invalid dropped", []netip.Prefix{{}, netip.MustParsePrefix("10.0.0.0/8")}, pfx("10.0.0.0/8")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := nft.Merge(tt.in)
			if !slices.Equal(got, tt.expect) {
				t.Fatalf("Merge(%v) = %v, want %v", tt.in, got, tt.expect)
			}
			if again := nft.Merge(got); !slices.Equal(again, got) {
				t.Fatalf("Merge is not idempotent: %v then %v", got, again)
			}
		})
	}
}

func TestRenderDrop(t *testing.T) {
	s := validSpec()
	s.Allow = pfx("10.1.2.3", "10.0.0.0/8", "::1", "192.0.2.3/32", "2001:db8::/32", "2001:db8:1::/48")
	want := `# breakglass shed change=chg-20240601-01 mode=drop port=6443 rate=0: one transaction, load with "nft -f -"
table inet breakglass {}
delete table inet breakglass
table inet breakglass {
	comment "breakglass shed change=chg-20240601-01 mode=drop port=6443 rate=0"
	set active {
		type inet_service
		flags timeout
		elements = { 6443 timeout 15m }
	}
	set allow4 {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 192.0.2.3 }
	}
	set allow6 {
		type ipv6_addr
		flags interval
		elements = { ::1, 2001:db8::/32 }
	}
	chain input {
		type filter hook input priority -10; policy accept;
		tcp dport @active ip saddr @allow4 accept
		tcp dport @active ip6 saddr @allow6 accept
		tcp dport @active counter drop comment "breakglass shed change=chg-20240601-01 mode=drop port=6443 rate=0"
	}
}
`
	if got := nft.Render(s); got != want {
		t.Fatalf("Render:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderModes(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*nft.Spec)
		want    []string
		notWant []string
	}{
		{"reject", func(s *nft.Spec) { s.Mode = nft.ModeReject },
			[]string{"\t\ttcp dport @active counter reject with tcp reset comment \"breakglass shed change=chg-20240601-01 mode=reject port=6443 rate=0\"\n"},
			[]string{" drop", "limit"}},
		{"limit", func(s *nft.Spec) { s.Mode, s.Rate = nft.ModeLimit, 25 },
			[]string{
				"\t\ttcp dport @active ct state established,related accept\n" +
					"\t\ttcp dport @active ct state new limit rate 25/second accept\n" +
					"\t\ttcp dport @active counter drop comment \"breakglass shed change=chg-20240601-01 mode=limit port=6443 rate=25\"\n",
			},
			[]string{"reject"}},
		{"only v6 allowed: allow4 has no elements line", func(s *nft.Spec) { s.Allow = pfx("::1") },
			[]string{"\tset allow4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n", "elements = { ::1 }"},
			[]string{"{ }"}},
		{"only v4 allowed: allow6 has no elements line", func(s *nft.Spec) { s.Allow = pfx("127.0.0.1") },
			[]string{"\tset allow6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t}\n"},
			[]string{"{ }"}},
		{"ttl with units", func(s *nft.Spec) { s.TTL = 26*time.Hour/2 + 90*time.Second + 1500*time.Millisecond },
			[]string{"elements = { 6443 timeout 13h1m31s500ms }"}, nil},
		{"ttl one day", func(s *nft.Spec) { s.TTL = 24 * time.Hour },
			[]string{"elements = { 6443 timeout 1d }"}, nil},
		{"other port", func(s *nft.Spec) { s.Port = 443 },
			[]string{"elements = { 443 timeout 15m }", "port=443"}, nil},
		{"ttl below Validate's floor still renders", func(s *nft.Spec) { s.TTL = 2 * time.Second },
			[]string{"elements = { 6443 timeout 2s }"}, []string{"refus"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.edit(&s)
			got := nft.Render(s)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("Render lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("Render holds %q:\n%s", w, got)
				}
			}
			if !strings.HasPrefix(strings.SplitN(got, "\n", 2)[1], "table inet breakglass {}\ndelete table inet breakglass\ntable inet breakglass {\n") {
				t.Errorf("Render does not start by replacing the table:\n%s", got)
			}
		})
	}
}

func TestRenderRefusesInvalid(t *testing.T) {
	tests := []struct {
		name string
		edit func(*nft.Spec)
	}{
		{"injection in change", func(s *nft.Spec) { s.Change = "x\"\nflush ruleset\n#" }},
		{"unknown mode", func(s *nft.Spec) { s.Mode = "block" }},
		{"no timeout", func(s *nft.Spec) { s.TTL = 0 }},
		{"sub-second timeout", func(s *nft.Spec) { s.TTL = 999 * time.Millisecond }},
		{"no allow", func(s *nft.Spec) { s.Allow = nil }},
		{"bad port", func(s *nft.Spec) { s.Port = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.edit(&s)
			got := nft.Render(s)
			assertRefusal(t, got)
		})
	}
}

// assertRefusal checks that a script is a refusal: comments and one line nft
// cannot parse, nothing else.
func assertRefusal(t *testing.T, script string) {
	t.Helper()
	var code []string
	for _, l := range strings.Split(strings.TrimSuffix(script, "\n"), "\n") {
		if !strings.HasPrefix(l, "#") {
			code = append(code, l)
		}
	}
	if !slices.Equal(code, []string{"breakglass-refused"}) {
		t.Fatalf("not a refusal:\n%s", script)
	}
}

func TestRenderExtendAndLift(t *testing.T) {
	if got, want := nft.RenderExtend(20*time.Minute, 6443),
		"flush set inet breakglass active\nadd element inet breakglass active { 6443 timeout 20m }\n"; got != want {
		t.Errorf("RenderExtend = %q, want %q", got, want)
	}
	if got, want := nft.RenderExtend(2*time.Second, 443),
		"flush set inet breakglass active\nadd element inet breakglass active { 443 timeout 2s }\n"; got != want {
		t.Errorf("RenderExtend = %q, want %q", got, want)
	}
	assertRefusal(t, nft.RenderExtend(0, 6443))
	assertRefusal(t, nft.RenderExtend(25*time.Hour, 6443))
	assertRefusal(t, nft.RenderExtend(time.Minute, 0))
	if got, want := nft.RenderLift(), "table inet breakglass {}\ndelete table inet breakglass\n"; got != want {
		t.Errorf("RenderLift = %q, want %q", got, want)
	}
	if err := nft.ValidateTTL(30 * time.Second); err == nil || !strings.Contains(err.Error(), "1m0s") {
		t.Errorf("ValidateTTL(30s) = %v", err)
	}
	if err := nft.ValidateTTL(time.Hour); err != nil {
		t.Errorf("ValidateTTL(1h) = %v", err)
	}
}

// The recordings in testdata/ are real output of nft 1.0.6 (Debian 12),
// written by TestRecordTestdata from the specs in recordedSpecs.
func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRecorded(t *testing.T) {
	for name, rec := range recordedSpecs {
		for _, format := range []string{"json", "txt"} {
			t.Run(name+"."+format, func(t *testing.T) {
				out := readTestdata(t, name+"."+format)
				parse := nft.ParseJSON
				if format == "txt" {
					parse = nft.ParseText
				}
				got, err := parse(out)
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				want := expectedState(rec.spec)
				want.Active = !rec.lapsed
				if want.Active {
					// Recorded within a second or two of loading.
					if got.Remaining > rec.spec.TTL || got.Remaining < rec.spec.TTL-5*time.Second {
						t.Errorf("Remaining = %v, want close to %v", got.Remaining, rec.spec.TTL)
					}
				}
				got.Remaining = 0
				want.Packets, want.Bytes = got.Packets, got.Bytes
				if d := stateDiff(got, want); d != "" {
					t.Fatalf("state differs: %s", d)
				}
			})
		}
	}
}

// expectedState is what reading a freshly loaded spec should give, apart
// from Remaining and the counters.
func expectedState(s nft.Spec) nft.State {
	return nft.State{
		Present: true,
		Change:  s.Change,
		Mode:    s.Mode,
		Rate:    s.Rate,
		Port:    s.Port,
		Allow:   nft.Merge(s.Allow),
		Active:  true,
	}
}

func TestParseAbsent(t *testing.T) {
	for _, out := range []string{"", "\n", `{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}`} {
		st, err := nft.ParseJSON([]byte(out))
		if err != nil || st.Present {
			t.Errorf("ParseJSON(%q) = %+v, %v; want absent", out, st, err)
		}
	}
	for _, out := range []string{"", "table inet other {\n}\n", "table ip breakglass {\n\tcomment \"breakglass shed change=x mode=drop port=1 rate=0\"\n}\n"} {
		st, err := nft.ParseText([]byte(out))
		if err != nil || st.Present {
			t.Errorf("ParseText(%q) = %+v, %v; want absent", out, st, err)
		}
	}
	if !nft.NotFound([]byte("Error: No such file or directory\nlist table inet breakglass\n")) {
		t.Error("NotFound misses nft's message")
	}
	if nft.NotFound([]byte("Error: Could not process rule: Operation not permitted")) {
		t.Error("NotFound takes EPERM for absence")
	}
}

// TestParseTextEdits changes one thing in a recorded listing and checks that
// the parser notices.
func TestParseTextEdits(t *testing.T) {
	base := string(readTestdata(t, "limit.txt"))
	tests := []struct {
		name, old, new string
		want           string // substring of the error; "" means it parses
	}{
		{"unchanged", "", "", ""},
		{"table comment gone, rule comment left", "\tcomment \"breakglass shed change=chg-limit mode=limit port=6443 rate=5\"\n", "", ""},
		{"comment lies about the mode", "mode=limit port=6443 rate=5\"\n\tset", "mode=drop port=6443 rate=0\"\n\tset", "comment says mode drop"},
		{"no comment at all", "breakglass shed change", "something else", "no breakglass comment"},
		{"element without timeout", "6443 timeout", "6443 xtimeout", "dead-man is disarmed"},
		{"other port in set", "{ 6443 timeout", "{ 443 timeout", "holds port 443"},
		{"rate per minute", "5/second", "5/minute", "not per second"},
		{"shed rule turned into accept", "bytes 0 drop comment", "bytes 0 accept comment", "no drop or reject rule"},
		{"second shed rule", "\t\ttcp dport @active ct state new", "\t\ttcp dport @active counter packets 1 bytes 2 reject\n\t\ttcp dport @active ct state new", "more than one drop or reject rule"},
		{"rule comment gone too", " comment \"breakglass shed", " comment \"other", ""},
		{"bad duration", "expires ", "expires 5x", "unknown unit"},
		{"unbalanced", "\n}\n", "\n", "not closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := base
			if tt.old != "" {
				if !strings.Contains(in, tt.old) {
					t.Fatalf("recording lacks %q", tt.old)
				}
				in = strings.ReplaceAll(in, tt.old, tt.new)
			}
			_, err := nft.ParseText([]byte(in))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("ParseText: %v\n%s", err, in)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("ParseText error = %v, want one with %q\n%s", err, tt.want, in)
			}
		})
	}
}

func TestParseJSONEdits(t *testing.T) {
	base := string(readTestdata(t, "drop.json"))
	tests := []struct {
		name, old, new string
		want           string
	}{
		{"unchanged", "", "", ""},
		{"newer nft: table comment, fractional seconds", `"name": "breakglass", "handle"`,
			`"name": "breakglass", "comment": "breakglass shed change=chg-drop mode=drop port=6443 rate=0", "handle"`, ""},
		{"rule comment gone", `"comment": "breakglass shed change=chg-drop mode=drop port=6443 rate=0", `, "", "no breakglass comment"},
		{"reject instead of drop", `{"drop": null}`, `{"reject": {"type": "tcp reset"}}`, "rules shed in mode reject"},
		{"element without timeout", `{"elem": {"val": 6443, "timeout": 900, "expires": `, `{"elem": {"val": 6443, "xexpires": `, "dead-man is disarmed"},
		{"not json", `{"nftables"`, `{"nftables" x`, "nft json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := base
			if tt.old != "" {
				if !strings.Contains(in, tt.old) {
					t.Fatalf("recording lacks %q", tt.old)
				}
				in = strings.Replace(in, tt.old, tt.new, 1)
			}
			_, err := nft.ParseJSON([]byte(in))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("ParseJSON: %v\n%s", err, in)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("ParseJSON error = %v, want one with %q", err, tt.want)
			}
		})
	}
}

func TestParseJSONFractionalSeconds(t *testing.T) {
	// Newer nft may write fractions of a second.
	in := regexp.MustCompile(`"expires": [0-9]+`).ReplaceAll(readTestdata(t, "drop.json"), []byte(`"expires": 899.5`))
	st, err := nft.ParseJSON(in)
	if err != nil {
		t.Fatal(err)
	}
	if st.Remaining != 899500*time.Millisecond {
		t.Fatalf("Remaining = %v", st.Remaining)
	}
}

func FuzzParseText(f *testing.F) {
	for name := range recordedSpecs {
		b, err := os.ReadFile(filepath.Join("testdata", name+".txt"))
		if err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := nft.ParseText(b)
		checkParsed(t, st, err)
	})
}

func FuzzParseJSON(f *testing.F) {
	for name := range recordedSpecs {
		b, err := os.ReadFile(filepath.Join("testdata", name+".json"))
		if err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := nft.ParseJSON(b)
		checkParsed(t, st, err)
	})
}

// checkParsed holds for any input: a state the parsers accept is one Render
// could have written.
func checkParsed(t *testing.T, st nft.State, err error) {
	if err != nil || !st.Present {
		return
	}
	if st.Port < 1 || st.Port > 65535 || st.Remaining < 0 || (!st.Active && st.Remaining != 0) {
		t.Fatalf("implausible state %+v", st)
	}
	if (st.Mode == nft.ModeLimit) != (st.Rate > 0) {
		t.Fatalf("mode %s with rate %d", st.Mode, st.Rate)
	}
}
