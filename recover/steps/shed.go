package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/iptables"
	"github.com/breakglass/breakglass/nodeops/nft"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// Journal ops of the network shed.
const (
	OpShedApply  = "shed-apply"
	OpShedExtend = "shed-extend"
	OpShedLift   = "shed-lift"
)

// KindNft is the change kind of breakglass's nftables table on nodes.
const KindNft = "nft"

// beltUnit is the transient systemd timer that deletes the table after the
// dead-man lapsed, where the node runs systemd: a second belt.
const beltUnit = "breakglass-shed-expire"

// Nft is the change kind that puts breakglass's own nftables table on
// nodes, extends and lifts it: one item per node, through the fan-out.
type Nft struct {
	Runner  nodeops.Runner
	Options fanout.OptionsOf[NftResult]
	// Targets are the nodes by name, for undo.
	Targets []nodeops.Target
	// Firewall is how the shed is written: "auto" (or empty) uses nft where
	// the node has it and iptables where it has only that; "nft" or
	// "iptables" insist.
	Firewall string
}

// ValidateFirewall checks a Firewall value.
func ValidateFirewall(fw string) error {
	switch fw {
	case "", "auto", BackendNft, BackendIptables:
		return nil
	}
	return fmt.Errorf("%q: want auto, nft or iptables", fw)
}

// Name is the kind's name.
func (k *Nft) Name() string { return KindNft }

// NftChange is the payload of an nft item: the exact script for one node,
// and the table it was planned against.
type NftChange struct {
	Target nodeops.Target `json:"-"`
	Node   string         `json:"node"`
	// Script is the nft -f transaction, shown in the plan as it is run.
	Script string `json:"script"`
	// Before is the table as it was when planned; PlannedAt its comment
	// ("absent" when there was none): apply refuses when it changed.
	Before    nft.State `json:"before"`
	PlannedAt string    `json:"plannedAt"`
	// After is the state the table has once applied, in PlannedAt's
	// terms: what an undo expects to find.
	After string `json:"after"`
	// Spec is what the table holds after (nil for a lift or an extend).
	Spec *nft.Spec `json:"spec,omitempty"`
	// Backend is the node's firewall: "nft" (or empty), or "iptables" on
	// a node without nft. For iptables, Script is the iptables-restore
	// input of each family (shown), and Command the shell that loads it.
	Backend string `json:"backend,omitempty"`
	Command string `json:"command,omitempty"`
	// Belt schedules (or, for a lift, cancels) the systemd timer that
	// deletes the table after the TTL, where systemd runs.
	Belt time.Duration `json:"belt,omitempty"`
}

// NftResult is what applying did on one node.
type NftResult struct {
	// Belt says whether the systemd timer was set ("systemd") or the node
	// has none ("none").
	Belt string `json:"belt,omitempty"`
}

// NodeTable is what a node said about its table when probed.
type NodeTable struct {
	Node string `json:"node"`
	// Operator is the operator's address as the node sees it (the source
	// of the SSH session).
	Operator netip.Addr `json:"operator"`
	State    nft.State  `json:"state"`
	// Backend is how the node's shed is written: "nft", or "iptables" where
	// the node has no nft binary.
	Backend string `json:"backend"`
	// NoNft is set when the node has neither nft nor iptables.
	NoNft bool `json:"noNft,omitempty"`
}

// probeScript prints the SSH session's source (before sudo drops the
// environment), then breakglass's table in JSON or, for nft builds without
// JSON, as text, or "absent".
const probeScript = `echo "ssh=$SSH_CONNECTION"
PATH=$PATH:/usr/sbin:/sbin
S=""; if [ "$(id -u)" != 0 ]; then S="sudo -n"; fi
if [ "$FW" = iptables ] || { [ "$FW" != nft ] && ! command -v nft >/dev/null 2>&1; }; then
  command -v iptables-save >/dev/null 2>&1 || { echo "nft=missing"; exit 0; }
  echo "format=iptables"; echo "now=$(date +%s)"
  $S iptables-save -c -t filter || exit $?
  echo "` + ip6Separator + `"
  if command -v ip6tables-save >/dev/null 2>&1; then $S ip6tables-save -c -t filter; fi
  exit 0
fi
if ! $S nft list tables >/tmp/.breakglass-tables.$$ 2>&1; then cat /tmp/.breakglass-tables.$$ >&2; rm -f /tmp/.breakglass-tables.$$; exit 1; fi
if ! grep -qx 'table inet ` + nft.Table + `' /tmp/.breakglass-tables.$$; then rm -f /tmp/.breakglass-tables.$$; echo "format=absent"; exit 0; fi
rm -f /tmp/.breakglass-tables.$$
if $S nft -j list table inet ` + nft.Table + ` >/dev/null 2>&1; then echo "format=json"; $S nft -j list table inet ` + nft.Table + `
else echo "format=text"; $S nft list table inet ` + nft.Table + `; fi`

// ip6Separator separates the two families' listings in the probe's output.
const ip6Separator = "--- ip6tables"

// Probe reads every target's table and the operator's address as each
// sees it.
func (k *Nft) Probe(ctx context.Context, targets []nodeops.Target) []fanout.ResultOf[NodeTable] {
	opts := fanout.OptionsOf[NodeTable]{Concurrency: k.Options.Concurrency, Timeout: k.Options.Timeout, Retries: k.Options.Retries}
	return fanout.RunOf(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (NodeTable, error) {
		fw := k.Firewall
		if fw == "" {
			fw = "auto"
		}
		out, err := k.Runner.Run(ctx, t, nodeops.Command{Line: "FW=" + nodeops.ShellQuote(fw) + "\n" + probeScript, NoSudo: true})
		if err != nil {
			return NodeTable{Node: t.Name}, err
		}
		nt, err := parseProbe(t.Name, out.Stdout)
		if err != nil {
			return nt, &nodeops.Error{Node: t.Name, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "nft", Err: err}
		}
		return nt, nil
	})
}

func parseProbe(node string, out []byte) (NodeTable, error) {
	nt := NodeTable{Node: node}
	s := string(out)
	line, rest, _ := strings.Cut(s, "\n")
	if src, ok := strings.CutPrefix(line, "ssh="); ok {
		if f := strings.Fields(src); len(f) > 0 {
			nt.Operator, _ = netip.ParseAddr(f[0])
		}
	}
	line, rest, _ = strings.Cut(rest, "\n")
	var err error
	nt.Backend = BackendNft
	switch line {
	case "nft=missing":
		nt.NoNft = true
	case "format=iptables":
		nt.Backend = BackendIptables
		var now string
		now, rest, _ = strings.Cut(rest, "\n")
		unix, perr := strconv.ParseInt(strings.TrimPrefix(now, "now="), 10, 64)
		if perr != nil {
			return nt, fmt.Errorf("unexpected answer %q for the node's time", now)
		}
		v4, v6, _ := strings.Cut(rest, ip6Separator+"\n")
		nt.State, err = iptables.Parse(v4, v6, time.Unix(unix, 0))
	case "format=absent":
	case "format=json":
		nt.State, err = nft.ParseJSON([]byte(rest))
	case "format=text":
		nt.State, err = nft.ParseText([]byte(rest))
	default:
		err = fmt.Errorf("unexpected answer %q", line)
	}
	return nt, err
}

// The firewalls a shed is written with.
const (
	BackendNft      = "nft"
	BackendIptables = "iptables"
)

// loadScripts returns what an item that loads spec shows, and for
// iptables what it runs: nft's transaction (fed to nft -f - by
// applyScript), or iptables-restore's input and the shell that loads it
// with the dead-man's date computed on the node.
func loadScripts(backend string, spec nft.Spec) (show, command string, err error) {
	if backend != BackendIptables {
		return nft.Render(spec), "", nil
	}
	v4, v6, err := iptables.Render(spec)
	if err != nil {
		return "", "", err
	}
	return v4 + v6 + fmt.Sprintf("# %s and %s are the date %s from when it is loaded, on the node\n", iptables.ExpiresPlaceholder, iptables.ExpiresUnixPlaceholder, spec.TTL),
		iptables.ApplyScript(v4, v6, spec.TTL), nil
}

// liftScripts is loadScripts for a lift.
func liftScripts(backend string) (show, command string) {
	if backend != BackendIptables {
		return nft.RenderLift(), ""
	}
	return iptables.LiftScript(), iptables.LiftScript()
}

// withBackend says, in a summary, that a node's shed is written with
// iptables (nft is the rule).
func withBackend(backend string) string {
	if backend == BackendIptables {
		return ", with iptables (the node has no nft, or --firewall iptables)"
	}
	return ""
}

// what names breakglass's rules on a node of the backend, for summaries.
func what(backend string) string {
	if backend == BackendIptables {
		return "iptables chain " + iptables.Chain
	}
	return "table inet " + nft.Table
}

// comment is the state an item is planned against.
func plannedAt(s nft.State) string {
	if !s.Present {
		return "absent"
	}
	return "change=" + s.Change
}

// ShedSpec is what `shed apply` asks for, before the defaults each node
// adds.
type ShedSpec struct {
	Port  int
	Mode  nft.Mode
	Rate  int
	TTL   time.Duration
	Allow []netip.Prefix
	// Defaults are added to every node's allowlist: the control-plane
	// nodes, the etcd peers, loopback. The operator's address as each node
	// sees it is added unless NoOperator.
	Defaults   []netip.Prefix
	NoOperator bool
}

// PlanShedApply plans the table on every target: the allowlist is the
// spec's plus the operator's address as that node sees it. A plan that
// would cut the operator off from a node is refused; a node already
// shedding exactly so is unchanged (apply is idempotent).
func PlanShedApply(k *Nft, targets []nodeops.Target, s ShedSpec) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		p := &change.Plan{ID: id, Op: OpShedApply, Title: fmt.Sprintf("shed port %d on %d node%s (%s, %s)", s.Port, len(targets), plural(len(targets)), s.Mode, s.TTL)}
		var cut []string
		for _, r := range k.Probe(ctx, targets) {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			nt := r.Output
			if nt.NoNft {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: "neither nft nor iptables on the node (install nftables)"})
				continue
			}
			allow := append(append([]netip.Prefix{}, s.Allow...), s.Defaults...)
			if !s.NoOperator && nt.Operator.IsValid() {
				allow = append(allow, netip.PrefixFrom(nt.Operator, nt.Operator.BitLen()))
			}
			if !nt.Operator.IsValid() {
				p.Notes = append(p.Notes, fmt.Sprintf("%s: the operator's address was not in the SSH session (SSH_CONNECTION): check --allow covers it", r.Target.Name))
			} else if !covers(allow, nt.Operator) {
				cut = append(cut, fmt.Sprintf("%s (it sees you as %s)", r.Target.Name, nt.Operator))
			}
			spec := nft.Spec{Port: s.Port, Mode: s.Mode, Rate: s.Rate, Allow: nft.Merge(allow), TTL: s.TTL, Change: nftChangeID(id)}
			if err := spec.Validate(); err != nil {
				return nil, err
			}
			show, command, err := loadScripts(nt.Backend, spec)
			if err != nil {
				return nil, err
			}
			c := &NftChange{Target: r.Target, Node: r.Target.Name, Script: show, Command: command, Backend: nt.Backend, Before: nt.State, PlannedAt: plannedAt(nt.State),
				After: "change=" + id, Spec: &spec, Belt: s.TTL}
			it := c.item(fmt.Sprintf("%s: shed tcp/%d (%s), allow %s, for %s%s", r.Target.Name, s.Port, modeText(s.Mode, s.Rate), prefixList(spec.Allow), s.TTL, withBackend(nt.Backend)))
			if nt.State.Present && nt.State.Active && sameShed(nt.State, spec) {
				it.Summary = r.Target.Name + ": already shedding so (" + nt.State.Remaining.Round(time.Second).String() + " left)"
				it.Payload = nil
				p.Unchanged = append(p.Unchanged, it)
				continue
			}
			p.Items = append(p.Items, it)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(cut) > 0 {
			return nil, change.Refusedf("the allowlist would cut you off from %s\nhint: add your address with --allow, or keep the default that allows it", strings.Join(cut, ", "))
		}
		if len(p.Items)+len(p.Unchanged) == 0 && len(p.Skipped) > 0 {
			return nil, fmt.Errorf("no node could be planned: %s: %s", p.Skipped[0].Target, p.Skipped[0].Reason)
		}
		p.Notes = append(p.Notes, fmt.Sprintf("every rule expires on the node %s after it is applied, even if breakglass dies (a timed set element gates them; with iptables, xt_time's date); `breakglass shed extend` renews, `breakglass shed lift` removes the table", s.TTL))
		return p, nil
	}
}

// PlanShedExtend plans renewing the dead-man on every target that has the
// table.
func PlanShedExtend(k *Nft, targets []nodeops.Target, ttl time.Duration) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		p := &change.Plan{ID: id, Op: OpShedExtend, Title: fmt.Sprintf("extend the shed to %s from now", ttl)}
		for _, r := range k.Probe(ctx, targets) {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			st := r.Output.State
			if !st.Present {
				p.Notes = append(p.Notes, r.Target.Name+": no shed to extend")
				continue
			}
			if err := nft.ValidateTTL(ttl); err != nil {
				return nil, err
			}
			c := &NftChange{Target: r.Target, Node: r.Target.Name, Script: nft.RenderExtend(ttl, st.Port), Backend: r.Output.Backend, Before: st, PlannedAt: plannedAt(st),
				After: plannedAt(st), Belt: ttl}
			if r.Output.Backend == BackendIptables {
				// No set to renew: the rules are loaded again with the
				// new date.
				spec := nft.Spec{Port: st.Port, Mode: st.Mode, Rate: st.Rate, Allow: st.Allow, TTL: ttl, Change: st.Change}
				var err error
				if c.Script, c.Command, err = loadScripts(BackendIptables, spec); err != nil {
					return nil, err
				}
			}
			was := "lapsed"
			if st.Active {
				was = st.Remaining.Round(time.Second).String() + " left"
			}
			p.Items = append(p.Items, c.item(fmt.Sprintf("%s: shed of change %s renewed for %s (was %s)", r.Target.Name, st.Change, ttl, was)))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return p, nil
	}
}

// PlanShedLift plans removing breakglass's table from every target that
// has one. Nothing else on the node is touched.
func PlanShedLift(k *Nft, targets []nodeops.Target) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		p := &change.Plan{ID: id, Op: OpShedLift, Title: "lift the shed"}
		for _, r := range k.Probe(ctx, targets) {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			st := r.Output.State
			if !st.Present {
				continue
			}
			c := &NftChange{Target: r.Target, Node: r.Target.Name, Backend: r.Output.Backend, Before: st, PlannedAt: plannedAt(st), After: "absent"}
			c.Script, c.Command = liftScripts(c.Backend)
			p.Items = append(p.Items, c.item(fmt.Sprintf("%s: delete %s (shed of change %s)", r.Target.Name, what(c.Backend), st.Change)))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return p, nil
	}
}

func (c *NftChange) item(summary string) *change.Item {
	return &change.Item{Kind: KindNft, Target: journal.Target{Node: c.Node, Path: "nft:inet " + nft.Table}, Summary: summary,
		Diff: indent(c.Script), PlannedAt: c.PlannedAt, Payload: c}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  ")
		b.WriteString(l)
		b.WriteString("\n")
	}
	return b.String()
}

func modeText(m nft.Mode, rate int) string {
	if m == nft.Mode("limit") {
		return fmt.Sprintf("limit %d new connections/s", rate)
	}
	return string(m)
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		if p.IsSingleIP() {
			s[i] = p.Addr().String()
		} else {
			s[i] = p.String()
		}
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func covers(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// sameShed reports whether the table holds what spec would write, but for
// its change ID and remaining time.
func sameShed(st nft.State, spec nft.Spec) bool {
	if st.Mode != spec.Mode || st.Rate != spec.Rate || st.Port != spec.Port {
		return false
	}
	return prefixList(nft.Merge(st.Allow)) == prefixList(nft.Merge(spec.Allow))
}

// beltScript sets (ttl > 0) or cancels the systemd timer that deletes the
// table, where the node runs systemd; it prints which.
func beltScript(ttl time.Duration) string {
	cancel := "systemctl stop " + beltUnit + ".timer >/dev/null 2>&1; systemctl reset-failed " + beltUnit + ".service " + beltUnit + ".timer >/dev/null 2>&1"
	set := ""
	if ttl > 0 {
		// A minute after the dead-man lapsed: the table is inert by then.
		secs := int((ttl + time.Minute).Seconds())
		set = fmt.Sprintf("; systemd-run --quiet --unit %s --on-active=%ds --timer-property=AccuracySec=1s nft delete table inet %s >/dev/null", beltUnit, secs, nft.Table)
	}
	return `if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then ` + cancel + set + `; echo belt=systemd; else echo belt=none; fi`
}

// applyScript checks that the table is still as planned, loads the
// transaction from stdin and handles the systemd belt, in one command.
func applyScript(c *NftChange) string {
	if c.Backend == BackendIptables {
		// No systemd belt here: the kernel's xt_time ends the shed rule.
		return `PATH=$PATH:/usr/sbin:/sbin
now=$(` + iptables.ChangeScript() + `)
if [ "$now" != ` + nodeops.ShellQuote(c.PlannedAt) + ` ]; then echo "stale: $now" >&2; exit 75; fi
` + c.Command + `echo belt=none`
	}
	return `PATH=$PATH:/usr/sbin:/sbin
now=absent
if nft list tables | grep -qx 'table inet ` + nft.Table + `'; then
  now="change=$(nft list table inet ` + nft.Table + ` | sed -n 's/.*comment "breakglass shed change=\([^ "]*\).*/\1/p' | head -n 1)"
fi
if [ "$now" != ` + nodeops.ShellQuote(c.PlannedAt) + ` ]; then echo "stale: $now" >&2; exit 75; fi
nft -f - || exit $?
` + beltScript(c.Belt)
}

// errStale is the exit status applyScript gives a table that changed.
const exitStale = 75

func (k *Nft) applyNode(ctx context.Context, c *NftChange) (NftResult, error) {
	cmd := nodeops.Command{Line: applyScript(c), Stdin: []byte(c.Script)}
	if c.Backend == BackendIptables {
		cmd.Stdin = nil // the rules are in the command
	}
	out, err := k.Runner.Run(ctx, c.Target, cmd)
	var res NftResult
	for _, l := range strings.Split(string(out.Stdout), "\n") {
		if b, ok := strings.CutPrefix(l, "belt="); ok {
			res.Belt = b
		}
	}
	var ee *nodeops.ExitError
	if err != nil && errors.As(err, &ee) && ee.Code == exitStale {
		return res, &nodeops.Error{Node: c.Node, Phase: nodeops.PhaseCommand, Status: nodeops.StatusFailed, Reason: "stale",
			Err:  fmt.Errorf("the table changed since it was planned (planned at %s, %s): nothing was written", c.PlannedAt, strings.TrimSpace(string(out.Stderr))),
			Hint: "someone else changed the shed meanwhile: look with breakglass shed status and plan again"}
	}
	return res, err
}

// ApplyBatch applies one item per node through the fan-out.
func (k *Nft) ApplyBatch(ctx context.Context, p *change.Plan, items []*change.Item, j *journal.Journal, report func(change.Event)) error {
	return applyNodes(ctx, p, items, j, report, nodeBatch[NftResult]{
		kind:   KindNft,
		opts:   k.Options,
		target: func(it *change.Item) nodeops.Target { return it.Payload.(*NftChange).Target },
		apply: func(ctx context.Context, it *change.Item) (NftResult, error) {
			return k.applyNode(ctx, it.Payload.(*NftChange))
		},
		result: func(r NftResult) string {
			if r.Belt == "systemd" {
				return "systemd timer " + beltUnit + " set as a second belt"
			}
			return ""
		},
	})
}

// Apply applies a single item (the engine calls ApplyBatch for this kind).
func (k *Nft) Apply(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	return k.ApplyBatch(ctx, p, []*change.Item{it}, j, func(change.Event) {})
}

// Undo plans putting each node's table back as the change found it: a
// table that was absent is lifted, one that was there is written again
// with the time it had left (a lapsed one is lifted).
func (k *Nft) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	byName := map[string]nodeops.Target{}
	for _, t := range k.Targets {
		byName[t.Name] = t
	}
	intents := map[string]*journal.Record{}
	applied := map[string]bool{}
	var order []string
	for i := range records {
		r := &records[i]
		if r.ID != id || r.Kind != journal.KindNode || r.Details["kind"] != KindNft {
			continue
		}
		if r.Type == journal.TypeIntent {
			if intents[r.Target.Node] == nil {
				order = append(order, r.Target.Node)
			}
			intents[r.Target.Node] = r
		} else {
			applied[r.Target.Node] = r.Status == journal.StatusApplied || r.Status == journal.StatusUnknown
		}
	}
	var targets []nodeops.Target
	for _, n := range order {
		if !applied[n] {
			continue
		}
		t, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("change %s touched %s, which is not among the selected nodes", id, n)
		}
		targets = append(targets, t)
	}
	wasOn := map[string]NftChange{}
	probe := k
	for _, t := range targets {
		var was NftChange
		if err := jsonUnmarshal(intents[t.Name].Before, &was); err != nil {
			return nil, fmt.Errorf("change %s: the journal's record of %s: %w", id, t.Name, err)
		}
		wasOn[t.Name] = was
		if was.Backend == BackendIptables && (k.Firewall == "" || k.Firewall == "auto") {
			// Look where the change wrote, even on a node that has nft too
			// (--firewall iptables).
			kk := *k
			kk.Firewall = BackendIptables
			probe = &kk
		}
	}
	var items []*change.Item
	for _, r := range probe.Probe(ctx, targets) {
		if r.Err != nil {
			return nil, fmt.Errorf("%s: %w", r.Target.Name, r.Err)
		}
		was := wasOn[r.Target.Name]
		now := r.Output.State
		if !force && plannedAt(now) != was.After {
			return nil, change.Refusedf("%s: the table changed since change %s (now %s)\nhint: look with breakglass shed status; pass --force to put back what the change found anyway", r.Target.Name, id, plannedAt(now))
		}
		c := &NftChange{Target: r.Target, Node: r.Target.Name, Backend: r.Output.Backend, Before: now, PlannedAt: plannedAt(now)}
		prev := was.Before
		if !prev.Present || !prev.Active || prev.Remaining < time.Minute {
			if !now.Present {
				continue
			}
			c.Script, c.Command = liftScripts(c.Backend)
			c.After = "absent"
			items = append(items, undoItem(c, id, fmt.Sprintf("%s: delete %s (it was not there before change %s)", r.Target.Name, what(c.Backend), id)))
			continue
		}
		spec := nft.Spec{Port: prev.Port, Mode: prev.Mode, Rate: prev.Rate, Allow: prev.Allow, TTL: prev.Remaining.Round(time.Second), Change: prev.Change}
		show, command, err := loadScripts(c.Backend, spec)
		if err != nil {
			return nil, err
		}
		c.Script, c.Command, c.Spec, c.Belt, c.After = show, command, &spec, spec.TTL, "change="+prev.Change
		items = append(items, undoItem(c, id, fmt.Sprintf("%s: put back the shed of change %s (%s, %s left when %s was planned)", r.Target.Name, prev.Change, modeText(prev.Mode, prev.Rate), spec.TTL, id)))
	}
	return items, nil
}

func undoItem(c *NftChange, undoes, summary string) *change.Item {
	it := c.item(summary)
	it.Undoes = undoes
	return it
}

func jsonUnmarshal(v *journal.Value, into any) error {
	if v == nil {
		return errors.New("no value recorded")
	}
	return json.Unmarshal(v.Bytes, into)
}

// OwnsOp: the undo of a shed is the nft kind's, whatever its records are.
func (k *Nft) OwnsOp(op string) bool {
	return op == OpShedApply || op == OpShedExtend || op == OpShedLift
}

// dryRunChange stands for the change ID in a dry run's nft script:
// change.DryRunID holds characters nft's comment does not take.
const dryRunChange = "dry-run"

func nftChangeID(id string) string {
	if id == change.DryRunID {
		return dryRunChange
	}
	return id
}
