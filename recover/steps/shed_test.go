package steps

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/nft"
	"github.com/breakglass/breakglass/recover/change"
)

// fakeNodes answers the probe with a canned table per node.
type fakeNodes struct {
	probe map[string]string
}

func (f *fakeNodes) Run(ctx context.Context, t nodeops.Target, c nodeops.Command) (nodeops.Output, error) {
	out, ok := f.probe[t.Name]
	if !ok {
		return nodeops.Output{}, &nodeops.Error{Node: t.Name, Status: nodeops.StatusUnreachable, Err: errors.New("no route")}
	}
	return nodeops.Output{Stdout: []byte(out)}, nil
}

func TestParseProbe(t *testing.T) {
	js, err := os.ReadFile("../../nodeops/nft/testdata/drop.json")
	if err != nil {
		t.Skipf("no recorded nft output: %v", err)
	}
	nt, err := parseProbe("cp-1", []byte("ssh=10.77.0.1 50000 10.77.0.10 22\nformat=json\n"+string(js)))
	if err != nil || nt.Operator != netip.MustParseAddr("10.77.0.1") || !nt.State.Present || nt.State.Mode != nft.ModeDrop {
		t.Fatalf("%+v %v", nt, err)
	}
	nt, err = parseProbe("cp-1", []byte("ssh=10.77.0.1 50000 10.77.0.10 22\nformat=absent\n"))
	if err != nil || nt.State.Present {
		t.Fatalf("absent: %+v %v", nt, err)
	}
	if nt, _ := parseProbe("cp-1", []byte("ssh=\nnft=missing\n")); !nt.NoNft {
		t.Fatal("nft missing not seen")
	}
	if _, err := parseProbe("cp-1", []byte("ssh=\nsomething else\n")); err == nil {
		t.Fatal("garbage accepted")
	}
}

// TestPlanShedApply: the operator's address as each node sees it is added;
// a plan that leaves it out is refused; an unreachable node is skipped.
func TestPlanShedApply(t *testing.T) {
	k := &Nft{Runner: &fakeNodes{probe: map[string]string{
		"cp-1": "ssh=10.77.0.1 50000 10.77.0.10 22\nformat=absent\n",
		"cp-2": "ssh=10.77.0.1 50001 10.77.0.11 22\nformat=absent\n",
	}}}
	targets := []nodeops.Target{{Name: "cp-1"}, {Name: "cp-2"}, {Name: "cp-3"}}
	spec := ShedSpec{Port: 6443, Mode: nft.ModeReject, TTL: 15 * time.Minute, Defaults: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	p, err := PlanShedApply(k, targets, spec)(context.Background(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Items) != 2 || len(p.Skipped) != 1 || p.Skipped[0].Target != "cp-3" {
		t.Fatalf("items %d, skipped %+v", len(p.Items), p.Skipped)
	}
	script := p.Items[0].Payload.(*NftChange).Script
	if !strings.Contains(script, "10.77.0.1") || !strings.Contains(script, "reject") || !strings.Contains(script, "change=c1") {
		t.Fatalf("script:\n%s", script)
	}
	spec.NoOperator = true
	_, err = PlanShedApply(k, targets, spec)(context.Background(), "c2")
	var refused *change.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "cut you off") {
		t.Fatalf("without the operator: %v, want a refusal", err)
	}
	spec.Allow = []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")}
	if _, err := PlanShedApply(k, targets, spec)(context.Background(), "c3"); err != nil {
		t.Fatalf("an --allow that covers the operator: %v", err)
	}
}

// TestApplyScriptChecksPlannedState: the node refuses to load when the
// table is not as planned, before loading.
func TestApplyScriptChecksPlannedState(t *testing.T) {
	s := applyScript(&NftChange{PlannedAt: "absent", Belt: 15 * time.Minute})
	check := strings.Index(s, `!= 'absent'`)
	load := strings.Index(s, "nft -f -")
	if check < 0 || load < 0 || check > load || !strings.Contains(s, "exit 75") {
		t.Fatalf("apply script does not check before it loads:\n%s", s)
	}
	if b := beltScript(15 * time.Minute); !strings.Contains(b, "--on-active=960s") || !strings.Contains(b, "nft delete table inet breakglass") {
		t.Fatalf("belt: %s", b)
	}
	if b := beltScript(0); strings.Contains(b, "systemd-run --quiet") || !strings.Contains(b, "systemctl stop") {
		t.Fatalf("a lift's belt sets a timer: %s", b)
	}
}
