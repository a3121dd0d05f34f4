package diagnose

import (
	"sort"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops/netconn"
)

// Talker is one client of the API server, summed over the cluster: a
// workload (the owner of the pods that hold connections), a pod with no
// known owner, or a process outside pods (kubelet, the controller manager).
type Talker struct {
	// Kind is DaemonSet, Deployment, StatefulSet, Pod or Process.
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Conns is its established connections to the API server; Share its
	// part of all such connections seen on the nodes.
	Conns int     `json:"conns"`
	Share float64 `json:"share"`
	// Pods counts its pods that hold connections; PerNode the connections
	// from each node.
	Pods    int         `json:"pods,omitempty"`
	PerNode []NodeConns `json:"perNode"`

	workload *etcd.Workload
}

// NodeConns is one node's connections.
type NodeConns struct {
	Node  string `json:"node"`
	Conns int    `json:"conns"`
}

// Ref is what a selector flag takes: NAMESPACE/NAME, or NAME.
func (t Talker) Ref() string {
	if t.Namespace == "" {
		return t.Name
	}
	return t.Namespace + "/" + t.Name
}

// podsOf returns the pods holding connections on one node, named through
// containerd where it answered.
func podsOf(read *nodeRead) []PodConns {
	byUID := map[string]*PodConns{}
	var order []string
	for _, p := range read.table.Processes {
		if p.PodUID == "" {
			continue
		}
		pc := byUID[p.PodUID]
		if pc == nil {
			pc = &PodConns{UID: p.PodUID}
			byUID[p.PodUID] = pc
			order = append(order, p.PodUID)
		}
		pc.Conns += p.Conns
	}
	for _, p := range read.pods {
		if pc := byUID[p.UID]; pc != nil {
			pc.Namespace, pc.Name, pc.labels = p.Namespace, p.Name, p.Labels
		}
	}
	out := make([]PodConns, 0, len(order))
	for _, uid := range order {
		out = append(out, *byUID[uid])
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Conns > out[j].Conns })
	return out
}

// addTalkers adds one node's clients: pods by their owner, other
// processes by their command name.
func addTalkers(m map[string]*Talker, c *etcd.ClusterCensus, node string, t *netconn.Table, podConns []PodConns) {
	add := func(key string, mk func() *Talker, conns int, pod bool) {
		tk := m[key]
		if tk == nil {
			tk = mk()
			m[key] = tk
		}
		tk.Conns += conns
		if pod {
			tk.Pods++
		}
		if n := len(tk.PerNode); n > 0 && tk.PerNode[n-1].Node == node {
			tk.PerNode[n-1].Conns += conns
		} else {
			tk.PerNode = append(tk.PerNode, NodeConns{Node: node, Conns: conns})
		}
	}
	for i := range podConns {
		p := &podConns[i]
		if p.Name == "" {
			add("pod:"+p.UID, func() *Talker { return &Talker{Kind: "Pod", Name: p.UID} }, p.Conns, true)
			continue
		}
		if w, ok := c.OwnerOf(p.Namespace, p.labels); ok {
			p.Owner = w.Kind + " " + w.Ref()
			add("w:"+p.Owner, func() *Talker { return &Talker{Kind: w.Kind, Namespace: w.Namespace, Name: w.Name, workload: w} }, p.Conns, true)
			continue
		}
		add("pod:"+p.Namespace+"/"+p.Name, func() *Talker { return &Talker{Kind: "Pod", Namespace: p.Namespace, Name: p.Name} }, p.Conns, true)
	}
	for _, p := range t.Processes {
		if p.PodUID != "" {
			continue
		}
		comm := p.Comm
		if comm == "" {
			comm = "?"
		}
		add("proc:"+comm, func() *Talker { return &Talker{Kind: "Process", Name: comm} }, p.Conns, false)
	}
}

func sortTalkers(m map[string]*Talker, total int) []Talker {
	out := make([]Talker, 0, len(m))
	for _, t := range m {
		if total > 0 {
			t.Share = float64(t.Conns) / float64(total)
		}
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Conns != out[j].Conns {
			return out[i].Conns > out[j].Conns
		}
		return out[i].Kind+out[i].Ref() < out[j].Kind+out[j].Ref()
	})
	return out
}
