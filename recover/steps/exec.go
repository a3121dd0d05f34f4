package steps

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/recover/journal"
)

// OpExec is the journal op of a command run on nodes.
const OpExec = "exec"

// ExecAudit is the journal's record of a command run on nodes, for the
// incident review: what ran, where, as whom, and how it ended on each node.
// An exec cannot be undone; its records say what to look at.
type ExecAudit struct {
	j       *journal.Journal
	id      string
	command string
}

// StartExec journals, before anything runs, the command and the nodes it is
// about to run on. Nothing may run if it fails.
func StartExec(j *journal.Journal, id, command string, nodes []nodeops.Target) (*ExecAudit, error) {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	err := j.Append(&journal.Record{
		Type: journal.TypeIntent, ID: id, Kind: journal.KindNode, Op: OpExec, Status: journal.StatusPending,
		Summary: fmt.Sprintf("run %q on %d nodes", command, len(nodes)),
		Details: map[string]string{"command": command, "nodes": strings.Join(names, ",")},
	})
	if err != nil {
		return nil, fmt.Errorf("journal: %w\nhint: nothing was run; fix the journal (--journal FILE) and retry", err)
	}
	return &ExecAudit{j: j, id: id, command: command}, nil
}

// Finish journals every node's outcome (one record per node, in one write
// and one sync): applied when the command exited 0, failed otherwise, with
// the exit code, status and reason.
func (a *ExecAudit) Finish(results []fanout.Result) error {
	recs := make([]*journal.Record, 0, len(results))
	for _, r := range results {
		status := journal.StatusApplied
		if r.Status != nodeops.StatusOK {
			status = journal.StatusFailed
		}
		if r.Status == nodeops.StatusCancelled && !r.Start.IsZero() {
			// Cancelled while running: it may or may not have done its work.
			status = journal.StatusUnknown
		}
		rec := &journal.Record{
			Type: journal.TypeOutcome, ID: a.id, Kind: journal.KindNode, Op: OpExec, Status: status,
			Target:  journal.Target{Node: r.Target.Name},
			Summary: fmt.Sprintf("%q on %s: %s", a.command, r.Target.Name, r.Status),
			Details: map[string]string{"address": r.Target.Address, "exitCode": strconv.Itoa(r.ExitCode), "status": string(r.Status)},
		}
		if r.Reason != "" {
			rec.Details["reason"] = r.Reason
		}
		if r.Err != nil {
			rec.Error = r.Err.Error()
		}
		recs = append(recs, rec)
	}
	return a.j.AppendAll(recs)
}
