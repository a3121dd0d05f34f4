package main

import (
	"context"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

func init() { register(func(d *Deps) *cobra.Command { return newCmdUndo(d, nil) }) }

type undoOptions struct {
	ID    string
	pods  podsOptions
	Force bool
}

func newCmdUndo(d *Deps, runF func(*undoOptions) error) *cobra.Command {
	o := &undoOptions{}
	cmd := &cobra.Command{
		Use:   "undo CHANGE-ID",
		Short: "Undo a change from the journal: etcd values put back exactly, pod holds lifted",
		Long: `Undo reads the change from the journal and restores, byte for byte, the value
it replaced: it recreates a deleted object, deletes a created one, and puts
back the previous bytes of an updated one. It refuses if the object changed
since the change (a controller updated its status, someone edited it), unless
--force. The undo is itself a journaled compare-and-swap write, and can be
undone in turn.

A "pods hold" change is undone by lifting it (as "breakglass pods hold lift
CHANGE-ID" does, all nodes at once): the node flags say how to reach the
nodes. A "pods stop" change has nothing to put back: kubelet starts stopped
pods again by itself. A "shed" change is undone by putting back, on every
node, the table the change found (see docs/shed.md). An "apiserver tune"
change is undone by putting every node's manifest back, one node at a
time with the same waits (see docs/apiserver.md); the nodes are the
control-plane nodes unless --nodes says otherwise. An "apiserver add" change
is undone by taking that API server away (the manifest removed, then, once
it stopped, the files the add wrote); an "apiserver remove" by putting the
manifest back and waiting until it answers. A "kubelet stop" change
is undone in the reverse order: the kubelets started (each waited for until
it runs and renewed its lease), then the controller-manager put back.

Exit codes: 0 ok, 1 error, 2 usage, 3 some nodes failed, 4 refused, 130
cancelled.`,
		Example: `  breakglass undo 20250301T101500-3fa2c1 --dry-run
  breakglass undo 20250301T101500-3fa2c1 --yes
  breakglass undo 20250301T101500-3fa2c1 --force --journal ./incident.jsonl`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.ID = args[0]
			if err := checkOutput(d, "table", "json", "yaml"); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runUndo(cmd.Context(), d, o)
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "restore even if the object changed since the change")
	addNodeFlags(cmd, &o.pods.nodes)
	addSSHFlags(cmd, &o.pods.ssh)
	cmd.Flags().StringVar(&o.pods.via, "via", "", "for a pods change: how to reach containerd's socket (auto, forward or sudo)")
	addEtcdFlags(cmd, d)
	addJournalFlag(cmd, d)
	return cmd
}

func runUndo(ctx context.Context, d *Deps, o *undoOptions) error {
	recs, err := journal.Read(d.journalPath())
	if err != nil {
		return err
	}
	if found := journal.Find(recs, o.ID); memberChange(found) != nil {
		// An apiserver add or remove: the API server taken away again (and
		// the files the add wrote), or its manifest put back.
		mo := &apiserverMemberOptions{nodes: o.pods.nodes, ssh: o.pods.ssh, node: memberChange(found).Target.Node,
			manifest: memberChange(found).Target.Path, wait: 3 * time.Minute, poll: 2 * time.Second}
		if b := memberChange(found).Details["backup"]; b != "" {
			mo.backupDir = path.Dir(path.Dir(b))
		}
		r, err := newMemberRun(ctx, d, mo)
		if err != nil {
			return err
		}
		return undoOn(ctx, d, r.engine, r.close, recs, o)
	}
	if found := journal.Find(recs, o.ID); manifestChange(found) != nil {
		// An apiserver tune (or its undo): every node's manifest put back,
		// one node at a time, from the path and backups it recorded.
		first := manifestChange(found)
		backupDir := ""
		if b := first.Details["backup"]; b != "" {
			backupDir = path.Dir(path.Dir(b))
		}
		r, err := newManifestRun(ctx, d, &apiserverOptions{nodes: o.pods.nodes, ssh: o.pods.ssh, manifest: first.Target.Path}, backupDir)
		if err != nil {
			return err
		}
		return undoOn(ctx, d, r.engine, r.close, recs, o)
	}
	if found := journal.Find(recs, o.ID); serviceChange(found) != nil {
		// A kubelet stop: the kubelets started again (each waited for until
		// it renewed its lease), then the controller-manager put back.
		so := &serviceOptions{nodes: o.pods.nodes, ssh: o.pods.ssh, cpNodes: []string{steps.ShedNodes}, wait: 2 * time.Minute}
		if b := serviceChange(found).Details["backup"]; b != "" {
			so.backupDir = path.Dir(path.Dir(b))
		}
		r, err := newServiceRun(ctx, d, so)
		if err != nil {
			return err
		}
		return undoOn(ctx, d, r.engine, r.close, recs, o)
	}
	if found := journal.Find(recs, o.ID); len(found) > 0 && strings.HasPrefix(found[0].Op, "shed-") {
		r, err := newShedRun(ctx, d, &shedOptions{nodes: o.pods.nodes, ssh: o.pods.ssh})
		if err != nil {
			return err
		}
		return undoOn(ctx, d, r.engine, r.close, recs, o)
	}
	found := journal.Find(recs, o.ID)
	if len(found) > 0 && found[0].Op == steps.OpExec {
		_, err := (&steps.Exec{}).Undo(ctx, recs, o.ID, o.Force)
		return err
	}
	if len(found) > 0 && strings.HasPrefix(found[0].Op, "pods-") {
		if found[0].Op == steps.OpPodsStop {
			fmt.Fprintf(d.ErrOut, "change %s stopped pods: nothing to put back (kubelet starts stopped pods again by itself)\n", o.ID)
			return nil
		}
		// A change on nodes: the pods kind undoes it (and the owners it
		// changed in etcd, when there were any).
		r, err := newPodsRun(ctx, d, &o.pods, hasEtcdRecords(found))
		if err != nil {
			return err
		}
		defer r.Close()
		e, stream := r.engine(ctx)
		defer stream.Close()
		_, err = e.Undo(ctx, recs, o.ID, o.Force)
		return err
	}
	e, k, stream, err := d.changeEngine(ctx)
	if err != nil {
		return err
	}
	defer stream.Close()
	// A flow-control shed writes two keys, and the API server updates its
	// FlowSchema's status: its own kind undoes it as a whole.
	e.Register(&steps.FlowControl{Etcd: k})
	_, err = e.Undo(ctx, recs, o.ID, o.Force)
	return err
}

// manifestChange returns the first record of recs that is a static-pod
// manifest change on a node, or nil.
func manifestChange(recs []journal.Record) *journal.Record {
	for i := range recs {
		if recs[i].Kind == journal.KindNode && recs[i].Details["kind"] == steps.KindManifest {
			return &recs[i]
		}
	}
	return nil
}

// undoOn undoes the change with the engine of a node command's run, then
// closes the run.
func undoOn(ctx context.Context, d *Deps, engine func(*Deps) (*change.Engine, *change.Stream), closeRun func() error, recs []journal.Record, o *undoOptions) error {
	defer closeRun()
	e, stream := engine(d)
	defer stream.Close()
	_, err := e.Undo(ctx, recs, o.ID, o.Force)
	return err
}

// memberChange returns the first record of recs that added or removed an
// API server, or nil.
func memberChange(recs []journal.Record) *journal.Record {
	for i := range recs {
		if recs[i].Kind == journal.KindNode && recs[i].Details["kind"] == steps.KindAPIServerMember {
			return &recs[i]
		}
	}
	return nil
}

// serviceChange returns the first record of recs that stopped or started
// a node component (kubelet stop and its undo), or nil.
func serviceChange(recs []journal.Record) *journal.Record {
	for i := range recs {
		if recs[i].Kind == journal.KindNode && recs[i].Details["kind"] == steps.KindService {
			return &recs[i]
		}
	}
	return nil
}

func hasEtcdRecords(recs []journal.Record) bool {
	for _, r := range recs {
		if r.Kind == journal.KindEtcd {
			return true
		}
	}
	return false
}
