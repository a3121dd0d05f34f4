package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/apiprobe"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/nodeops/service"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// The replica count of a kubeadm control plane: an API server added on a
// standby control-plane host (its manifest and the files it needs copied
// from a healthy node) or taken away from one (its manifest moved out of
// the manifests directory).

const (
	// OpAPIServerAdd and OpAPIServerRemove are the journal ops of
	// apiserver add and apiserver remove.
	OpAPIServerAdd    = "apiserver-add"
	OpAPIServerRemove = "apiserver-remove"
	// KindAPIServerMember is the change kind of both.
	KindAPIServerMember = "apiserver-member"
)

// The actions of a member item: an add and a remove, and their undos.
const (
	memberAdd      = "add"
	memberRemove   = "remove"
	memberWithdraw = "withdraw" // undo of an add: manifest removed, then the files
	memberRestore  = "restore"  // undo of a remove: manifest put back
)

// StandbyRole marks control-plane hosts that run no API server yet (the
// hosts apiserver add is for); they count among the API servers' peers.
const StandbyRole = "standby"

// MemberPeers are the nodes of all that an add or remove works among: the
// control-plane and standby nodes, and node itself.
func MemberPeers(all []nodeops.Target, node string) []nodeops.Target {
	var out []nodeops.Target
	for _, t := range all {
		if t.HasRole("control-plane") || t.HasRole(StandbyRole) || t.Name == node {
			out = append(out, t)
		}
	}
	return out
}

// Host is the peer named name; flag names where the name came from, for
// the error.
func (k *APIServerMember) Host(name, flag string) (nodeops.Target, error) {
	var names []string
	for _, h := range k.Hosts {
		if h.Name == name {
			return h, nil
		}
		names = append(names, h.Name)
	}
	return nodeops.Target{}, fmt.Errorf("%s %s: not a control-plane or standby node of the inventory (those are: %s)", flag, name, strings.Join(names, ", "))
}

// HealthySource is what an add copies from by default: the first
// control-plane node other than node whose API server answers /livez and
// /readyz, else the first where one runs (a saturated one).
func (k *APIServerMember) HealthySource(ctx context.Context, node string) (nodeops.Target, error) {
	var running []nodeops.Target
	for _, h := range k.Hosts {
		if h.Name == node || !h.HasRole("control-plane") {
			continue
		}
		cctx, cancel := k.manifest().call(ctx)
		l, err := k.Watch.Live(cctx, h)
		cancel()
		if err == nil && l.OK() {
			return h, nil
		}
		cctx, cancel = k.manifest().call(ctx)
		in, err := k.Watch.Instance(cctx, h)
		cancel()
		if err == nil && in.ID != "" {
			running = append(running, h)
		}
	}
	if len(running) > 0 {
		return running[0], nil
	}
	return nodeops.Target{}, fmt.Errorf("no control-plane node runs an API server to copy from\nhint: name one (--from)")
}

// APIServerMember adds and removes API servers of a static-pod control
// plane, one node per change.
type APIServerMember struct {
	Runner nodeops.Runner
	Watch  APIServerWatch
	// Hosts are every node a change may touch or ask (the other API
	// servers, before one is taken away), by name.
	Hosts []nodeops.Target
	// Path is the manifest (manifest.DefaultPath); BackupDir where a
	// removed manifest goes (manifest.DefaultBackupDir).
	Path, BackupDir string
	// Etcd are the etcd servers an added API server uses instead of a
	// loopback address (kubeadm's stacked etcd, which the new node does
	// not run); empty: the source node's address.
	Etcd []string
	// Kubeconfigs are the admin kubeconfigs copied along, for asking the
	// new API server on its node (default apiprobe.DefaultKubeconfigs).
	Kubeconfigs []string
	// Wait bounds how long a node's API server may take to come up or go
	// (default 3m); Poll is how often it is looked at (default 2s).
	Wait, Poll, CallTimeout time.Duration
	Now                     func() time.Time
}

// Name implements change.Kind.
func (k *APIServerMember) Name() string { return KindAPIServerMember }

// OwnsOp implements change.ChangeOwner.
func (k *APIServerMember) OwnsOp(op string) bool {
	return op == OpAPIServerAdd || op == OpAPIServerRemove || op == "undo"
}

// Check refuses paths the kind cannot work with safely.
func (k *APIServerMember) Check() error { return k.manifest().Check() }

func (k *APIServerMember) manifest() *Manifest {
	return &Manifest{Runner: k.Runner, Watch: k.Watch, Path: k.Path, BackupDir: k.BackupDir, Wait: k.Wait, Poll: k.Poll, CallTimeout: k.CallTimeout}
}

// MemberChange is the payload of a member item. The files' bytes are
// never marshalled (keys and credentials): the journal has their paths,
// modes and hashes.
type MemberChange struct {
	Target nodeops.Target `json:"-"`
	Action string         `json:"action"`
	Node   string         `json:"node"`
	From   string         `json:"from,omitempty"`
	// Path is the manifest; Manifest its bytes (written by an add, moved
	// by a remove), with their hash, mode and owner.
	Path     string `json:"path"`
	Manifest []byte `json:"manifest"`
	Hash     string `json:"sha256"`
	Mode     string `json:"mode"`
	UID      int    `json:"uid"`
	GID      int    `json:"gid"`
	// Dir is what the manifests directory held when planned.
	Dir []string `json:"dir"`
	// Files are written by an add (none of them there before), and
	// removed again by its undo when they still have their bytes.
	Files []manifest.NodeFile `json:"files,omitempty"`
	// Minted are the files of Files made for this node (its serving
	// certificate and key) rather than copied.
	Minted []string `json:"minted,omitempty"`
	// Dirs are the directories the add made (set once written).
	Dirs []string `json:"dirs,omitempty"`
	// Backup is where a remove moves the manifest (and where its undo
	// takes it from).
	Backup string `json:"backup,omitempty"`
	// Changes say how the manifest differs from the source node's.
	Changes []string `json:"changes,omitempty"`
}

// PlanAdd plans an API server on node to, from the manifest of the
// healthy node from: the manifest rewritten for to's address, and every
// file it names (PKI, service-account keys, etcd client certificate) and
// the admin kubeconfigs breakglass asks a node's API server with, copied
// with their modes. When from's serving certificate is not valid for
// to's address, a new one is signed for to with the cluster CA (its key
// is read from from, used in memory and not copied). The plan is refused
// when to has a manifest already, or any of those files with other bytes.
func PlanAdd(k *APIServerMember, from, to nodeops.Target, advertise string) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		m := k.manifest()
		if err := m.Check(); err != nil {
			return nil, err
		}
		if from.Name == to.Name {
			return nil, fmt.Errorf("--from %s is the node to add to: copy from another control-plane node", from.Name)
		}
		if advertise == "" {
			advertise = to.Address
		}
		cctx, cancel := m.call(ctx)
		src, err := manifest.Read(cctx, k.Runner, from, m.path())
		cancel()
		if err != nil {
			return nil, fmt.Errorf("--from %s: %w", from.Name, err)
		}
		// The source's manifest must be one an API server runs from: its
		// process there, with the manifest's command line. A saturated
		// one that does not answer in time is still a good source.
		var notes []string
		cctx, cancel = m.call(ctx)
		inst, err := k.Watch.Instance(cctx, from)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("--from %s: look at its API server process: %w", from.Name, err)
		}
		if want := manifest.ArgvOf(src.Bytes); inst.ID == "" || (want != nil && inst.Args != nil && !slices.Equal(inst.Args, want)) {
			return nil, change.Refusedf("--from %s: no API server runs there from %s: copy from a node whose API server runs from its manifest", from.Name, src.Path)
		}
		cctx, cancel = m.call(ctx)
		live, err := k.Watch.Live(cctx, from)
		cancel()
		if err != nil || !live.OK() {
			why := live.String()
			if err != nil {
				why = err.Error()
			}
			notes = append(notes, fmt.Sprintf("%s's API server runs from its manifest but does not answer /livez and /readyz in time (%s): saturated, it is still copied", from.Name, why))
		}
		cctx, cancel = m.call(ctx)
		have, err := manifest.Read(cctx, k.Runner, to, m.path())
		cancel()
		switch {
		case err == nil:
			return nil, change.Refusedf("%s already has %s (sha256 %.12s): it runs an API server, or is meant to\nhint: breakglass apiserver status --nodes %s", to.Name, m.path(), have.Hash, to.Name)
		case !errors.Is(err, manifest.ErrMissing):
			return nil, err
		}
		pod, err := manifest.Parse(src.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", from.Name, src.Path, err)
		}
		refs, err := manifest.Referenced(pod)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", from.Name, src.Path, err)
		}
		after, changes, err := manifest.ForNode(src.Bytes, manifest.Peer{Name: from.Name, Address: from.Address}, manifest.Peer{Name: to.Name, Address: advertise}, k.Etcd)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", from.Name, src.Path, err)
		}
		kcs := k.Kubeconfigs
		if len(kcs) == 0 {
			kcs = apiprobe.DefaultKubeconfigs
		}
		paths := slices.Clone(refs)
		for _, kc := range kcs {
			if !slices.Contains(paths, kc) {
				paths = append(paths, kc)
			}
		}
		cctx, cancel = m.call(ctx)
		srcFiles, err := manifest.ReadFiles(cctx, k.Runner, from, paths)
		cancel()
		if err != nil {
			return nil, err
		}
		var files []manifest.NodeFile
		byPath := map[string]manifest.NodeFile{}
		for _, f := range srcFiles {
			if !f.Exists {
				if slices.Contains(refs, f.Path) {
					return nil, fmt.Errorf("%s: the manifest names %s, which is not there: the source's API server could not be running from it", from.Name, f.Path)
				}
				continue // a kubeconfig kubeadm may not have written
			}
			files = append(files, f)
			byPath[f.Path] = f
		}
		var minted []string
		pv := func(name string) string { v, _ := manifest.FlagValue(pod, name); return v }
		if crt, key := pv("tls-cert-file"), pv("tls-private-key-file"); crt != "" && key != "" {
			fc := byPath[crt]
			ok, err := manifest.Covers(fc.Bytes, advertise)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", from.Name, crt, err)
			}
			if !ok {
				src := manifest.Peer{Name: from.Name, Address: from.Address}
				if a := pv("advertise-address"); a != "" {
					src.Address = a
				}
				c, kb, note, err := k.mint(ctx, from, src, to, advertise, pv, fc)
				if err != nil {
					return nil, err
				}
				for i := range files {
					switch files[i].Path {
					case crt:
						files[i].Bytes, files[i].Hash = c, manifest.Hash(c)
					case key:
						files[i].Bytes, files[i].Hash = kb, manifest.Hash(kb)
					}
				}
				minted = []string{crt, key}
				notes = append(notes, note)
			}
		}
		// None of the files may be on the new node with other bytes;
		// those that are there with the same bytes are left alone.
		var ps []string
		for _, f := range files {
			ps = append(ps, f.Path)
		}
		cctx, cancel = m.call(ctx)
		dst, err := manifest.ReadFiles(cctx, k.Runner, to, ps)
		cancel()
		if err != nil {
			return nil, err
		}
		var create []manifest.NodeFile
		var same, differ []string
		for i, f := range files {
			switch d := dst[i]; {
			case !d.Exists:
				create = append(create, f)
			case d.Hash == f.Hash:
				same = append(same, f.Path)
			default:
				differ = append(differ, f.Path)
			}
		}
		if len(differ) > 0 {
			return nil, change.Refusedf("%s already has %s with other bytes than %s's\nhint: move them aside on %s (they may be another cluster's), then plan again", to.Name, strings.Join(differ, ", "), from.Name, to.Name)
		}
		dir, err := k.dir(ctx, to, m.path())
		if err != nil {
			return nil, err
		}
		c := &MemberChange{Target: to, Action: memberAdd, Node: to.Name, From: from.Name, Path: m.path(), Manifest: after,
			Hash: manifest.Hash(after), Mode: src.Mode, UID: src.UID, GID: src.GID, Dir: dir, Files: create, Minted: minted, Changes: changes}
		p := &change.Plan{ID: id, Op: OpAPIServerAdd, Title: fmt.Sprintf("add an API server on %s, copied from %s", to.Name, from.Name)}
		summary := fmt.Sprintf("%s: kube-apiserver manifest from %s (%s), %d file%s", to.Name, from.Name, strings.Join(changes, ", "), len(create), plural(len(create)))
		it := &change.Item{Kind: KindAPIServerMember, Target: journal.Target{Node: to.Name, Path: c.Path}, Summary: summary,
			Diff: memberDiff(to.Name, c, nil), PlannedAt: "absent", Payload: c}
		p.Items = []*change.Item{it}
		p.Notes = append(p.Notes, notes...)
		if len(same) > 0 {
			p.Notes = append(p.Notes, fmt.Sprintf("%s has %s with the same bytes already: left as they are (and left by undo)", to.Name, strings.Join(same, ", ")))
		}
		p.Notes = append(p.Notes,
			fmt.Sprintf("the files are written first, each only where there is none yet; then the manifest, which %s's kubelet starts; breakglass waits up to %s until the new API server answers /livez and /readyz on %s, and takes it all away again if it does not", to.Name, m.wait(), to.Name),
			"the files' contents (keys, credentials) are neither shown nor journaled: the journal has their paths, modes and sha256",
			"undo: breakglass undo "+id+" removes the manifest, waits until the API server is gone, then removes the files it wrote that still have their bytes")
		return p, nil
	}
}

// mint signs a serving certificate for to with the CA that signed from's.
func (k *APIServerMember) mint(ctx context.Context, from nodeops.Target, src manifest.Peer, to nodeops.Target, advertise string, pv func(string) string, cert manifest.NodeFile) ([]byte, []byte, string, error) {
	m := k.manifest()
	var cands []string
	for _, c := range []string{pv("client-ca-file"), path.Join(path.Dir(cert.Path), "ca.crt")} {
		if c != "" && !slices.Contains(cands, c) {
			cands = append(cands, c)
		}
	}
	cctx, cancel := m.call(ctx)
	cas, err := manifest.ReadFiles(cctx, k.Runner, from, cands)
	cancel()
	if err != nil {
		return nil, nil, "", err
	}
	for _, ca := range cas {
		if !ca.Exists || !manifest.SignedBy(cert.Bytes, ca.Bytes) {
			continue
		}
		keyPath := strings.TrimSuffix(ca.Path, ".crt") + ".key"
		cctx, cancel := m.call(ctx)
		keys, err := manifest.ReadFiles(cctx, k.Runner, from, []string{keyPath})
		cancel()
		if err != nil {
			return nil, nil, "", err
		}
		if !keys[0].Exists {
			return nil, nil, "", fmt.Errorf("%s's serving certificate %s is not valid for %s, and the CA key %s to sign one is not on %s\nhint: make a serving certificate for %s (kubeadm init phase certs apiserver) and put it on %s, then plan again", from.Name, cert.Path, advertise, keyPath, from.Name, advertise, to.Name)
		}
		now := time.Now()
		if k.Now != nil {
			now = k.Now()
		}
		c, kb, err := manifest.MintServing(cert.Bytes, ca.Bytes, keys[0].Bytes, src, manifest.Peer{Name: to.Name, Address: advertise}, now)
		if err != nil {
			return nil, nil, "", fmt.Errorf("sign a serving certificate for %s: %w", to.Name, err)
		}
		return c, kb, fmt.Sprintf("%s's serving certificate is not valid for %s: a new one (and its key) is signed for %s with the CA %s (its key read from %s, not copied)", from.Name, advertise, to.Name, ca.Path, from.Name), nil
	}
	return nil, nil, "", fmt.Errorf("%s's serving certificate %s is not valid for %s, and none of %s signed it", from.Name, cert.Path, advertise, strings.Join(cands, ", "))
}

// dir lists the manifests directory on the node ("" entries: none; no
// directory: none either).
func (k *APIServerMember) dir(ctx context.Context, t nodeops.Target, p string) ([]string, error) {
	cctx, cancel := k.manifest().call(ctx)
	defer cancel()
	out, err := k.Runner.Run(cctx, t, nodeops.Command{Line: "ls -A -- " + nodeops.ShellQuote(path.Dir(p)) + " 2>/dev/null; exit 0"})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range strings.Split(string(out.Stdout), "\n") {
		if l != "" {
			names = append(names, l)
		}
	}
	slices.Sort(names)
	return names, nil
}

func memberDiff(node string, c *MemberChange, before []byte) string {
	var b strings.Builder
	switch c.Action {
	case memberAdd, memberRestore:
		b.WriteString(manifest.Diff(node, c.Path, before, c.Manifest))
	case memberRemove, memberWithdraw:
		b.WriteString(manifest.Diff(node, c.Path, c.Manifest, nil))
	}
	for _, f := range c.Files {
		verb := "+"
		if c.Action == memberWithdraw {
			verb = "-"
		}
		how := "copied"
		if slices.Contains(c.Minted, f.Path) {
			how = "signed for " + node
		}
		fmt.Fprintf(&b, "%s %s:%s (mode %s, %d:%d, sha256 %.12s, %s)\n", verb, node, f.Path, f.Mode, f.UID, f.GID, f.Hash, how)
	}
	return b.String()
}

// PlanRemove plans taking the API server of node away: its manifest moved
// out of the manifests directory (to the backup directory), so its
// kubelet stops it. It is refused, unless force, when no other node's API
// server answers /livez and /readyz: that would take the last one away.
func PlanRemove(k *APIServerMember, node nodeops.Target, force bool) change.Planner {
	return func(ctx context.Context, id string) (*change.Plan, error) {
		m := k.manifest()
		if err := m.Check(); err != nil {
			return nil, err
		}
		cctx, cancel := m.call(ctx)
		f, err := manifest.Read(cctx, k.Runner, node, m.path())
		cancel()
		if err != nil {
			return nil, err
		}
		others, err := k.others(ctx, node.Name)
		if err != nil && !force {
			return nil, err
		}
		c := &MemberChange{Target: node, Action: memberRemove, Node: node.Name, Path: f.Path, Manifest: f.Bytes, Hash: f.Hash,
			Mode: f.Mode, UID: f.UID, GID: f.GID, Dir: f.Dir, Backup: manifest.BackupPath(m.backupDir(), id, f.Path)}
		p := &change.Plan{ID: id, Op: OpAPIServerRemove, Title: "take the API server on " + node.Name + " away"}
		p.Items = []*change.Item{{Kind: KindAPIServerMember, Target: journal.Target{Node: node.Name, Path: f.Path},
			Summary: fmt.Sprintf("%s: move %s to %s (its kubelet stops the API server)", node.Name, f.Path, c.Backup),
			Diff:    memberDiff(node.Name, c, nil), PlannedAt: "sha256:" + f.Hash, Payload: c}}
		if err != nil {
			p.Notes = append(p.Notes, "--force: "+err.Error())
		} else {
			p.Notes = append(p.Notes, "API servers that answer /livez and /readyz and stay: "+strings.Join(others, ", "))
		}
		p.Notes = append(p.Notes, fmt.Sprintf("breakglass waits up to %s until no kube-apiserver runs on %s; its PKI and kubeconfigs stay", m.wait(), node.Name),
			"undo: breakglass undo "+id+" puts the manifest back and waits until the API server answers again")
		return p, nil
	}
}

// others are the hosts other than node whose API server answers /livez
// and /readyz; an error (refused) when there is none.
func (k *APIServerMember) others(ctx context.Context, node string) ([]string, error) {
	var ts []nodeops.Target
	for _, t := range k.Hosts {
		if t.Name != node {
			ts = append(ts, t)
		}
	}
	res := fanout.RunOf(ctx, ts, fanout.OptionsOf[apiprobe.Liveness]{Concurrency: 16, Timeout: k.CallTimeout},
		func(ctx context.Context, t nodeops.Target) (apiprobe.Liveness, error) { return k.Watch.Live(ctx, t) })
	var ok []string
	for _, r := range res {
		if r.Err == nil && r.Output.OK() {
			ok = append(ok, r.Target.Name)
		}
	}
	if len(ok) == 0 {
		return nil, change.Refusedf("no other node's API server answers /livez and /readyz: taking %s's away would leave none\nhint: add one first (breakglass apiserver add), or pass --force", node)
	}
	return ok, nil
}

// Apply implements change.Kind.
func (k *APIServerMember) Apply(ctx context.Context, p *change.Plan, it *change.Item, j *journal.Journal) error {
	c, ok := it.Payload.(*MemberChange)
	if !ok {
		return fmt.Errorf("internal: member item without a member change")
	}
	m := k.manifest()
	if err := m.Check(); err != nil {
		return err
	}
	start := time.Now()
	if err := k.journal(j, p, it, c, journal.TypeIntent, journal.StatusPending, nil); err != nil {
		return fmt.Errorf("journal: %w\nhint: nothing was changed on %s", err, c.Node)
	}
	var err error
	switch c.Action {
	case memberAdd:
		err = k.add(ctx, p, c)
	case memberRestore:
		err = k.restore(ctx, p, c)
	case memberRemove, memberWithdraw:
		err = k.take(ctx, p, c)
	default:
		err = fmt.Errorf("internal: member action %q", c.Action)
	}
	status := journal.StatusApplied
	var stale *manifest.StaleError
	var exists *manifest.ExistsError
	var sstale *service.StaleError
	switch {
	case err == nil:
		it.Result = fmt.Sprintf("%s after %s", c.Action, time.Since(start).Round(time.Second))
	case errors.As(err, &stale), errors.As(err, &exists), errors.As(err, &sstale):
		status = journal.StatusFailed
		err = &change.RefusedError{Err: fmt.Errorf("%w\nhint: the node changed since the plan: look at it, then plan again", err)}
	case errors.Is(err, errRolledBack):
		status = journal.StatusFailed
	default:
		status = journal.StatusUnknown
	}
	if jerr := k.journal(j, p, it, c, journal.TypeOutcome, status, err); jerr != nil && err == nil {
		return fmt.Errorf("journal: %s was changed but its outcome was not recorded: %w", c.Node, jerr)
	}
	return err
}

var errRolledBack = errors.New("rolled back")

// add writes the files, then the manifest, and waits for the new API
// server; when it does not come up, everything is taken away again.
func (k *APIServerMember) add(ctx context.Context, p *change.Plan, c *MemberChange) error {
	m := k.manifest()
	cctx, cancel := m.call(ctx)
	dirs, written, err := manifest.CreateFiles(cctx, k.Runner, c.Target, p.ID, c.Files)
	cancel()
	c.Dirs = dirs
	if err != nil {
		if len(written) > 0 {
			k.removeFiles(ctx, c)
		}
		return err
	}
	w := manifest.Write{ID: p.ID, Path: c.Path, Expect: "absent", Bytes: c.Manifest, Mode: c.Mode, UID: c.UID, GID: c.GID,
		Keep: append(slices.Clone(c.Dir), path.Base(c.Path))}
	cctx, cancel = m.call(ctx)
	_, err = w.Run(cctx, k.Runner, c.Target)
	cancel()
	var stray *manifest.StrayError
	if err != nil && !errors.As(err, &stray) {
		var stale *manifest.StaleError
		if errors.As(err, &stale) {
			k.removeFiles(ctx, c)
		}
		return err
	}
	_, werr := m.waitFor(ctx, c.Target, apiprobe.Instance{}, true, manifest.ArgvOf(c.Manifest))
	if werr == nil && stray == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("cancelled while waiting for the API server on %s: the manifest is in place (undo: breakglass undo %s): %w", c.Node, p.ID, ctx.Err())
	}
	cause := werr
	if cause == nil {
		cause = stray
	}
	if rerr := k.take(ctx, p, &MemberChange{Target: c.Target, Action: memberWithdraw, Node: c.Node, Path: c.Path, Manifest: c.Manifest,
		Hash: c.Hash, Files: c.Files, Dirs: c.Dirs}); rerr != nil {
		return fmt.Errorf("%v\ntaking it away again failed: %w\nhint: breakglass undo %s", cause, rerr, p.ID)
	}
	return fmt.Errorf("%v; %w: the manifest and the files written are gone from %s again", cause, errRolledBack, c.Node)
}

// take stops the node's API server: the manifest moved to the backup
// (remove) or deleted when it still has the bytes written (withdraw),
// then, once no kube-apiserver runs there, a withdraw's files removed.
func (k *APIServerMember) take(ctx context.Context, p *change.Plan, c *MemberChange) error {
	m := k.manifest()
	cctx, cancel := m.call(ctx)
	var err error
	if c.Action == memberRemove {
		err = service.Aside(cctx, k.Runner, c.Target, c.Path, c.Hash, c.Backup)
	} else {
		_, err = manifest.RemoveFiles(cctx, k.Runner, c.Target, map[string]string{c.Path: c.Hash}, nil)
	}
	cancel()
	if err != nil {
		return err
	}
	if err := k.waitGone(ctx, c.Target); err != nil {
		return err
	}
	if c.Action == memberWithdraw {
		return k.removeFiles(ctx, c)
	}
	return nil
}

func (k *APIServerMember) removeFiles(ctx context.Context, c *MemberChange) error {
	files := map[string]string{}
	for _, f := range c.Files {
		files[f.Path] = f.Hash
	}
	cctx, cancel := k.manifest().call(ctx)
	defer cancel()
	res, err := manifest.RemoveFiles(cctx, k.Runner, c.Target, files, c.Dirs)
	if err == nil && len(res.Kept) > 0 {
		return fmt.Errorf("%s: %s changed since they were written and are left in place", c.Node, strings.Join(res.Kept, ", "))
	}
	return err
}

// restore puts a removed manifest back and waits for its API server.
func (k *APIServerMember) restore(ctx context.Context, p *change.Plan, c *MemberChange) error {
	m := k.manifest()
	cctx, cancel := m.call(ctx)
	err := service.Back(cctx, k.Runner, c.Target, p.ID, c.Path, c.Manifest, c.Mode, c.UID, c.GID, c.Backup, c.Dir)
	cancel()
	var stray *manifest.StrayError
	if err != nil && !errors.As(err, &stray) {
		return err
	}
	if _, werr := m.waitFor(ctx, c.Target, apiprobe.Instance{}, true, manifest.ArgvOf(c.Manifest)); werr != nil {
		return werr
	}
	if stray != nil {
		return stray
	}
	return nil
}

// waitGone waits until no kube-apiserver process runs on the node.
func (k *APIServerMember) waitGone(ctx context.Context, t nodeops.Target) error {
	m := k.manifest()
	deadline := time.Now().Add(m.wait())
	for {
		cctx, cancel := m.call(ctx)
		inst, err := k.Watch.Instance(cctx, t)
		cancel()
		if err == nil && inst.ID == "" {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("%s: the API server did not stop within %s: %w", t.Name, m.wait(), err)
			}
			return fmt.Errorf("%s: the API server (%s) did not stop within %s", t.Name, inst.ID, m.wait())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(m.poll()):
		}
	}
}

func (k *APIServerMember) journal(j *journal.Journal, p *change.Plan, it *change.Item, c *MemberChange, typ, status string, err error) error {
	r := &journal.Record{Type: typ, ID: p.ID, Kind: journal.KindNode, Op: p.Op, Attempt: it.Attempt, Target: it.Target,
		Summary: it.Summary, Undoes: it.Undoes, Status: status,
		Details: map[string]string{"kind": KindAPIServerMember, "action": c.Action, "sha256": c.Hash}}
	if c.Backup != "" {
		r.Details["backup"] = c.Backup
	}
	b, jerr := json.Marshal(c)
	if jerr != nil {
		return jerr
	}
	if typ == journal.TypeIntent {
		r.Before = &journal.Value{Bytes: b}
	} else {
		r.After = &journal.Value{Bytes: b}
	}
	if err != nil {
		r.Error = err.Error()
	}
	return j.Append(r)
}

// Undo implements change.Kind: an add is withdrawn (manifest removed,
// the API server waited for until gone, then the files it wrote that
// still have their bytes), a remove restored (manifest put back, the API
// server waited for). Withdrawing the last API server that answers is
// refused unless force.
func (k *APIServerMember) Undo(ctx context.Context, records []journal.Record, id string, force bool) ([]*change.Item, error) {
	var c *MemberChange
	for i := range records {
		r := &records[i]
		if r.ID != id || r.Details["kind"] != KindAPIServerMember {
			continue
		}
		var mc MemberChange
		v := r.Before
		if r.Type != journal.TypeIntent {
			v = r.After
		}
		if err := jsonUnmarshal(v, &mc); err != nil {
			return nil, fmt.Errorf("change %s: the journal's record of %s: %w", id, r.Target.Node, err)
		}
		if c == nil || len(mc.Dirs) > 0 {
			c = &mc // the outcome knows the directories made
		}
	}
	if c == nil {
		return nil, fmt.Errorf("change %s: not an apiserver add or remove", id)
	}
	var t nodeops.Target
	for _, h := range k.Hosts {
		if h.Name == c.Node {
			t = h
		}
	}
	if t.Name == "" {
		return nil, fmt.Errorf("change %s was on %s, which is not in the inventory", id, c.Node)
	}
	c.Target = t
	m := k.manifest()
	cctx, cancel := m.call(ctx)
	f, err := manifest.Read(cctx, k.Runner, t, c.Path)
	cancel()
	if err != nil && !errors.Is(err, manifest.ErrMissing) {
		return nil, err
	}
	u := *c
	u.Files = slices.Clone(c.Files)
	switch c.Action {
	case memberAdd:
		u.Action = memberWithdraw
		if f == nil {
			// The manifest is gone already (rolled back, or never
			// written): the files alone are left to remove.
			u.Hash = "absent"
		} else if f.Hash != c.Hash && !force {
			return nil, change.Refusedf("%s: %s changed since change %s (sha256 %.12s, the change wrote %.12s)\nhint: look at it; pass --force to take it away anyway", t.Name, c.Path, id, f.Hash, c.Hash)
		} else {
			u.Hash = f.Hash
		}
		if f != nil {
			if _, err := k.others(ctx, t.Name); err != nil && !force {
				return nil, err
			}
		}
		return []*change.Item{{Kind: KindAPIServerMember, Target: journal.Target{Node: t.Name, Path: c.Path},
			Summary: fmt.Sprintf("%s: take away the API server change %s added, and the %d file%s it wrote", t.Name, id, len(c.Files), plural(len(c.Files))),
			Diff:    memberDiff(t.Name, &u, nil), PlannedAt: "sha256:" + u.Hash, Undoes: id, Payload: &u}}, nil
	case memberRemove:
		if f != nil {
			if f.Hash == c.Hash {
				return nil, nil // back already
			}
			return nil, change.Refusedf("%s: %s is there again with other bytes (sha256 %.12s) than change %s moved\nhint: look at it", t.Name, c.Path, f.Hash, id)
		}
		u.Action = memberRestore
		if u.Dir, err = k.dir(ctx, t, c.Path); err != nil {
			return nil, err
		}
		return []*change.Item{{Kind: KindAPIServerMember, Target: journal.Target{Node: t.Name, Path: c.Path},
			Summary: fmt.Sprintf("%s: put back the API server manifest change %s moved to %s", t.Name, id, c.Backup),
			Diff:    memberDiff(t.Name, &u, nil), PlannedAt: "absent", Undoes: id, Payload: &u}}, nil
	}
	return nil, fmt.Errorf("change %s: undo of an undo of an apiserver add or remove: add or remove again instead", id)
}
