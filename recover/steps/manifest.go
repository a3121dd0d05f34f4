package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/apiprobe"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// OpAPIServerTune is the journal op of an edit of the API server's
// static-pod manifest.
const OpAPIServerTune = "apiserver-tune"

// KindManifest is the change kind of a static-pod manifest on a node.
const KindManifest = "manifest"

// APIServerWatch sees a node's API server from the node itself: which run
// of it is up, and whether it answers. The rollout decides from these
// when kubelet has restarted the static pod. NodeAPIServer is the real
// one; the lab may supply its own (a containerd sandbox check).
type APIServerWatch interface {
	// Instance is the run of the API server on the node now (ID "" when
	// none runs). Its Args, when set, are compared with the manifest's
	// command line; its PodUID, when set, must change with the spec.
	Instance(ctx context.Context, t nodeops.Target) (apiprobe.Instance, error)
	// Live is what the node's API server answers on /livez and /readyz.
	Live(ctx context.Context, t nodeops.Target) (apiprobe.Liveness, error)
}

// NodeAPIServer is the APIServerWatch of a real node: the newest
// kube-apiserver process in /proc (pid, start time, command line, pod uid
// from its cgroup), and /livez and /readyz with the node's admin
// kubeconfig, both over SSH.
type NodeAPIServer struct {
	Runner nodeops.Runner
	Probe  apiprobe.Options
}

// Instance implements APIServerWatch.
func (w *NodeAPIServer) Instance(ctx context.Context, t nodeops.Target) (apiprobe.Instance, error) {
	return apiprobe.Process(ctx, w.Runner, t)
}

// Live implements APIServerWatch.
func (w *NodeAPIServer) Live(ctx context.Context, t nodeops.Target) (apiprobe.Liveness, error) {
	return apiprobe.Live(ctx, w.Runner, t, w.Probe)
}

// CPUStall implements StallWatch.
func (w *NodeAPIServer) CPUStall(ctx context.Context, t nodeops.Target) (apiprobe.CPUStall, error) {
	return apiprobe.Stall(ctx, w.Runner, t)
}

// StallWatch is an APIServerWatch that also measures how starved of CPU
// a node's API server is now (apiprobe.CPUStall); a tune refuses to
// restart one that is (StarvedPercent).
type StallWatch interface {
	CPUStall(ctx context.Context, t nodeops.Target) (apiprobe.CPUStall, error)
}

// StarvedPercent is the CPU stall from which a node's API server counts
// as starved: its threads that had work all waited for a CPU at least
// this share of the time measured. Under the lab's overload incident it
// was 85 to 99% at every cap searched (200m down), and 1 to 2% on the
// healthy lab.
const StarvedPercent = 50

// Manifest is the change kind that rewrites the API server's static-pod
// manifest on control-plane nodes, one node at a time: write, wait until
// that node's kubelet restarted the API server from the new manifest and
// it answers /livez and /readyz on the node, and only then the next node.
// A node that does not come back in time is rolled back from its backup
// and the rollout stops there.
type Manifest struct {
	Runner nodeops.Runner
	Watch  APIServerWatch
	// Targets are the nodes by name, for undo.
	Targets []nodeops.Target
	// Path is the manifest (manifest.DefaultPath); BackupDir where the
	// replaced bytes go, one directory per change (default
	// manifest.DefaultBackupDir).
	Path, BackupDir string
	// Wait bounds how long one node may take to come back (default 3m);
	// Poll is how often it is looked at meanwhile (default 2s).
	Wait, Poll time.Duration
	// CallTimeout bounds each SSH command (default 30s).
	CallTimeout time.Duration
	// Concurrency of the plan's reads (the writes are one at a time).
	Concurrency int
	// Force restarts a node's API server that does not answer /livez and
	// /readyz now; without it a tune is refused there (see PlanTune).
	Force bool
}

// Name implements change.Kind.
func (k *Manifest) Name() string { return KindManifest }

// OwnsOp implements change.ChangeOwner: a tune's records are this kind's,
// and so are an undo's in an engine that has only this kind (the
// commands register it in an engine of its own).
func (k *Manifest) OwnsOp(op string) bool { return op == OpAPIServerTune || op == "undo" }

func (k *Manifest) path() string {
	if k.Path == "" {
		return manifest.DefaultPath
	}
	return k.Path
}

func (k *Manifest) backupDir() string {
	if k.BackupDir == "" {
		return manifest.DefaultBackupDir(k.path())
	}
	return k.BackupDir
}

func (k *Manifest) wait() time.Duration {
	if k.Wait <= 0 {
		return 3 * time.Minute
	}
	return k.Wait
}

func (k *Manifest) poll() time.Duration {
	if k.Poll <= 0 {
		return 2 * time.Second
	}
	return k.Poll
}

func (k *Manifest) call(ctx context.Context) (context.Context, context.CancelFunc) {
	d := k.CallTimeout
	if d <= 0 {
		d = 30 * time.Second
	}
	return context.WithTimeout(ctx, d)
}

// Check refuses paths the kind cannot work with safely.
func (k *Manifest) Check() error {
	if err := manifest.CheckPath(k.path()); err != nil {
		return err
	}
	return manifest.CheckBackupDir(k.backupDir(), k.path())
}

// ManifestChange is the payload of a manifest item: the exact bytes
// before (planned against: their hash) and after, for one node.
type ManifestChange struct {
	Target     nodeops.Target `json:"-"`
	Node       string         `json:"node"`
	Path       string         `json:"path"`
	Before     []byte         `json:"before"`
	BeforeHash string         `json:"beforeHash"`
	After      []byte         `json:"after"`
	AfterHash  string         `json:"afterHash"`
	// Mode, UID and GID are the manifest's (kept).
	Mode string `json:"mode"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	// Dir is what the manifests directory held when planned: afterwards
	// it must hold no other name.
	Dir []string `json:"dir"`
	// Backup is where the apply copies Before to (set when it starts,
	// before it is journaled).
	Backup string `json:"backup,omitempty"`
	// Source is, for an undo, the backup the change undone made: After
	// is copied from it when it still has After's hash.
	Source  string   `json:"source,omitempty"`
	Changes []string `json:"changes,omitempty"`
}

// ManifestResult is what applying did on one node.
type ManifestResult struct {
	Backup string `json:"backup,omitempty"`
	// Hash is the manifest's after the item (the new one, or the old one
	// again when rolled back).
	Hash string `json:"hash,omitempty"`
	// Instance is the API server run that came up (apiprobe.Instance.ID).
	Instance string `json:"instance,omitempty"`
	// RolledBack: the node did not come back and its manifest was put
	// back; Recovered: the API server answered again afterwards.
	RolledBack bool   `json:"rolledBack,omitempty"`
	Recovered  bool   `json:"recovered,omitempty"`
	Took       string `json:"took,omitempty"`
}

// PlanTune plans the edits on every target: one item per node whose
// manifest changes, with its diff. A node that cannot be read or whose
// manifest cannot be edited is left out (exit 3), the others go ahead.
func PlanTune(k *Manifest, targets []nodeops.Target, e manifest.Edits) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		if err := k.Check(); err != nil {
			return nil, err
		}
		p := &change.Plan{ID: id, Op: OpAPIServerTune,
			Title: fmt.Sprintf("rewrite the API server manifest on %d node%s, one at a time", len(targets), plural(len(targets)))}
		reads := k.read(ctx, targets)
		for _, r := range reads {
			if r.Err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: r.Err.Error()})
				continue
			}
			f := r.Output
			ed, err := manifest.PlanEdit(f.Bytes, e)
			if err != nil {
				p.Skipped = append(p.Skipped, change.Skipped{Target: r.Target.Name, Reason: fmt.Sprintf("%s: %v", f.Path, err)})
				continue
			}
			c := &ManifestChange{Target: r.Target, Node: r.Target.Name, Path: f.Path, Before: f.Bytes, BeforeHash: f.Hash,
				Mode: f.Mode, UID: f.UID, GID: f.GID, Dir: f.Dir}
			if ed.After == nil {
				p.Unchanged = append(p.Unchanged, &change.Item{Kind: KindManifest, Target: journal.Target{Node: c.Node, Path: c.Path},
					Summary: r.Target.Name + ": kube-apiserver manifest already as asked", PlannedAt: "sha256:" + f.Hash})
				continue
			}
			c.After, c.AfterHash, c.Changes = ed.After, manifest.Hash(ed.After), ed.Changes
			if ed.Reformatted {
				p.Notes = append(p.Notes, r.Target.Name+": the manifest is not laid out as kubeadm writes it: it is written back in kubeadm's layout (comments are dropped), as the diff shows")
			}
			p.Items = append(p.Items, c.item(fmt.Sprintf("%s: kube-apiserver %s", c.Node, strings.Join(c.Changes, ", ")), ""))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if len(p.Items)+len(p.Unchanged) == 0 && len(p.Skipped) > 0 {
			return nil, fmt.Errorf("no node could be planned: %s: %s", p.Skipped[0].Target, p.Skipped[0].Reason)
		}
		if len(p.Items) > 0 {
			p.Notes = append(p.Notes,
				fmt.Sprintf("one node at a time: each node's API server restarts; the next node starts only when kubelet has restarted it from the new manifest and it answers /livez and /readyz on the node (up to %s); a node that does not is rolled back and the rollout stops", k.wait()),
				fmt.Sprintf("the manifest each node had is backed up to %s on the node", manifest.BackupPath(k.backupDir(), id, k.path())))
			if len(targets) == 1 {
				p.Notes = append(p.Notes, "a single control-plane node: the API is down while its API server restarts")
			}
			if err := k.checkLive(ctx, p); err != nil {
				return nil, err
			}
		}
		return p, nil
	}
}

// checkLive refuses a tune that would restart an API server that does not
// answer /livez and /readyz now, or is starved of CPU (StarvedPercent,
// when the watch can tell), unless Force: one saturated by its load is
// restarted into that same load, and may never come back. In the lab,
// under the overload incident (40m of CPU), the restarted kube-apiserver
// exited when its post-start hook start-service-ip-repair-controllers
// timed out, and kubelet restarted it into the load again and again. The
// probes alone do not tell: they are exempt from API Priority and
// Fairness and cheap, and the saturated API server answered them in time
// now and then (five times in a row in one CI run). With Force, the plan
// says so and goes on.
func (k *Manifest) checkLive(ctx context.Context, p *change.Plan) error {
	var ts []nodeops.Target
	for _, it := range p.Items {
		ts = append(ts, it.Payload.(*ManifestChange).Target)
	}
	down, unknown, err := k.Unrestartable(ctx, ts)
	if err != nil {
		return err
	}
	if len(unknown) > 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("how starved of CPU the API server is could not be measured on %s: only /livez and /readyz were checked there", strings.Join(unknown, ", ")))
	}
	if len(down) == 0 {
		return nil
	}
	if k.Force {
		p.Notes = append(p.Notes, fmt.Sprintf("the API server does not answer or is starved of CPU now on %s: restarted anyway (--force); if the load that saturates it is still there, it may not come back", strings.Join(down, ", ")))
		return nil
	}
	return change.Refusedf("the API server does not answer or is starved of CPU now on %s: a tune restarts it, and an API server saturated by its load is restarted into that same load, where it may never come back (kube-apiserver exits when a post-start hook times out, and kubelet starts it into the load again)\nhint: take the load off first (breakglass shed flowschema, breakglass pods hold) and tune once it answers and has CPU to spare; pass --force to restart it anyway (an API server down for another reason, which this tune fixes)", strings.Join(down, ", "))
}

// Unrestartable looks at the API server of each of ts on the node, its
// /livez and /readyz and (when the watch can tell) its CPU stall, at
// once: down names each node whose API server must not be restarted now,
// "NODE (why)"; unknown each node whose stall could not be measured. A
// tune is refused on the nodes in down (checkLive); the runbook check
// apiserver-restartable waits until there are none.
func (k *Manifest) Unrestartable(ctx context.Context, ts []nodeops.Target) (down, unknown []string, err error) {
	type health struct {
		live     apiprobe.Liveness
		stall    apiprobe.CPUStall
		stallErr error
		measured bool
	}
	sw, _ := k.Watch.(StallWatch)
	opts := fanout.OptionsOf[health]{Concurrency: max(k.Concurrency, 1), Timeout: k.CallTimeout}
	for _, r := range fanout.RunOf(ctx, ts, opts, func(ctx context.Context, t nodeops.Target) (health, error) {
		var h health
		done := make(chan struct{})
		if sw != nil {
			h.measured = true
			go func() {
				defer close(done)
				h.stall, h.stallErr = sw.CPUStall(ctx, t)
			}()
		} else {
			close(done)
		}
		var err error
		h.live, err = k.Watch.Live(ctx, t)
		<-done
		return h, err
	}) {
		h := r.Output
		var why []string
		switch {
		case r.Err != nil:
			why = append(why, r.Err.Error())
		case !h.live.OK():
			why = append(why, "does not answer: "+h.live.String())
		}
		switch {
		case !h.measured:
		case h.stallErr != nil:
			unknown = append(unknown, fmt.Sprintf("%s (%v)", r.Target.Name, h.stallErr))
		case !h.stall.Known:
			unknown = append(unknown, fmt.Sprintf("%s (%s)", r.Target.Name, h.stall.Why))
		case h.stall.Percent >= StarvedPercent:
			why = append(why, fmt.Sprintf("starved of CPU: %s (cpu.pressure; starved from %d%%)", h.stall, StarvedPercent))
		}
		if len(why) > 0 {
			down = append(down, fmt.Sprintf("%s (%s)", r.Target.Name, strings.Join(why, "; ")))
		}
	}
	return down, unknown, ctx.Err()
}

func (k *Manifest) read(ctx context.Context, targets []nodeops.Target) []fanout.ResultOf[*manifest.File] {
	opts := fanout.OptionsOf[*manifest.File]{Concurrency: max(k.Concurrency, 1), Timeout: k.CallTimeout}
	return fanout.RunOf(ctx, targets, opts, func(ctx context.Context, t nodeops.Target) (*manifest.File, error) {
		return manifest.Read(ctx, k.Runner, t, k.path())
	})
}

func (c *ManifestChange) item(summary, undoes string) *change.Item {
	return &change.Item{Kind: KindManifest, Target: journal.Target{Node: c.Node, Path: c.Path}, Summary: summary,
		Diff: manifest.Diff(c.Node, c.Path, c.Before, c.After), PlannedAt: "sha256:" + c.BeforeHash, Undoes: undoes, Payload: c}
}

// Apply implements change.Kind (the engine calls ApplyBatch).
func (k *Manifest) Apply(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	return k.ApplyBatch(ctx, p, []*change.Item{it}, j, func(change.Event) {})
}

// ApplyBatch implements change.BatchKind, one node at a time: each node's
// intent is journaled before its manifest is written and its outcome
// once it came back (or was rolled back). The first node that fails ends
// the rollout: the nodes after it are not touched.
func (k *Manifest) ApplyBatch(ctx context.Context, p *change.Plan, items []*change.Item, j *journal.Journal, report func(change.Event)) error {
	if err := k.Check(); err != nil {
		return err
	}
	applied := 0
	var stopped error
	for i, it := range items {
		c, ok := it.Payload.(*ManifestChange)
		if !ok {
			return fmt.Errorf("internal: manifest item without a manifest change")
		}
		if stopped == nil && ctx.Err() != nil {
			stopped = ctx.Err()
		}
		if stopped != nil {
			err := fmt.Errorf("not started: %s", notStarted(stopped))
			report(change.ItemFailed{Plan: p, Item: it, Err: err})
			continue
		}
		report(change.ItemStarted{Plan: p, Item: it})
		res, err := k.applyNode(ctx, p, it, c, j)
		if err == nil {
			applied++
			it.Result = fmt.Sprintf("restarted and answering /livez and /readyz after %s; backup %s", res.Took, res.Backup)
			report(change.ItemApplied{Plan: p, Item: it})
		} else {
			report(change.ItemFailed{Plan: p, Item: it, Err: err})
			stopped = err
		}
		report(change.Progress{Plan: p, Done: i + 1, Total: len(items)})
	}
	if stopped == nil {
		return nil
	}
	if errors.Is(stopped, context.Canceled) || ctx.Err() != nil {
		return ctx.Err()
	}
	var stale *manifest.StaleError
	if errors.As(stopped, &stale) && applied == 0 {
		return &change.RefusedError{Err: fmt.Errorf("%w\nhint: someone changed the manifest meanwhile: look at it, then plan again", stale)}
	}
	return &change.PartialError{What: p.Op, Failed: len(items) - applied, Total: len(items)}
}

func notStarted(cause error) string {
	if errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return cause.Error()
	}
	return "the rollout stopped at an earlier node"
}

// applyNode writes one node's manifest, waits for its API server, and
// rolls it back when it does not come back.
func (k *Manifest) applyNode(ctx context.Context, p *change.Plan, it *change.Item, c *ManifestChange, j *journal.Journal) (*ManifestResult, error) {
	start := time.Now()
	cctx, cancel := k.call(ctx)
	mark, err := k.Watch.Instance(cctx, c.Target)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("before writing: look at the API server process: %w", err)
	}
	c.Backup = manifest.BackupPath(k.backupDir(), p.ID, c.Path)
	if err := k.journal(j, p, it, c, journal.TypeIntent, journal.StatusPending, nil, nil); err != nil {
		return nil, fmt.Errorf("journal: %w\nhint: nothing was changed on %s; fix the journal (--journal FILE) and retry", err, c.Node)
	}
	res := &ManifestResult{}
	w := manifest.Write{ID: p.ID, Path: c.Path, Expect: c.BeforeHash, Bytes: c.After, Mode: c.Mode, UID: c.UID, GID: c.GID,
		Backup: c.Backup, Source: c.Source, Keep: c.Dir}
	cctx, cancel = k.call(ctx)
	wr, err := w.Run(cctx, k.Runner, c.Target)
	cancel()
	var stale *manifest.StaleError
	var stray *manifest.StrayError
	switch {
	case errors.As(err, &stale):
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusFailed, res, err)
		return nil, err
	case errors.As(err, &stray):
		// Written, but the directory holds a name it should not: that is
		// not for breakglass to delete. Roll back, and say so.
		res.Backup = wr.Backup
		return res, k.rollback(ctx, p, it, c, j, res, mark, err)
	case err != nil:
		// The script stopped somewhere: the journal says unknown, and
		// undo compares the hash.
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusUnknown, res, err)
		return nil, err
	}
	res.Backup, res.Hash = wr.Backup, c.AfterHash
	inst, err := k.waitFor(ctx, c.Target, mark, false, manifest.ArgvOf(c.After))
	res.Took = time.Since(start).Round(time.Second).String()
	if err == nil {
		res.Instance = inst.ID
		if jerr := k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusApplied, res, nil); jerr != nil {
			return res, fmt.Errorf("journal: %s was changed but its outcome was not recorded: %w", c.Node, jerr)
		}
		return res, nil
	}
	if ctx.Err() != nil {
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusUnknown, res, ctx.Err())
		return res, fmt.Errorf("cancelled while waiting for the API server: the new manifest is in place (undo: breakglass undo %s): %w", p.ID, ctx.Err())
	}
	return res, k.rollback(ctx, p, it, c, j, res, mark, err)
}

// rollback puts the node's manifest back (from the backup when it has the
// bytes, else the journal's), waits for the API server again, and
// journals the node as failed.
func (k *Manifest) rollback(ctx context.Context, p *change.Plan, it *change.Item, c *ManifestChange, j *journal.Journal, res *ManifestResult, mark apiprobe.Instance, cause error) error {
	cctx, cancel := k.call(ctx)
	cur, ierr := k.Watch.Instance(cctx, c.Target)
	cancel()
	w := manifest.Write{ID: p.ID + "-rollback", Path: c.Path, Expect: c.AfterHash, Bytes: c.Before, Mode: c.Mode, UID: c.UID, GID: c.GID,
		Source: c.Backup, Keep: c.Dir}
	cctx, cancel = k.call(ctx)
	_, werr := w.Run(cctx, k.Runner, c.Target)
	cancel()
	var stray *manifest.StrayError
	if errors.As(werr, &stray) {
		// Written; the stray name is still there, and cause says so.
		werr = nil
	}
	if werr != nil {
		k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusUnknown, res, fmt.Errorf("%v; rolling back failed: %w", cause, werr))
		return fmt.Errorf("%v\nrolling back failed: %w\nhint: the backup is %s on %s: put it back by hand", cause, werr, c.Backup, c.Node)
	}
	res.RolledBack, res.Hash = true, c.BeforeHash
	// When kubelet never restarted the API server, the run marked before
	// the write still runs the old manifest: that one counts.
	same := ierr == nil && cur.ID != "" && cur.ID == mark.ID
	if ierr != nil || same {
		cur = mark
	}
	_, err := k.waitFor(ctx, c.Target, cur, same, manifest.ArgvOf(c.Before))
	res.Recovered = err == nil
	k.journal(j, p, it, c, journal.TypeOutcome, journal.StatusFailed, res, cause)
	if err != nil {
		return fmt.Errorf("%v; rolled back, but the API server did not come back either: %v\nhint: look at the node (crictl ps -a, kubelet's log); the manifest has its old bytes again", cause, err)
	}
	return fmt.Errorf("%v; rolled back: the API server answers again with the old manifest", cause)
}

// waitFor waits until the node runs the API server from the manifest
// whose command line is want (nil: not comparable), in a run other than
// mark (or mark itself when sameOK), and it answers /livez and /readyz.
func (k *Manifest) waitFor(ctx context.Context, t nodeops.Target, mark apiprobe.Instance, sameOK bool, want []string) (apiprobe.Instance, error) {
	deadline := time.Now().Add(k.wait())
	last := "nothing seen yet"
	for {
		cctx, cancel := k.call(ctx)
		inst, err := k.Watch.Instance(cctx, t)
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case inst.ID == "":
			last = "no kube-apiserver process"
		case !sameOK && inst.ID == mark.ID:
			last = "kubelet has not restarted the API server yet"
		case !sameOK && mark.PodUID != "" && inst.PodUID == mark.PodUID:
			last = "the API server runs in the same pod as before (kubelet has not picked up the manifest)"
		case want != nil && inst.Args != nil && !slices.Equal(inst.Args, want):
			last = "the API server runs with another command line than the manifest's"
		default:
			cctx, cancel := k.call(ctx)
			l, err := k.Watch.Live(cctx, t)
			cancel()
			if err == nil && l.OK() {
				return inst, nil
			}
			if err != nil {
				last = "restarted; " + err.Error()
			} else {
				last = "restarted; " + l.String()
			}
		}
		if time.Now().After(deadline) {
			return apiprobe.Instance{}, fmt.Errorf("%s did not come back within %s: %s", t.Name, k.wait(), last)
		}
		select {
		case <-ctx.Done():
			return apiprobe.Instance{}, ctx.Err()
		case <-time.After(k.poll()):
		}
	}
}

func (k *Manifest) journal(j *journal.Journal, p *change.Plan, it *change.Item, c *ManifestChange, typ, status string, res *ManifestResult, err error) error {
	r := &journal.Record{Type: typ, ID: p.ID, Kind: journal.KindNode, Op: p.Op, Attempt: it.Attempt, Target: it.Target,
		Summary: it.Summary, Undoes: it.Undoes, Status: status,
		Details: map[string]string{"kind": KindManifest, "backup": c.Backup, "beforeHash": c.BeforeHash, "afterHash": c.AfterHash}}
	if typ == journal.TypeIntent {
		b, jerr := json.Marshal(c)
		if jerr != nil {
			return jerr
		}
		r.Before = &journal.Value{Bytes: b}
	}
	if res != nil {
		b, _ := json.Marshal(res)
		r.After = &journal.Value{Bytes: b}
		if res.RolledBack {
			r.Details["rolledBack"] = "true"
		}
	}
	if err != nil {
		r.Error = err.Error()
	}
	return j.Append(r)
}

// Undo implements change.Kind: every node the change wrote (or may have
// written: an intent without an outcome is a crash in the middle) gets
// its old manifest back, one node at a time with the same waits. A node
// that has the old bytes already (rolled back, never written) is left
// alone; one whose manifest changed since is refused unless force.
func (k *Manifest) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	byName := map[string]nodeops.Target{}
	for _, t := range k.Targets {
		byName[t.Name] = t
	}
	var order []string
	was := map[string]*ManifestChange{}
	for i := range records {
		r := &records[i]
		if r.ID != id || r.Kind != journal.KindNode || r.Details["kind"] != KindManifest || r.Type != journal.TypeIntent {
			continue
		}
		if was[r.Target.Node] != nil {
			continue
		}
		var c ManifestChange
		if err := jsonUnmarshal(r.Before, &c); err != nil {
			return nil, fmt.Errorf("change %s: the journal's record of %s: %w", id, r.Target.Node, err)
		}
		was[r.Target.Node] = &c
		order = append(order, r.Target.Node)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("change %s: no manifest was written by it", id)
	}
	var targets []nodeops.Target
	for _, n := range order {
		t, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("change %s touched %s, which is not among the selected nodes\nhint: select it with --nodes", id, n)
		}
		targets = append(targets, t)
	}
	var items []*change.Item
	for _, r := range k.read(ctx, targets) {
		if r.Err != nil {
			return nil, r.Err
		}
		c, f := was[r.Target.Name], r.Output
		if f.Path != c.Path {
			return nil, fmt.Errorf("change %s wrote %s on %s, not %s\nhint: pass --manifest %s", id, c.Path, r.Target.Name, f.Path, c.Path)
		}
		switch {
		case f.Hash == c.BeforeHash:
			continue // as the change found it
		case f.Hash != c.AfterHash && !force:
			return nil, change.Refusedf("%s: %s changed since change %s (sha256 %.12s, the change wrote %.12s)\nhint: look at it; pass --force to put back what the change found anyway", r.Target.Name, c.Path, id, f.Hash, c.AfterHash)
		}
		u := &ManifestChange{Target: r.Target, Node: r.Target.Name, Path: c.Path, Before: f.Bytes, BeforeHash: f.Hash,
			After: c.Before, AfterHash: c.BeforeHash, Mode: c.Mode, UID: c.UID, GID: c.GID, Dir: f.Dir, Source: c.Backup}
		items = append(items, u.item(fmt.Sprintf("%s: put back the kube-apiserver manifest change %s found", u.Node, id), id))
	}
	return items, nil
}
