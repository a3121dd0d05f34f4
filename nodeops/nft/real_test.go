package nft_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops/nft"
)

// Tests against the real nft binary, each in network namespaces of its own.

var record = flag.Bool("record", false, "rewrite testdata/*.json and *.txt from the real nft")

type recording struct {
	spec   nft.Spec
	lapsed bool // recorded after the dead-man lapsed
}

var recordedSpecs = map[string]recording{
	"drop": {spec: nft.Spec{Port: 6443, Mode: nft.ModeDrop, TTL: 15 * time.Minute, Change: "chg-drop",
		Allow: pfx("127.0.0.0/8", "10.0.0.0/8", "10.1.2.3", "192.0.2.3", "::1", "2001:db8::/32", "2001:db8:1::/48")}},
	// allow4 is empty.
	"reject": {spec: nft.Spec{Port: 443, Mode: nft.ModeReject, TTL: time.Hour, Change: "chg-reject:2",
		Allow: pfx("::1", "fd00::/8", "2001:db8::5")}},
	// allow6 is empty, and allow4 long enough for nft to wrap it.
	"limit": {spec: nft.Spec{Port: 6443, Mode: nft.ModeLimit, Rate: 5, TTL: 10 * time.Minute, Change: "chg-limit",
		Allow: pfx("127.0.0.0/8", "192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14",
			"198.51.100.0/24", "203.0.113.0/25", "203.0.113.200", "10.20.30.40", "172.16.0.0/12")}},
	"lapsed": {lapsed: true, spec: nft.Spec{Port: 6443, Mode: nft.ModeDrop, TTL: 2 * time.Second, Change: "chg-lapsed",
		Allow: pfx("127.0.0.1", "::1")}},
}

func TestRecordTestdata(t *testing.T) {
	if !*record {
		t.Skip("run with -record to rewrite testdata/ from the real nft")
	}
	for name, rec := range recordedSpecs {
		t.Run(name, func(t *testing.T) {
			ns := newNetns(t)
			ns.load(t, nft.Render(rec.spec))
			if rec.lapsed {
				waitLapsed(t, ns)
			}
			j, x := ns.list(t)
			for file, b := range map[string][]byte{name + ".json": j, name + ".txt": x} {
				if err := os.WriteFile(filepath.Join("testdata", file), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// realSpecs cover each mode and each empty allow set.
func realSpecs() map[string]nft.Spec {
	out := map[string]nft.Spec{}
	for name, rec := range recordedSpecs {
		if !rec.lapsed {
			out[name] = rec.spec
		}
	}
	return out
}

func TestRealRoundTrip(t *testing.T) {
	for name, spec := range realSpecs() {
		t.Run(name, func(t *testing.T) {
			if err := spec.Validate(); err != nil {
				t.Fatal(err)
			}
			ns := newNetns(t)
			ns.load(t, nft.Render(spec))
			sj, sx := ns.states(t)
			for format, st := range map[string]nft.State{"json": sj, "text": sx} {
				if st.Remaining > spec.TTL || st.Remaining < spec.TTL-10*time.Second {
					t.Errorf("%s: Remaining = %v, want close to %v", format, st.Remaining, spec.TTL)
				}
				st.Remaining = 0
				if d := stateDiff(st, expectedState(spec)); d != "" {
					t.Errorf("%s: read back %s", format, d)
				}
			}
			j, x := ns.list(t)
			comment := `"breakglass shed change=` + spec.Change
			if !strings.Contains(string(x), "\tcomment "+comment) {
				t.Errorf("text listing lacks the table comment:\n%s", x)
			}
			// The table's and the shed rule's: nft 1.0.6 leaves the table's out
			// of JSON, and the rule's stands in.
			t.Logf("the comment appears %d times in JSON, 2 in text", strings.Count(string(j), comment))
		})
	}
}

func TestRealRenderIdempotent(t *testing.T) {
	ns := newNetns(t)
	first := recordedSpecs["drop"].spec
	ns.load(t, nft.Render(first))
	before, _ := ns.states(t)
	ns.load(t, nft.Render(first))
	after, _ := ns.states(t)
	before.Remaining, after.Remaining = 0, 0
	if d := stateDiff(before, after); d != "" {
		t.Fatalf("second load changed the state: %s", d)
	}
	// Loading another spec over it replaces everything: no allowed source,
	// rule or mode of the first one is left.
	second := recordedSpecs["limit"].spec
	ns.load(t, nft.Render(second))
	got, _ := ns.states(t)
	got.Remaining = 0
	if d := stateDiff(got, expectedState(second)); d != "" {
		t.Fatalf("after loading another spec: %s", d)
	}
	_, x := ns.list(t)
	if strings.Contains(string(x), "2001:db8") || strings.Count(string(x), "counter") != 1 {
		t.Fatalf("leftovers of the first spec:\n%s", x)
	}
}

func waitLapsed(t *testing.T, ns *netns) {
	t.Helper()
	waitFor(t, 20*time.Second, "the dead-man element to lapse", func() (bool, string) {
		sj, sx := ns.states(t)
		return !sj.Active && !sx.Active, fmt.Sprintf("json %+v text %+v", sj, sx)
	})
}

func TestRealExtend(t *testing.T) {
	t.Run("after lapse", func(t *testing.T) {
		ns := newNetns(t)
		spec := recordedSpecs["lapsed"].spec
		ns.load(t, nft.Render(spec))
		if sj, _ := ns.states(t); !sj.Active {
			t.Fatalf("not active right after load: %+v", sj)
		}
		waitLapsed(t, ns)
		sj, sx := ns.states(t)
		for _, st := range []nft.State{sj, sx} {
			if !st.Present || st.Active || st.Remaining != 0 || st.Port != spec.Port || st.Change != spec.Change {
				t.Fatalf("lapsed state %+v", st)
			}
		}
		ns.load(t, nft.RenderExtend(10*time.Minute, spec.Port))
		sj, sx = ns.states(t)
		for _, st := range []nft.State{sj, sx} {
			if !st.Active || st.Remaining < 10*time.Minute-10*time.Second {
				t.Fatalf("after extending a lapsed shed: %+v", st)
			}
		}
	})
	t.Run("while active", func(t *testing.T) {
		ns := newNetns(t)
		spec := recordedSpecs["drop"].spec
		spec.TTL = time.Minute
		ns.load(t, nft.Render(spec))
		before, _ := ns.states(t)
		ns.load(t, nft.RenderExtend(20*time.Minute, spec.Port))
		after, _ := ns.states(t)
		if after.Remaining < 19*time.Minute || after.Remaining <= before.Remaining {
			t.Fatalf("Remaining %v before, %v after extending to 20m", before.Remaining, after.Remaining)
		}
		// Shortening works the same way: the element is replaced, not kept.
		ns.load(t, nft.RenderExtend(2*time.Minute, spec.Port))
		if sj, _ := ns.states(t); sj.Remaining > 2*time.Minute {
			t.Fatalf("Remaining %v after extending to 2m", sj.Remaining)
		}
	})
	t.Run("absent table", func(t *testing.T) {
		ns := newNetns(t)
		if _, _, err := ns.nft(nft.RenderExtend(time.Minute, 6443), "-f", "-"); err == nil {
			t.Fatal("extending an absent shed succeeded")
		}
		if _, stderr, err := ns.nft("", "list", "table", "inet", nft.Table); err == nil || !nft.NotFound(stderr) {
			t.Fatalf("extend created something: %v %s", err, stderr)
		}
	})
}

func TestRealLift(t *testing.T) {
	ns := newNetns(t)
	// Someone else's tables: one in inet, one with our name in another
	// family.
	other := `table inet other {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport 22 counter accept
	}
}
table ip breakglass {
	chain output {
		type filter hook output priority 0; policy accept;
		udp dport 53 counter accept
	}
}
`
	ns.load(t, other)
	ns.load(t, nft.Render(recordedSpecs["drop"].spec))
	ns.load(t, nft.RenderLift())

	out, stderr, err := ns.nft("", "-j", "list", "table", "inet", nft.Table)
	if err == nil || !nft.NotFound(stderr) {
		t.Fatalf("table still listed after lift: %v %s", err, out)
	}
	if st, err := nft.ParseJSON(out); err != nil || st.Present {
		t.Fatalf("ParseJSON of an absent table's output = %+v, %v", st, err)
	}
	for _, c := range []struct{ family, name, rule string }{
		{"inet", "other", "tcp dport 22 counter packets 0 bytes 0 accept"},
		{"ip", "breakglass", "udp dport 53 counter packets 0 bytes 0 accept"},
	} {
		out, _, err := ns.nft("", "list", "table", c.family, c.name)
		if err != nil || !strings.Contains(string(out), c.rule) {
			t.Errorf("table %s %s lost its rule: %v\n%s", c.family, c.name, err, out)
		}
	}
	// Lifting again, with the table absent, succeeds.
	ns.load(t, nft.RenderLift())
	// And so does lifting in a namespace that never had a shed.
	newNetns(t).load(t, nft.RenderLift())
}

func TestRealRefusal(t *testing.T) {
	ns := newNetns(t)
	spec := recordedSpecs["drop"].spec
	ns.load(t, nft.Render(spec))
	before, _ := ns.states(t)

	bad := spec
	bad.Mode = "block"
	bad.Change = "x\"\nflush ruleset\n#"
	for _, script := range []string{nft.Render(bad), nft.RenderExtend(0, spec.Port), nft.RenderExtend(time.Hour, 0)} {
		if _, _, err := ns.nft(script, "-f", "-"); err == nil {
			t.Fatalf("nft took a refusal:\n%s", script)
		}
	}
	after, _ := ns.states(t)
	before.Remaining, after.Remaining = 0, 0
	if d := stateDiff(before, after); d != "" {
		t.Fatalf("a refused script changed the table: %s", d)
	}
}

// TestRealTraffic sheds the port between two namespaces joined by a veth
// pair, on TEST-NET-1 addresses that exist only inside them.
func TestRealTraffic(t *testing.T) {
	const (
		server     = "192.0.2.1"
		blocked    = "192.0.2.2"
		allowed    = "192.0.2.3"
		port       = 6443
		serverAddr = "192.0.2.1:6443"
		otherAddr  = "192.0.2.1:8080"
	)
	srv, cli := newNetns(t), newNetns(t)
	srv.ip(t, "link", "add", "bgs", "type", "veth", "peer", "name", "bgc", "netns", cli.name)
	srv.ip(t, "addr", "add", server+"/24", "dev", "bgs")
	srv.ip(t, "link", "set", "bgs", "up")
	cli.ip(t, "addr", "add", blocked+"/24", "dev", "bgc")
	cli.ip(t, "addr", "add", allowed+"/24", "dev", "bgc")
	cli.ip(t, "link", "set", "bgc", "up")
	srv.listen(t, serverAddr)
	srv.listen(t, otherAddr)

	reachable := func(src, dst string) func() (bool, string) {
		return func() (bool, string) {
			err := cli.dial(src, dst, 500*time.Millisecond)
			return err == nil, fmt.Sprint(err)
		}
	}
	waitFor(t, 10*time.Second, "the server to answer before any shed", reachable(blocked, serverAddr))

	spec := nft.Spec{Port: port, Mode: nft.ModeDrop, TTL: time.Minute, Change: "chg-traffic",
		Allow: pfx("127.0.0.0/8", "::1", allowed)}
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	srv.load(t, nft.Render(spec))

	if err := cli.dial(blocked, serverAddr, time.Second); err == nil || !isTimeout(err) {
		t.Fatalf("drop: connection from %s: %v, want a timeout", blocked, err)
	}
	if err := cli.dial(allowed, serverAddr, 5*time.Second); err != nil {
		t.Fatalf("drop: connection from allowed %s: %v", allowed, err)
	}
	if err := cli.dial(blocked, otherAddr, 5*time.Second); err != nil {
		t.Fatalf("drop: connection from %s to another port: %v", blocked, err)
	}
	if st, _ := srv.states(t); st.Packets == 0 || st.Bytes == 0 {
		t.Fatalf("drop: the shed rule counted nothing: %+v", st)
	}

	spec.Mode = nft.ModeReject
	srv.load(t, nft.Render(spec))
	if err := cli.dial(blocked, serverAddr, 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("reject: connection from %s: %v, want connection refused", blocked, err)
	}
	if err := cli.dial(allowed, serverAddr, 5*time.Second); err != nil {
		t.Fatalf("reject: connection from allowed %s: %v", allowed, err)
	}

	// Back to drop, then let the dead-man lapse: the shed ends by itself.
	spec.Mode = nft.ModeDrop
	srv.load(t, nft.Render(spec))
	if err := cli.dial(blocked, serverAddr, time.Second); !isTimeout(err) {
		t.Fatalf("drop again: connection from %s: %v, want a timeout", blocked, err)
	}
	srv.load(t, nft.RenderExtend(2*time.Second, port))
	waitFor(t, 20*time.Second, "the blocked source to get through after the dead-man lapsed", reachable(blocked, serverAddr))
	if sj, sx := srv.states(t); sj.Active || sx.Active || !sj.Present {
		t.Fatalf("after lapse: json %+v text %+v", sj, sx)
	}
}
