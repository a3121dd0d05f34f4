package diagnose

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/breakglass/breakglass/etcd"
)

// Thresholds decide when a suspect is worth acting on.
type Thresholds struct {
	// MinConns is the fewest connections to the API server a client must
	// hold cluster-wide, and MinShare or MinPerPod what it must hold in
	// share of all connections or per pod, to be a load suspect.
	MinConns  int
	MinShare  float64
	MinPerPod float64
	// MinPreemptions is the fewest recent preemptions that make a
	// PriorityClass (and the workload that preempts) a suspect.
	MinPreemptions int
	// MinScore is the score a suspect needs to be above threshold.
	MinScore float64
}

// DefaultThresholds are tuned so that a healthy cluster (kubelets and
// controllers with one or two HTTP/2 connections each) has no suspect
// above them.
var DefaultThresholds = Thresholds{MinConns: 8, MinShare: 0.25, MinPerPod: 4, MinPreemptions: 1, MinScore: 40}

func (t Thresholds) withDefaults() Thresholds {
	d := DefaultThresholds
	if t.MinConns > 0 {
		d.MinConns = t.MinConns
	}
	if t.MinShare > 0 {
		d.MinShare = t.MinShare
	}
	if t.MinPerPod > 0 {
		d.MinPerPod = t.MinPerPod
	}
	if t.MinPreemptions > 0 {
		d.MinPreemptions = t.MinPreemptions
	}
	if t.MinScore > 0 {
		d.MinScore = t.MinScore
	}
	return d
}

// Suspect is one candidate cause, with its evidence and what to do.
type Suspect struct {
	Rank      int    `json:"rank"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Score orders suspects (0-100); AboveThreshold says it is worth
	// acting on.
	Score          float64  `json:"score"`
	AboveThreshold bool     `json:"aboveThreshold"`
	Evidence       Evidence `json:"evidence"`
	// Why is the evidence in words, most telling first.
	Why []string `json:"why"`
	// Runbook is the suggested runbook; Selector the flags that select
	// this suspect for its levers (e.g. --daemonset NS/NAME);
	// ServiceAccount the identity for shed flowschema; Commands the
	// breakglass commands that act on it.
	Runbook        string   `json:"runbook"`
	Selector       []string `json:"selector,omitempty"`
	ServiceAccount string   `json:"serviceAccount,omitempty"`
	Commands       []string `json:"commands,omitempty"`
}

// Ref is NAMESPACE/NAME, or NAME.
func (s Suspect) Ref() string {
	if s.Namespace == "" {
		return s.Name
	}
	return s.Namespace + "/" + s.Name
}

// Evidence is what made a suspect.
type Evidence struct {
	Conns   int         `json:"conns,omitempty"`
	Share   float64     `json:"share,omitempty"`
	PerPod  float64     `json:"perPod,omitempty"`
	PerNode []NodeConns `json:"perNode,omitempty"`
	// Pods is how many pods it runs (census); PodsSeen how many of them
	// hold connections.
	Pods     int32 `json:"pods,omitempty"`
	PodsSeen int   `json:"podsSeen,omitempty"`
	// New: created or changed within the window; Created and Changed say
	// when.
	New     bool       `json:"new,omitempty"`
	Created *time.Time `json:"created,omitempty"`
	Changed *time.Time `json:"changed,omitempty"`
	// Lists are the resources it may list cluster-wide; ListBytes what
	// one round of them costs per pod, Footprint for all its pods.
	Lists     []string `json:"lists,omitempty"`
	ListBytes int64    `json:"listBytes,omitempty"`
	Footprint int64    `json:"footprint,omitempty"`
	// FlowSchema is the flow schema its requests fall in and RequestShare
	// that schema's part of the requests dispatched or rejected by the API
	// servers since they started; Exempted names a FlowSchema that
	// exempts or favours it.
	FlowSchema   string  `json:"flowSchema,omitempty"`
	RequestShare float64 `json:"requestShare,omitempty"`
	Exempted     string  `json:"exemptedBy,omitempty"`
	// Preemptions counts recent Preempted events it caused (or, for a
	// PriorityClass, that pods of its priority caused); GlobalDefault and
	// Value describe a PriorityClass; Victims are the namespaces evicted.
	Preemptions   int32    `json:"preemptions,omitempty"`
	GlobalDefault bool     `json:"globalDefault,omitempty"`
	Value         int32    `json:"value,omitempty"`
	Victims       []string `json:"victims,omitempty"`
	Preemptors    []string `json:"preemptors,omitempty"`
}

// controlPlaneProcesses are the cluster's own clients: never suspects by
// their connections alone.
var controlPlaneProcesses = []string{"kubelet", "kube-apiserver", "kube-controller", "kube-scheduler", "kube-proxy", "etcd", "coredns"}

// clusterWorkloads are the kube-system workloads of the cluster's own
// clients, kubeadm's names: never suspects by their connections alone.
var clusterWorkloads = []string{"coredns", "kube-dns", "kube-proxy"}

// rank builds and orders the suspects.
func rank(rep *Report, c *etcd.ClusterCensus, th Thresholds) []Suspect {
	var out []Suspect
	share, fsName := serviceAccountRequestShare(rep)
	for _, t := range rep.Talkers {
		if t.Kind == "Process" && slices.Contains(controlPlaneProcesses, t.Name) {
			continue
		}
		if t.Namespace == "kube-system" && t.Kind != "Pod" && slices.Contains(clusterWorkloads, t.Name) {
			continue
		}
		out = append(out, talkerSuspect(t, c, th, share, fsName))
	}
	// Workloads new within the window that may list cluster-wide and that
	// no node saw talking: suspects by their footprint alone, kept below
	// threshold (no load is proven), so that a reader sees them.
	seen := map[string]bool{}
	for _, s := range out {
		seen[s.Kind+" "+s.Ref()] = true
	}
	for i := range c.Workloads {
		w := &c.Workloads[i]
		if !w.Recent || len(w.Lists) == 0 || seen[w.Kind+" "+w.Ref()] || w.Pods == 0 {
			continue
		}
		s := workloadSuspect(w, c)
		s.Score = math.Min(30, 10+10*math.Log10(1+float64(w.Footprint)/(1<<20)))
		s.Why = append(s.Why, "no node saw it hold connections to the API server")
		out = append(out, s)
	}
	out = append(out, preemptionSuspects(c, th)...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].AboveThreshold != out[j].AboveThreshold {
			return out[i].AboveThreshold
		}
		return out[i].Score > out[j].Score
	})
	for i := range out {
		out[i].Rank = i + 1
		out[i].Score = math.Round(out[i].Score*10) / 10
	}
	return out
}

// serviceAccountRequestShare is the service-accounts flow schema's share
// of the requests the API servers dispatched or rejected (APF on).
func serviceAccountRequestShare(rep *Report) (float64, string) {
	var sa, total float64
	for _, cp := range rep.ControlPlane {
		if cp.Health == nil {
			continue
		}
		for _, f := range cp.Health.Flows {
			n := f.Dispatched + f.Rejected
			total += n
			if f.FlowSchema == "service-accounts" {
				sa += n
			}
		}
	}
	if total == 0 {
		return 0, ""
	}
	return sa / total, "service-accounts"
}

func workloadSuspect(w *etcd.Workload, c *etcd.ClusterCensus) Suspect {
	s := Suspect{Kind: w.Kind, Namespace: w.Namespace, Name: w.Name, ServiceAccount: w.Namespace + "/" + w.ServiceAccount}
	e := &s.Evidence
	e.Pods, e.New, e.ListBytes, e.Footprint = w.Pods, w.Recent, w.ListBytes, w.Footprint
	created := w.Created
	e.Created = &created
	if !w.Changed.IsZero() {
		ch := w.Changed
		e.Changed = &ch
	}
	for _, l := range w.Lists {
		e.Lists = append(e.Lists, l.Resource)
	}
	for _, fs := range c.FlowSchemas {
		if (fs.Exempt || fs.Favoured) && slices.Contains(fs.Subjects, "serviceaccount:"+s.ServiceAccount) {
			e.Exempted = fs.Name
		}
	}
	if w.Recent {
		when := w.Created
		verb := "created"
		if w.Changed.After(w.Created) {
			when, verb = w.Changed, "changed"
		}
		s.Why = append(s.Why, fmt.Sprintf("%s %s ago", verb, ago(when, c)))
	}
	if len(e.Lists) > 0 {
		s.Why = append(s.Why, fmt.Sprintf("its service account %s may list %s cluster-wide: %s per pod per round, %s for its %d pods", s.ServiceAccount, strings.Join(e.Lists, ", "), bytesString(e.ListBytes), bytesString(e.Footprint), e.Pods))
	}
	if e.Exempted != "" {
		s.Why = append(s.Why, fmt.Sprintf("FlowSchema %s exempts or favours it", e.Exempted))
	}
	switch w.Kind {
	case "DaemonSet":
		s.Runbook = "stop-daemonset"
		s.Selector = []string{"--daemonset", w.Ref()}
		s.Commands = []string{"breakglass pods hold --daemonset " + w.Ref(), "breakglass daemonset pause " + w.Ref()}
	case "Deployment":
		s.Runbook = "stop-deployment"
		s.Selector = []string{"--deployment", w.Ref()}
		s.Commands = []string{"breakglass pods stop --deployment " + w.Ref(), "breakglass scale deployment " + w.Ref() + " --replicas 0"}
	case "StatefulSet":
		s.Runbook = "stop-statefulset"
		s.Selector = []string{"--namespace", w.Namespace}
		s.Commands = []string{"breakglass scale statefulset " + w.Ref() + " --replicas 0"}
	}
	s.Commands = append(s.Commands, fmt.Sprintf("breakglass shed flowschema --serviceaccount %s --reject --ttl 30m", s.ServiceAccount))
	return s
}

func talkerSuspect(t Talker, c *etcd.ClusterCensus, th Thresholds, saShare float64, fs string) Suspect {
	var s Suspect
	if t.workload != nil {
		s = workloadSuspect(t.workload, c)
	} else {
		s = Suspect{Kind: t.Kind, Namespace: t.Namespace, Name: t.Name}
		switch t.Kind {
		case "Pod":
			s.Runbook = "stop-pods"
			if t.Namespace != "" {
				s.Selector = []string{"--namespace", t.Namespace, t.Name}
				s.Commands = []string{"breakglass pods stop -n " + t.Namespace + " " + t.Name}
			}
		case "Process":
			s.Runbook = "shed-apiserver"
			s.Commands = []string{"breakglass shed apply --ttl 15m"}
		}
	}
	e := &s.Evidence
	e.Conns, e.Share, e.PerNode, e.PodsSeen = t.Conns, math.Round(t.Share*1000)/1000, t.PerNode, t.Pods
	if t.Pods > 0 {
		e.PerPod = math.Round(float64(t.Conns)/float64(t.Pods)*10) / 10
	}
	if t.workload != nil && fs != "" && !strings.HasPrefix(t.Namespace, "kube-") {
		e.FlowSchema, e.RequestShare = fs, math.Round(saShare*1000)/1000
	}
	load := t.Conns >= th.MinConns && (t.Share >= th.MinShare || e.PerPod >= th.MinPerPod)
	// Connections weigh most; a new workload, a cluster-wide list and
	// an exemption add to it.
	score := 45*math.Min(1, t.Share/0.5) + 15*math.Min(1, e.PerPod/(2*th.MinPerPod))
	if e.New {
		score += 15
	}
	if len(e.Lists) > 0 {
		score += 10
	}
	if e.Exempted != "" {
		score += 5
	}
	if e.RequestShare > 0.5 {
		score += 10
	}
	if !load {
		score = math.Min(score, th.MinScore-1)
	}
	s.Score = score
	s.AboveThreshold = load && score >= th.MinScore
	nodes := len(t.PerNode)
	why := fmt.Sprintf("%d connections to the API server from %d node%s (%.0f%% of all seen", t.Conns, nodes, plural(nodes), 100*t.Share)
	if t.Pods > 0 {
		why += fmt.Sprintf(", %.1f per pod", e.PerPod)
	}
	s.Why = append([]string{why + ")"}, s.Why...)
	if e.FlowSchema != "" {
		s.Why = append(s.Why, fmt.Sprintf("flow schema %s carries %.0f%% of the requests the API servers dispatched or rejected", e.FlowSchema, 100*e.RequestShare))
	}
	return s
}

// preemptionSuspects finds the 2019 cascade: a new (or globalDefault)
// PriorityClass, and the workloads whose pods preempt others.
func preemptionSuspects(c *etcd.ClusterCensus, th Thresholds) []Suspect {
	var preemptions int32
	victims := map[string]bool{}
	preemptors := map[string]int32{}
	// across: the preemptor's pods evicted pods of another namespace (it
	// starts a cascade), not only their own siblings (the cascade itself:
	// a replacement with the new default priority evicting the next).
	across := map[string]bool{}
	for _, e := range c.Scheduling {
		if e.Reason != "Preempted" {
			continue
		}
		preemptions += e.Count
		victims[e.Namespace] = true
		if e.Related != "" {
			preemptors[e.Related] += e.Count
			if ns, _, _ := strings.Cut(e.Related, "/"); ns != e.Namespace {
				across[e.Related] = true
			}
		}
	}
	if preemptions < int32(th.MinPreemptions) {
		return nil
	}
	var out []Suspect
	for _, pc := range c.PriorityClasses {
		if !pc.Recent && !pc.GlobalDefault {
			continue
		}
		if strings.HasPrefix(pc.Name, "system-") {
			continue
		}
		s := Suspect{Kind: "PriorityClass", Name: pc.Name, Runbook: "neutralise-priority"}
		e := &s.Evidence
		created := pc.Created
		e.Created, e.New, e.GlobalDefault, e.Value, e.Preemptions = &created, pc.Recent, pc.GlobalDefault, pc.Value, preemptions
		e.Victims = sortedKeys(victims)
		if pc.GlobalDefault {
			s.Why = append(s.Why, fmt.Sprintf("globalDefault: every pod without a class gets priority %d", pc.Value))
		}
		if pc.Recent {
			s.Why = append(s.Why, fmt.Sprintf("created %s ago", ago(pc.Created, c)))
		}
		s.Why = append(s.Why, fmt.Sprintf("%d recent preemptions of pods in %s", preemptions, strings.Join(e.Victims, ", ")))
		s.Score = 50
		if pc.GlobalDefault {
			s.Score += 25
		}
		if pc.Recent {
			s.Score += 15
		}
		s.AboveThreshold = s.Score >= th.MinScore
		s.Commands = []string{"breakglass get priorityclasses " + pc.Name + " -o yaml"}
		out = append(out, s)
	}
	// The preempting pods' owners, merged per workload.
	var workloads []Suspect
	for _, ref := range sortedKeys(preemptors) {
		ns, name, _ := strings.Cut(ref, "/")
		w := preemptorWorkload(c, ns, name)
		var s Suspect
		if w != nil {
			s = workloadSuspect(w, c)
			s.Runbook = "stop-preemptor"
			if w.Kind == "Deployment" {
				s.Commands = []string{"breakglass scale deployment " + w.Ref() + " --replicas 0"}
			}
		} else {
			s = Suspect{Kind: "Pod", Namespace: ns, Name: name, Runbook: "stop-preemptor", Selector: []string{"--namespace", ns, name}}
		}
		s.Evidence.Preemptions = preemptors[ref]
		what := "pods of its own (the cascade: replacements with the new priority evict the next)"
		s.Score = 40 + math.Min(20, 4*float64(preemptors[ref]))
		if across[ref] {
			what = "pods of other workloads (it starts the cascade)"
			s.Score += 25
		}
		s.Why = append([]string{fmt.Sprintf("its pod %s preempted %d %s", ref, preemptors[ref], what)}, s.Why...)
		s.AboveThreshold = s.Score >= th.MinScore
		workloads = mergeSuspect(workloads, s)
	}
	out = append(out, workloads...)
	for i := range out {
		if out[i].Kind == "PriorityClass" {
			out[i].Evidence.Preemptors = sortedKeys(preemptors)
		}
	}
	return out
}

// preemptorWorkload finds the workload of a preempting pod by its name: a
// Deployment's pods are NAME-HASH-XXXXX, a DaemonSet's and a StatefulSet's
// NAME-XXXXX and NAME-N (reading the pod is not needed).
func preemptorWorkload(c *etcd.ClusterCensus, ns, pod string) *etcd.Workload {
	var best *etcd.Workload
	for i := range c.Workloads {
		w := &c.Workloads[i]
		if w.Namespace != ns || !strings.HasPrefix(pod, w.Name+"-") {
			continue
		}
		if best == nil || len(w.Name) > len(best.Name) {
			best = w
		}
	}
	return best
}

// mergeSuspect adds s, or adds its preemptions to the same suspect.
func mergeSuspect(out []Suspect, s Suspect) []Suspect {
	for i := range out {
		if out[i].Kind == s.Kind && out[i].Ref() == s.Ref() {
			out[i].Evidence.Preemptions += s.Evidence.Preemptions
			out[i].Score = math.Max(out[i].Score, s.Score)
			out[i].AboveThreshold = out[i].AboveThreshold || s.AboveThreshold
			return out
		}
	}
	return append(out, s)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func ago(t time.Time, c *etcd.ClusterCensus) string {
	d := c.Time.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String()
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func bytesString(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
