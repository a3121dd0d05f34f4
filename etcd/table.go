package etcd

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	flowv1 "k8s.io/api/flowcontrol/v1"
	schedv1 "k8s.io/api/scheduling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
)

// Columns returns the kubectl-like table header of a resource. The rows of
// resources without their own columns need only metadata (NeedsObject).
func Columns(r Resource, wide bool) []string {
	var c []string
	switch r.Kind {
	case "Pod":
		c = []string{"NAME", "READY", "STATUS", "RESTARTS", "NODE", "AGE"}
		if wide {
			c = append(c, "IP", "NOMINATED NODE")
		}
	case "Node":
		c = []string{"NAME", "STATUS", "ROLES", "ADDRESS", "AGE", "VERSION"}
		if wide {
			c = append(c, "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME")
		}
	case "DaemonSet":
		c = []string{"NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR", "AGE"}
	case "Deployment":
		c = []string{"NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"}
	case "ReplicaSet":
		c = []string{"NAME", "DESIRED", "CURRENT", "READY", "AGE"}
	case "StatefulSet":
		c = []string{"NAME", "READY", "AGE"}
	case "Job":
		c = []string{"NAME", "COMPLETIONS", "AGE"}
	case "Service":
		c = []string{"NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"}
	case "Namespace":
		c = []string{"NAME", "STATUS", "AGE"}
	case "ConfigMap":
		c = []string{"NAME", "DATA", "AGE"}
	case "PriorityClass":
		c = []string{"NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"}
	case "FlowSchema":
		c = []string{"NAME", "PRIORITYLEVEL", "MATCHINGPRECEDENCE", "DISTINGUISHERMETHOD", "AGE"}
	case "PriorityLevelConfiguration":
		c = []string{"NAME", "TYPE", "NOMINALCONCURRENCYSHARES", "QUEUES", "HANDSIZE", "QUEUELENGTHLIMIT", "AGE"}
	default:
		c = []string{"NAME", "AGE"}
	}
	if wide && r.Kind != "Pod" && r.Kind != "Node" {
		c = append(c, "REVISION", "BYTES")
	}
	return c
}

// NeedsObject reports whether Row needs the fully decoded object (and not
// only its metadata) for r.
func NeedsObject(r Resource) bool {
	return len(Columns(r, false)) > 2
}

// Row returns one table row for an object, matching Columns. An object that
// could not be decoded gets its name and the reason.
func Row(o *Object, wide bool, now time.Time) []string {
	cols := Columns(o.Resource, wide)
	row := make([]string, len(cols))
	row[0] = o.Name
	for i := 1; i < len(row); i++ {
		row[i] = "<unknown>"
	}
	if o.Decoded == nil {
		if len(row) > 1 {
			row[1] = "<" + errWord(o.Err) + ">"
		}
		return row
	}
	m := o.Decoded.Meta()
	age := Age(m.GetCreationTimestamp(), now)
	var vals []string
	switch x := o.Decoded.Object.(type) {
	case *corev1.Pod:
		vals = podRow(x, age, wide)
	case *corev1.Node:
		vals = nodeRow(x, age, wide)
	case *appsv1.DaemonSet:
		s := x.Status
		vals = []string{itoa(s.DesiredNumberScheduled), itoa(s.CurrentNumberScheduled), itoa(s.NumberReady), itoa(s.UpdatedNumberScheduled), itoa(s.NumberAvailable), mapString(x.Spec.Template.Spec.NodeSelector), age}
	case *appsv1.Deployment:
		vals = []string{fmt.Sprintf("%d/%d", x.Status.ReadyReplicas, replicas(x.Spec.Replicas)), itoa(x.Status.UpdatedReplicas), itoa(x.Status.AvailableReplicas), age}
	case *appsv1.ReplicaSet:
		vals = []string{itoa(replicas(x.Spec.Replicas)), itoa(x.Status.Replicas), itoa(x.Status.ReadyReplicas), age}
	case *appsv1.StatefulSet:
		vals = []string{fmt.Sprintf("%d/%d", x.Status.ReadyReplicas, replicas(x.Spec.Replicas)), age}
	case *batchv1.Job:
		vals = []string{fmt.Sprintf("%d/%d", x.Status.Succeeded, replicas(x.Spec.Completions)), age}
	case *corev1.Service:
		vals = []string{string(x.Spec.Type), orNone(x.Spec.ClusterIP), servicePorts(x), age}
	case *corev1.Namespace:
		vals = []string{string(x.Status.Phase), age}
	case *corev1.ConfigMap:
		vals = []string{strconv.Itoa(len(x.Data) + len(x.BinaryData)), age}
	case *schedv1.PriorityClass:
		pp := ""
		if x.PreemptionPolicy != nil {
			pp = string(*x.PreemptionPolicy)
		}
		vals = []string{strconv.Itoa(int(x.Value)), strconv.FormatBool(x.GlobalDefault), age, pp}
	case *flowv1.FlowSchema:
		dm := "<none>"
		if x.Spec.DistinguisherMethod != nil {
			dm = string(x.Spec.DistinguisherMethod.Type)
		}
		vals = []string{x.Spec.PriorityLevelConfiguration.Name, itoa(x.Spec.MatchingPrecedence), dm, age}
	case *flowv1.PriorityLevelConfiguration:
		vals = []string{string(x.Spec.Type), "<none>", "<none>", "<none>", "<none>", age}
		if l := x.Spec.Limited; l != nil {
			if l.NominalConcurrencyShares != nil {
				vals[1] = itoa(*l.NominalConcurrencyShares)
			}
			if q := l.LimitResponse.Queuing; q != nil {
				vals[2], vals[3], vals[4] = itoa(q.Queues), itoa(q.HandSize), itoa(q.QueueLengthLimit)
			}
		}
	default:
		vals = []string{age}
	}
	if wide && o.Resource.Kind != "Pod" && o.Resource.Kind != "Node" {
		vals = append(vals, strconv.FormatInt(o.ModRevision, 10), strconv.Itoa(o.Size))
	}
	copy(row[1:], vals)
	return row
}

func errWord(err error) string {
	if de, ok := err.(*DecodeError); ok {
		if de.Encoding == EncodingEncrypted {
			return "encrypted " + de.Provider
		}
		return "undecodable " + string(de.Encoding)
	}
	return "error"
}

// Age formats the time since t as kubectl does (5d3h, 12m, 45s).
func Age(t metav1.Time, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

func podRow(p *corev1.Pod, age string, wide bool) []string {
	ready, restarts := 0, int32(0)
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Ready {
			ready++
		}
		restarts += cs.RestartCount
	}
	reason := string(p.Status.Phase)
	if p.Status.Reason != "" {
		reason = p.Status.Reason
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			reason = w.Reason
		} else if t := cs.State.Terminated; t != nil && t.Reason != "" && reason == string(corev1.PodRunning) {
			reason = t.Reason
		}
	}
	if p.DeletionTimestamp != nil {
		reason = "Terminating"
	}
	if reason == "" {
		reason = "Pending"
	}
	row := []string{fmt.Sprintf("%d/%d", ready, len(p.Spec.Containers)), reason, itoa(restarts), orNone(p.Spec.NodeName), age}
	if wide {
		row = append(row, orNone(p.Status.PodIP), orNone(p.Status.NominatedNodeName))
	}
	return row
}

func nodeRow(n *corev1.Node, age string, wide bool) []string {
	status := "Unknown"
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == corev1.ConditionTrue {
				status = "Ready"
			} else {
				status = "NotReady"
			}
		}
	}
	if n.Spec.Unschedulable {
		status += ",SchedulingDisabled"
	}
	var roles []string
	for k := range n.Labels {
		if r, ok := strings.CutPrefix(k, "node-role.kubernetes.io/"); ok && r != "" {
			roles = append(roles, r)
		}
	}
	slices.Sort(roles)
	addr := ""
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			addr = a.Address
			break
		}
	}
	row := []string{status, orNone(strings.Join(roles, ",")), orNone(addr), age, n.Status.NodeInfo.KubeletVersion}
	if wide {
		ni := n.Status.NodeInfo
		row = append(row, ni.OSImage, ni.KernelVersion, ni.ContainerRuntimeVersion)
	}
	return row
}

func servicePorts(s *corev1.Service) string {
	var ps []string
	for _, p := range s.Spec.Ports {
		v := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if p.NodePort != 0 {
			v = fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol)
		}
		ps = append(ps, v)
	}
	return orNone(strings.Join(ps, ","))
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

func itoa[T ~int32 | ~int64 | ~int](v T) string { return strconv.FormatInt(int64(v), 10) }

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func mapString(m map[string]string) string {
	if len(m) == 0 {
		return "<none>"
	}
	keys := slices.Sorted(maps.Keys(m))
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}
