package steps

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/nft"
	"github.com/breakglass/breakglass/recover/change"
)

// A dry run plans with change.DryRunID, which nft refuses in its comment:
// the plan must still be made (shed apply --dry-run, a runbook's dry run).
func TestPlanShedApplyDryRun(t *testing.T) {
	k := &Nft{Runner: &fakeNodes{probe: map[string]string{"cp-1": "ssh=10.77.0.1 50000 10.77.0.10 22\nformat=absent\n"}}}
	p, err := PlanShedApply(k, []nodeops.Target{{Name: "cp-1"}}, ShedSpec{Port: 6443, Mode: nft.ModeDrop, TTL: 15 * time.Minute})(context.Background(), change.DryRunID)
	if err != nil {
		t.Fatalf("dry-run plan: %v", err)
	}
	if len(p.Items) != 1 || !strings.Contains(p.Items[0].Payload.(*NftChange).Script, "change="+dryRunChange) {
		t.Fatalf("items %+v", p.Items)
	}
}
