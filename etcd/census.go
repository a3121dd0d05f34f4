package etcd

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ReadCounter counts what the reads through one Store cost: range calls, the
// keys they returned and the bytes of those keys' values, and the member
// status calls. diagnose reports it, so that an operator sees the load the
// tool itself put on etcd.
type ReadCounter struct {
	ranges, keys, bytes, status, txns atomic.Int64
}

// ReadStats is a snapshot of a ReadCounter.
type ReadStats struct {
	// Ranges is the number of range (get or list page) calls.
	Ranges int64 `json:"ranges"`
	// Keys and Bytes are what those ranges returned.
	Keys  int64 `json:"keys"`
	Bytes int64 `json:"bytes"`
	// Status is the number of member status calls (health, DB size).
	Status int64 `json:"status"`
	// Txns is the number of transactions: a read-only caller has none.
	Txns int64 `json:"txns"`
}

// Stats returns the counts so far.
func (c *ReadCounter) Stats() ReadStats {
	return ReadStats{Ranges: c.ranges.Load(), Keys: c.keys.Load(), Bytes: c.bytes.Load(), Status: c.status.Load(), Txns: c.txns.Load()}
}

type countingKV struct {
	kv KV
	c  *ReadCounter
}

func (k countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	k.c.ranges.Add(1)
	resp, err := k.kv.Get(ctx, key, opts...)
	if resp != nil {
		k.c.keys.Add(int64(len(resp.Kvs)))
		var b int64
		for _, kv := range resp.Kvs {
			b += int64(len(kv.Value))
		}
		k.c.bytes.Add(b)
	}
	return resp, err
}

func (k countingKV) Txn(ctx context.Context) clientv3.Txn {
	k.c.txns.Add(1)
	return k.kv.Txn(ctx)
}

// Counting returns a store that shares s's connection, layout and codec and
// counts every read made through it.
func (s *Store) Counting() (*Store, *ReadCounter) {
	c := &ReadCounter{}
	return &Store{cli: s.cli, kv: countingKV{kv: s.kv, c: c}, cfg: s.cfg, Layout: s.Layout, Codec: s.Codec}, c
}

// ResourceCount is one resource in a cluster census: how many objects, and
// what a LIST of all of them costs in bytes.
type ResourceCount struct {
	Resource string `json:"resource"`
	Objects  int    `json:"objects"`
	// Bytes is exact when Sized, estimated from a sample of values when
	// Estimated, and 0 when only the keys were read.
	Bytes     int64 `json:"bytes"`
	Sized     bool  `json:"sized,omitempty"`
	Estimated bool  `json:"estimated,omitempty"`
	// Namespaces are the namespaces with the most objects (at most
	// TopNamespaces), for namespaced resources.
	Namespaces []NamespaceCensus `json:"namespaces,omitempty"`

	res Resource
}

// TopNamespaces is how many namespaces a ResourceCount keeps.
const TopNamespaces = 5

// sampleValues is how many values a size estimate reads; a resource with at
// most exactLimit objects is sized exactly instead.
const (
	sampleValues = 500
	exactLimit   = 2000
)

// countKeys counts every built-in and known custom resource, keys only, at
// one revision.
func (s *Store) countKeys(ctx context.Context, rev int64) ([]*ResourceCount, int64, error) {
	rs := Builtins()
	rs = append(rs, s.Layout.custom...)
	var out []*ResourceCount
	for _, r := range rs {
		c, err := s.Count(ctx, r, "", true, rev)
		if err != nil {
			return nil, rev, err
		}
		rev = c.Revision
		if c.Objects == 0 {
			continue
		}
		rc := &ResourceCount{Resource: r.GroupResource(), Objects: c.Objects, res: r}
		ns := append([]NamespaceCensus(nil), c.Namespaces...)
		sort.SliceStable(ns, func(i, j int) bool { return ns[i].Objects > ns[j].Objects })
		if len(ns) > TopNamespaces {
			ns = ns[:TopNamespaces]
		}
		rc.Namespaces = ns
		out = append(out, rc)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Objects > out[j].Objects })
	return out, rev, nil
}

// size fills in the bytes of a resource: exactly (values fetched a page at a
// time and dropped) when it is small, otherwise from the average of the first
// sampleValues values, so that sizing costs one bounded range whatever the
// cluster's size.
func (s *Store) size(ctx context.Context, rc *ResourceCount, rev int64) error {
	if rc.Sized || rc.Estimated {
		return nil
	}
	if rc.Objects <= exactLimit {
		c, err := s.Count(ctx, rc.res, "", false, rev)
		if err != nil {
			return err
		}
		rc.Bytes, rc.Sized = c.Bytes, true
		byNS := map[string]int64{}
		for _, n := range c.Namespaces {
			byNS[n.Namespace] = n.Bytes
		}
		for i := range rc.Namespaces {
			rc.Namespaces[i].Bytes = byNS[rc.Namespaces[i].Namespace]
		}
		return nil
	}
	prefix := s.Layout.ResourcePrefix(rc.res)
	cctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.kv.Get(cctx, prefix, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(sampleValues), clientv3.WithRev(rev), clientv3.WithSerializable())
	if err != nil {
		return wrapEtcdErr("sample "+prefix, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	var b int64
	for _, kv := range resp.Kvs {
		b += int64(len(kv.Value))
	}
	rc.Bytes = b * int64(rc.Objects) / int64(len(resp.Kvs))
	rc.Estimated = true
	return nil
}

// EtcdMember is one etcd endpoint's status.
type EtcdMember struct {
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Leader   bool   `json:"leader,omitempty"`
	// DBSize is the backend database's size; DBSizeInUse the part of it
	// in use (the rest is freed by a defragmentation).
	DBSize      int64    `json:"dbSize,omitempty"`
	DBSizeInUse int64    `json:"dbSizeInUse,omitempty"`
	Version     string   `json:"version,omitempty"`
	RaftIndex   uint64   `json:"raftIndex,omitempty"`
	Errors      []string `json:"errors,omitempty"`
}

// Members asks every endpoint of the connection for its status: health,
// leadership and database size. An endpoint that does not answer is
// reported unhealthy with its error, not as a failure of the call.
func (s *Store) Members(ctx context.Context) []EtcdMember {
	if s.cli == nil {
		return nil
	}
	var out []EtcdMember
	for _, ep := range s.cli.Endpoints() {
		m := EtcdMember{Endpoint: ep}
		if ck, ok := s.kv.(countingKV); ok {
			ck.c.status.Add(1)
		}
		cctx, cancel := s.call(ctx)
		st, err := s.cli.Status(cctx, ep)
		cancel()
		if err != nil {
			m.Errors = []string{err.Error()}
			out = append(out, m)
			continue
		}
		m.Healthy = len(st.Errors) == 0
		m.Errors = st.Errors
		m.Leader = st.Header != nil && st.Leader == st.Header.MemberId
		m.DBSize, m.DBSizeInUse, m.Version, m.RaftIndex = st.DbSize, st.DbSizeInUse, st.Version, st.RaftIndex
		out = append(out, m)
	}
	return out
}

// ClusterCensusOptions bound a cluster census.
type ClusterCensusOptions struct {
	// Since is how far back a workload, PriorityClass or event counts as
	// recent (default 6h).
	Since time.Duration
	// Now is the census's clock (default time.Now).
	Now time.Time
	// MaxEvents is the most events decoded to find scheduling events
	// (default 20000); with more, events are counted but not decoded.
	MaxEvents int
	// MaxSized is the most resources whose bytes are read or estimated
	// (default 16), the ones listed by workloads first.
	MaxSized int
}

// ClusterCensus is what etcd says about a cluster in trouble: what each
// resource costs to LIST, which workloads are new and what they cost, the
// scheduling policy (PriorityClasses, preemptions), flow control, and the
// health of the API servers, the nodes and etcd.
type ClusterCensus struct {
	// Time is the census's clock reading (ages are taken from it).
	Time            time.Time         `json:"time"`
	Revision        int64             `json:"revision"`
	Since           time.Duration     `json:"-"`
	Resources       []*ResourceCount  `json:"resources"`
	Workloads       []Workload        `json:"workloads"`
	PriorityClasses []PriorityClass   `json:"priorityClasses,omitempty"`
	Scheduling      []SchedulingEvent `json:"schedulingEvents,omitempty"`
	FlowSchemas     []FlowSchema      `json:"flowSchemas,omitempty"`
	APIServers      APIServers        `json:"apiservers"`
	Nodes           NodeHealth        `json:"nodes"`
	Etcd            []EtcdMember      `json:"etcd,omitempty"`
	// Notes say what the census left out and why.
	Notes []string `json:"notes,omitempty"`
}

// Resource returns the count of a resource by group-resource name.
func (c *ClusterCensus) Resource(name string) *ResourceCount {
	for _, r := range c.Resources {
		if r.Resource == name {
			return r
		}
	}
	return nil
}

// Census takes a cluster census. Every read is bounded: all resources are
// counted keys only at one revision; only small resources (workloads,
// RBAC, scheduling and flow-control objects, leases, nodes) are decoded;
// the bytes of the resources workloads list are read exactly when small and
// estimated from one sample page otherwise; events are decoded only when
// there are at most MaxEvents of them.
func (s *Store) Census(ctx context.Context, o ClusterCensusOptions) (*ClusterCensus, error) {
	if o.Since <= 0 {
		o.Since = 6 * time.Hour
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = 20000
	}
	if o.MaxSized <= 0 {
		o.MaxSized = 16
	}
	c := &ClusterCensus{Since: o.Since, Time: o.Now}
	if err := s.LoadCustomResources(ctx); err != nil {
		c.Notes = append(c.Notes, fmt.Sprintf("custom resources not counted: %v", err))
	}
	res, rev, err := s.countKeys(ctx, 0)
	if err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	c.Revision, c.Resources = rev, res
	cutoff := o.Now.Add(-o.Since)

	rb, err := s.readRBAC(ctx, rev)
	if err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	if c.Workloads, err = s.workloads(ctx, rev, cutoff, rb); err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	// Size what the workloads list cluster-wide, then pods and the
	// largest resources, within MaxSized.
	want := map[string]bool{}
	var order []string
	add := func(name string) {
		if !want[name] && c.Resource(name) != nil {
			want[name] = true
			order = append(order, name)
		}
	}
	for _, w := range c.Workloads {
		for _, l := range w.Lists {
			add(l.Resource)
		}
	}
	add("pods")
	for _, r := range c.Resources {
		add(r.Resource)
	}
	if len(order) > o.MaxSized {
		c.Notes = append(c.Notes, fmt.Sprintf("bytes read for %d of %d resources (the ones workloads list first)", o.MaxSized, len(order)))
		order = order[:o.MaxSized]
	}
	for _, name := range order {
		if err := s.size(ctx, c.Resource(name), rev); err != nil {
			return nil, fmt.Errorf("census: %w", err)
		}
	}
	for i := range c.Workloads {
		c.Workloads[i].cost(c)
	}
	sort.SliceStable(c.Workloads, func(i, j int) bool { return c.Workloads[i].Footprint > c.Workloads[j].Footprint })

	if c.PriorityClasses, err = s.priorityClasses(ctx, rev, cutoff); err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	if ev := c.Resource("events"); ev != nil && ev.Objects > o.MaxEvents {
		c.Notes = append(c.Notes, fmt.Sprintf("%d events: more than %d, not decoded (no scheduling events reported)", ev.Objects, o.MaxEvents))
	} else if c.Scheduling, err = s.schedulingEvents(ctx, rev, cutoff); err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	if c.FlowSchemas, err = s.flowSchemas(ctx, rev); err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	if c.APIServers, err = s.apiservers(ctx, rev, o.Now); err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	if c.Nodes, err = s.nodeHealth(ctx, rev, o.Now); err != nil {
		return nil, fmt.Errorf("census: %w", err)
	}
	c.Etcd = s.Members(ctx)
	return c, nil
}

// PodRef is a pod found by its uid.
type PodRef struct {
	Namespace, Name string
	Labels          map[string]string
}

// PodsByUID finds pods by uid in one listing of every pod, decoding only
// their metadata. It is the fallback for pods a node's containerd could not
// name: the caller bounds it by the census's pod count.
func (s *Store) PodsByUID(ctx context.Context, uids map[string]bool) (map[string]PodRef, error) {
	r, err := s.Layout.Lookup("pods")
	if err != nil {
		return nil, err
	}
	out := map[string]PodRef{}
	_, err = s.List(ctx, r, ListOptions{MetadataOnly: true}, func(o *Object) error {
		if o.Decoded == nil {
			return nil
		}
		m := o.Decoded.Meta()
		if uids[string(m.GetUID())] {
			out[string(m.GetUID())] = PodRef{Namespace: m.GetNamespace(), Name: m.GetName(), Labels: m.GetLabels()}
		}
		return nil
	})
	return out, err
}
