package etcd

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
)

// PriorityClass is one PriorityClass of the census.
type PriorityClass struct {
	Name          string    `json:"name"`
	Value         int32     `json:"value"`
	GlobalDefault bool      `json:"globalDefault,omitempty"`
	Preempting    bool      `json:"preempting"`
	Created       time.Time `json:"created"`
	Recent        bool      `json:"recent,omitempty"`
}

func (s *Store) priorityClasses(ctx context.Context, rev int64, cutoff time.Time) ([]PriorityClass, error) {
	var out []PriorityClass
	err := eachTyped(ctx, s, "priorityclasses", rev, func(p *schedulingv1.PriorityClass) {
		out = append(out, PriorityClass{Name: p.Name, Value: p.Value, GlobalDefault: p.GlobalDefault,
			Preempting: p.PreemptionPolicy == nil || *p.PreemptionPolicy != corev1.PreemptNever,
			Created:    p.CreationTimestamp.Time, Recent: p.CreationTimestamp.After(cutoff)})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Value > out[j].Value })
	return out, err
}

// SchedulingEvent sums up the recent Preempted or FailedScheduling events
// of one object.
type SchedulingEvent struct {
	Reason    string    `json:"reason"`
	Namespace string    `json:"namespace"`
	Object    string    `json:"object"` // kind/name
	Count     int32     `json:"count"`
	Last      time.Time `json:"last"`
	Message   string    `json:"message,omitempty"`
	// Related is the other object (a Preempted event's preemptor pod,
	// namespace/name), when the scheduler recorded it.
	Related string `json:"related,omitempty"`
}

// MaxSchedulingEvents is how many summaries the census keeps (most counted
// first).
const MaxSchedulingEvents = 50

func eventTime(e *corev1.Event) time.Time {
	t := e.LastTimestamp.Time
	for _, c := range []time.Time{e.EventTime.Time, e.FirstTimestamp.Time, e.CreationTimestamp.Time} {
		if c.After(t) {
			t = c
		}
	}
	if e.Series != nil && e.Series.LastObservedTime.After(t) {
		t = e.Series.LastObservedTime.Time
	}
	return t
}

func (s *Store) schedulingEvents(ctx context.Context, rev int64, cutoff time.Time) ([]SchedulingEvent, error) {
	byKey := map[string]*SchedulingEvent{}
	err := eachTyped(ctx, s, "events", rev, func(e *corev1.Event) {
		if e.Reason != "Preempted" && e.Reason != "FailedScheduling" {
			return
		}
		t := eventTime(e)
		if t.Before(cutoff) {
			return
		}
		n := e.Count
		if e.Series != nil && e.Series.Count > n {
			n = e.Series.Count
		}
		n = max(n, 1)
		related := ""
		if e.Related != nil {
			related = e.Related.Namespace + "/" + e.Related.Name
		}
		key := e.Reason + "\x00" + e.InvolvedObject.Namespace + "\x00" + e.InvolvedObject.Kind + "/" + e.InvolvedObject.Name + "\x00" + related
		se := byKey[key]
		if se == nil {
			se = &SchedulingEvent{Reason: e.Reason, Namespace: e.InvolvedObject.Namespace, Object: e.InvolvedObject.Kind + "/" + e.InvolvedObject.Name, Related: related}
			byKey[key] = se
		}
		se.Count += n
		if t.After(se.Last) {
			se.Last, se.Message = t, e.Message
		}
	})
	out := make([]SchedulingEvent, 0, len(byKey))
	for _, se := range byKey {
		out = append(out, *se)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Last.After(out[j].Last)
	})
	if len(out) > MaxSchedulingEvents {
		out = out[:MaxSchedulingEvents]
	}
	return out, err
}

// FlowSchema is a FlowSchema that is not one of the API server's stock
// ones (or a stock one whose spec was taken out of its updates), with what
// its priority level gives the clients it matches.
type FlowSchema struct {
	Name          string   `json:"name"`
	PriorityLevel string   `json:"priorityLevel"`
	Precedence    int32    `json:"precedence"`
	Subjects      []string `json:"subjects"`
	// Exempt: its priority level is of type Exempt (never queued, never
	// rejected). Favoured: it routes clients into a priority level kept
	// for the system or for high-priority workloads.
	Exempt   bool `json:"exempt,omitempty"`
	Favoured bool `json:"favoured,omitempty"`
	// Shed marks breakglass's own shed (shed flowschema).
	Shed bool `json:"shed,omitempty"`
	// Shares is the level's nominal concurrency shares (Limited only).
	Shares int32 `json:"shares,omitempty"`
}

// stockFlowSchemas are the mandatory and suggested FlowSchemas of 1.31.
var stockFlowSchemas = []string{"exempt", "probes", "system-leader-election", "endpoint-controller", "workload-leader-election",
	"system-node-high", "system-nodes", "kube-controller-manager", "kube-scheduler", "kube-system-service-accounts",
	"service-accounts", "global-default", "catch-all"}

// favouredLevels are the stock priority levels meant for the system and
// for high-priority workloads.
var favouredLevels = []string{"system", "node-high", "leader-election", "workload-high"}

func (s *Store) flowSchemas(ctx context.Context, rev int64) ([]FlowSchema, error) {
	levels := map[string]*flowcontrolv1.PriorityLevelConfiguration{}
	if err := eachTyped(ctx, s, "prioritylevelconfigurations", rev, func(p *flowcontrolv1.PriorityLevelConfiguration) { levels[p.Name] = p }); err != nil {
		return nil, err
	}
	var out []FlowSchema
	err := eachTyped(ctx, s, "flowschemas", rev, func(f *flowcontrolv1.FlowSchema) {
		stock := slices.Contains(stockFlowSchemas, f.Name) && f.Annotations["apf.kubernetes.io/autoupdate-spec"] != "false"
		if stock {
			return
		}
		fs := FlowSchema{Name: f.Name, PriorityLevel: f.Spec.PriorityLevelConfiguration.Name, Precedence: f.Spec.MatchingPrecedence,
			Shed: f.Labels["breakglass.io/shed"] == "true"}
		for _, r := range f.Spec.Rules {
			for _, sub := range r.Subjects {
				switch {
				case sub.ServiceAccount != nil:
					fs.Subjects = append(fs.Subjects, "serviceaccount:"+sub.ServiceAccount.Namespace+"/"+sub.ServiceAccount.Name)
				case sub.User != nil:
					fs.Subjects = append(fs.Subjects, "user:"+sub.User.Name)
				case sub.Group != nil:
					fs.Subjects = append(fs.Subjects, "group:"+sub.Group.Name)
				}
			}
		}
		if pl := levels[fs.PriorityLevel]; pl != nil {
			fs.Exempt = pl.Spec.Type == flowcontrolv1.PriorityLevelEnablementExempt
			if pl.Spec.Limited != nil && pl.Spec.Limited.NominalConcurrencyShares != nil {
				fs.Shares = *pl.Spec.Limited.NominalConcurrencyShares
			}
		}
		fs.Favoured = !fs.Exempt && !fs.Shed && slices.Contains(favouredLevels, fs.PriorityLevel)
		out = append(out, fs)
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Precedence < out[j].Precedence })
	return out, err
}

// APIServers is what etcd says about the API servers: their identity
// leases and the addresses of the kubernetes Service's endpoints.
type APIServers struct {
	Leases    []LeaseAge `json:"leases"`
	Endpoints []string   `json:"endpoints"`
	// Controllers are the leader-election leases of kube-system
	// (controller manager, scheduler), when they elect.
	Controllers []LeaseAge `json:"controllers,omitempty"`
}

// LeaseAge is a lease, who holds it and how long ago it was renewed.
type LeaseAge struct {
	Name   string `json:"name"`
	Holder string `json:"holder,omitempty"`
	// Age is how long ago it was renewed (-1s: never).
	Age time.Duration `json:"-"`
	// AgeSeconds is Age in JSON.
	AgeSeconds float64 `json:"ageSeconds"`
}

func leaseAge(l *coordinationv1.Lease, now time.Time) LeaseAge {
	a := LeaseAge{Name: l.Name, Age: -time.Second}
	if l.Spec.HolderIdentity != nil {
		a.Holder = *l.Spec.HolderIdentity
	}
	if l.Spec.RenewTime != nil {
		a.Age = now.Sub(l.Spec.RenewTime.Time).Round(time.Second)
	}
	a.AgeSeconds = a.Age.Seconds()
	return a
}

func (s *Store) apiservers(ctx context.Context, rev int64, now time.Time) (APIServers, error) {
	var a APIServers
	err := eachTypedIn(ctx, s, "leases", "kube-system", rev, func(l *coordinationv1.Lease) {
		switch {
		case l.Labels["apiserver.kubernetes.io/identity"] == "kube-apiserver":
			a.Leases = append(a.Leases, leaseAge(l, now))
		case l.Name == "kube-controller-manager" || l.Name == "kube-scheduler":
			a.Controllers = append(a.Controllers, leaseAge(l, now))
		}
	})
	if err != nil {
		return a, err
	}
	r, _ := s.Layout.Lookup("endpoints")
	o, err := s.GetObject(ctx, r, "default", "kubernetes", Serializable)
	if err != nil {
		if _, missing := err.(*NotFoundError); missing {
			return a, nil
		}
		return a, err
	}
	if ep, ok := decodedAs[*corev1.Endpoints](o); ok {
		for _, ss := range ep.Subsets {
			for _, ad := range ss.Addresses {
				for _, p := range ss.Ports {
					a.Endpoints = append(a.Endpoints, fmt.Sprintf("%s:%d", ad.IP, p.Port))
				}
			}
		}
	}
	return a, nil
}

func decodedAs[T any](o *Object) (T, bool) {
	var zero T
	if o == nil || o.Decoded == nil {
		return zero, false
	}
	t, ok := o.Decoded.Object.(T)
	return t, ok
}

// NodeHealth counts the nodes by readiness and ages their leases.
type NodeHealth struct {
	Total    int      `json:"total"`
	Ready    int      `json:"ready"`
	NotReady []string `json:"notReady,omitempty"` // at most MaxNotReady names
	// Lease ages (kube-node-lease): the oldest, the median, and how many
	// are older than StaleLease.
	Leases      int           `json:"leases"`
	OldestLease time.Duration `json:"-"`
	MedianLease time.Duration `json:"-"`
	StaleLeases int           `json:"staleLeases"`
	StaleOldest string        `json:"staleOldest,omitempty"`
	// The lease ages in seconds, for JSON.
	OldestLeaseSeconds float64 `json:"oldestLeaseSeconds"`
	MedianLeaseSeconds float64 `json:"medianLeaseSeconds"`
}

// StaleLease is the lease age past which a node's kubelet is not renewing
// (kubelet renews every 10 s; the node controller's grace is 40 s).
const StaleLease = 40 * time.Second

// MaxNotReady is how many NotReady node names are kept.
const MaxNotReady = 20

func (s *Store) nodeHealth(ctx context.Context, rev int64, now time.Time) (NodeHealth, error) {
	var h NodeHealth
	err := eachTyped(ctx, s, "nodes", rev, func(n *corev1.Node) {
		h.Total++
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					h.Ready++
				} else if len(h.NotReady) < MaxNotReady {
					h.NotReady = append(h.NotReady, n.Name)
				}
			}
		}
	})
	if err != nil {
		return h, err
	}
	var ages []LeaseAge
	err = eachTypedIn(ctx, s, "leases", "kube-node-lease", rev, func(l *coordinationv1.Lease) { ages = append(ages, leaseAge(l, now)) })
	if err != nil {
		return h, err
	}
	sort.Slice(ages, func(i, j int) bool { return ages[i].Age < ages[j].Age })
	h.Leases = len(ages)
	if len(ages) > 0 {
		h.OldestLease, h.MedianLease = ages[len(ages)-1].Age, ages[len(ages)/2].Age
		h.OldestLeaseSeconds, h.MedianLeaseSeconds = h.OldestLease.Seconds(), h.MedianLease.Seconds()
		for _, a := range ages {
			if a.Age > StaleLease {
				h.StaleLeases++
			}
		}
		if h.StaleLeases > 0 {
			h.StaleOldest = ages[len(ages)-1].Name
		}
	}
	return h, nil
}
