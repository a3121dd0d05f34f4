package lab

import (
	"context"
	"fmt"
	"io"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The incidents the lab can start (see ../shared/INCIDENTS.md).
const (
	IncidentOverload   = "overload"
	IncidentPreemption = "preemption"
)

// Where the incidents put their objects.
const (
	TelemetryNamespace = "telemetry"
	TelemetryDaemonSet = "telemetry-agent"
	IngesterNamespace  = "cortex"
	NewClusterNS       = "cortex-new"
)

// overloadLimits are the API server limits the overload incident tightens
// to. Priority and fairness is turned off so that the classic inflight
// limiter answers 429 at once; system:masters stays exempt, as it is in
// production, which is why the lab's admin kubeconfig keeps working while
// the oncall user's kubectl does not.
var overloadLimits = map[string]string{
	"enable-priority-and-fairness":   "false",
	"max-requests-inflight":          "4",
	"max-mutating-requests-inflight": "20",
}

// OverloadResult is the evidence of the overload incident.
type OverloadResult struct {
	Before Probe `json:"before"`
	After  Probe `json:"after"`
	// TelemetryPods is how many telemetry pods ran, one per worker.
	TelemetryPods int `json:"telemetryPods"`
}

// Overload reproduces the December 2024 outage: a telemetry DaemonSet whose
// every pod LISTs the whole cluster in a tight loop, on an API server whose
// inflight limits are tight, until ordinary kubectl requests get 429s.
func (l *Lab) Overload(ctx context.Context, log io.Writer) (*OverloadResult, error) {
	logf := func(format string, a ...any) { fmt.Fprintf(log, "incident: "+format+"\n", a...) }
	c, err := l.client()
	if err != nil {
		return nil, err
	}
	if _, err := c.AppsV1().DaemonSets(TelemetryNamespace).Get(ctx, TelemetryDaemonSet, metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("the overload incident is already running (DaemonSet %s/%s exists)\nhint: run breakglass lab incident reset first", TelemetryNamespace, TelemetryDaemonSet)
	}
	res := &OverloadResult{}
	logf("measuring what kubectl sees before the incident")
	if res.Before, err = l.probeAPI(ctx, "before", 20, 5*time.Second); err != nil {
		return nil, err
	}

	logf("tightening the apiserver's inflight limits (%s)", flagList(overloadLimits))
	if err := l.setAPIServerFlags(ctx, overloadLimits); err != nil {
		return nil, err
	}
	logf("creating DaemonSet %s/%s: every pod LISTs pods, nodes and endpoints in a loop", TelemetryNamespace, TelemetryDaemonSet)
	if err := createTelemetry(ctx, c, l.State.APIServer); err != nil {
		return nil, err
	}
	workers := len(l.State.HostsWithRole("worker"))
	pods, err := waitRunning(ctx, c, TelemetryNamespace, "app="+TelemetryDaemonSet, workers, 90*time.Second)
	res.TelemetryPods = len(pods)
	if err != nil {
		return res, err
	}
	logf("%d telemetry pods running; letting the load build", res.TelemetryPods)
	sleepCtx(ctx, 10*time.Second)
	if res.After, err = l.probeAPI(ctx, "after", 20, 5*time.Second); err != nil {
		return res, err
	}
	l.State.Incidents = appendUnique(l.State.Incidents, IncidentOverload)
	return res, l.State.Save()
}

// setAPIServerFlags rewrites the API server's spec with extra flags; its
// supervisor restarts it, as a kubelet does when a static pod's manifest
// changes. It returns once the API server is ready again.
func (l *Lab) setAPIServerFlags(ctx context.Context, extra map[string]string) error {
	cp := l.State.Hosts[0]
	if err := writeSpec(cp, "kube-apiserver", apiserverSpec(cp, l.State.Binaries.KubeAPIServer, extra)); err != nil {
		return err
	}
	// The supervisor notices within a second; wait for the old process to
	// stop answering before waiting for the new one.
	sleepCtx(ctx, 3*time.Second)
	return l.waitAPIServer(ctx, 90*time.Second)
}

func flagList(m map[string]string) string {
	s := ""
	for _, f := range sortedFlags(m) {
		if s != "" {
			s += " "
		}
		s += f
	}
	return s
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func createTelemetry(ctx context.Context, c kubernetes.Interface, apiserver string) error {
	ns := TelemetryNamespace
	labels := map[string]string{"app": TelemetryDaemonSet}
	objs := []func() error{
		func() error {
			_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: TelemetryDaemonSet}}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: "telemetry-agent"},
				Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "nodes", "endpoints", "services"}, Verbs: []string{"get", "list", "watch"}}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "telemetry-agent"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "telemetry-agent"},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: TelemetryDaemonSet, Namespace: ns}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
				ObjectMeta: metav1.ObjectMeta{Name: TelemetryDaemonSet, Labels: labels},
				Spec: appsv1.DaemonSetSpec{
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec: corev1.PodSpec{
							ServiceAccountName: TelemetryDaemonSet,
							// No kube-proxy in the lab: the agent uses the
							// node's network and the apiserver's address.
							HostNetwork: true,
							DNSPolicy:   corev1.DNSClusterFirstWithHostNet,
							Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
							Containers: []corev1.Container{{
								Name:            "agent",
								Image:           TelemetryImage,
								ImagePullPolicy: corev1.PullNever,
								Env: []corev1.EnvVar{
									{Name: "APISERVER", Value: apiserver},
									{Name: "CONCURRENCY", Value: "16"},
								},
							}},
							TerminationGracePeriodSeconds: ptr.To[int64](2),
						},
					},
				},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, f := range objs {
		if err := f(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("telemetry: %w", err)
		}
	}
	return nil
}

// PreemptionResult is the evidence of the preemption incident.
type PreemptionResult struct {
	OriginalIngesters int `json:"originalIngesters"`
	// Evicted is how many of the original (priority 0) ingesters were
	// preempted.
	Evicted int `json:"evicted"`
	// Running and Pending count ingester pods at the end.
	Running int `json:"running"`
	Pending int `json:"pending"`
	// PreemptedEvents counts the scheduler's Preempted events.
	PreemptedEvents int `json:"preemptedEvents"`
}

// ingesterCPU is sized so that two ingesters fill a lab worker (each
// reports the machine's 2 CPUs as allocatable).
var ingesterCPU = resource.MustParse("900m")

// Preemption reproduces the July 2019 cascade: production ingesters run with
// no priority; PriorityClasses arrive with a globalDefault; a new workload
// gets that default and preempts an ingester, whose replacement now has the
// default priority too and preempts the next, until every original ingester
// has been evicted.
func (l *Lab) Preemption(ctx context.Context, log io.Writer) (*PreemptionResult, error) {
	logf := func(format string, a ...any) { fmt.Fprintf(log, "incident: "+format+"\n", a...) }
	c, err := l.client()
	if err != nil {
		return nil, err
	}
	if _, err := c.SchedulingV1().PriorityClasses().Get(ctx, "medium", metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("the preemption incident is already running (PriorityClass medium exists)\nhint: run breakglass lab incident reset first")
	}
	if _, err := c.CoreV1().Namespaces().Get(ctx, IngesterNamespace, metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("namespace %s exists: the preemption incident ran before and was not reset\nhint: run breakglass lab incident reset (it waits for the namespace to go)", IngesterNamespace)
	}
	workers := len(l.State.HostsWithRole("worker"))
	res := &PreemptionResult{OriginalIngesters: 2 * workers}
	for _, ns := range []string{IngesterNamespace, NewClusterNS} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	logf("starting %d production ingesters (no priority class) that fill every worker", res.OriginalIngesters)
	if _, err := c.AppsV1().Deployments(IngesterNamespace).Create(ctx, cpuDeployment("ingester", int32(res.OriginalIngesters)), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	original, err := waitRunning(ctx, c, IngesterNamespace, "app=ingester", res.OriginalIngesters, 120*time.Second)
	if err != nil {
		return nil, err
	}
	logf("adding PriorityClasses critical, high, medium (globalDefault) and low")
	for _, pc := range []struct {
		name  string
		value int32
		def   bool
	}{{"critical", 1000000, false}, {"high", 100000, false}, {"medium", 1000, true}, {"low", 100, false}} {
		_, err := c.SchedulingV1().PriorityClasses().Create(ctx, &schedulingv1.PriorityClass{
			ObjectMeta: metav1.ObjectMeta{Name: pc.name}, Value: pc.value, GlobalDefault: pc.def,
			Description: "added by breakglass lab incident preemption",
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	logf("launching a new cluster's workload: it gets the default (medium) priority")
	if _, err := c.AppsV1().Deployments(NewClusterNS).Create(ctx, cpuDeployment("new-cluster", int32(workers)), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	// The cascade is over when every original ingester is gone; if it
	// stalls, the result says how far it went.
	err = poll(ctx, 2*time.Second, 120*time.Second, func(ctx context.Context) bool {
		pods, err := c.CoreV1().Pods(IngesterNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=ingester"})
		if err != nil {
			return false
		}
		left := 0
		res.Running, res.Pending = 0, 0
		for _, p := range pods.Items {
			if original[p.Name] && p.DeletionTimestamp == nil {
				left++
			}
			switch p.Status.Phase {
			case corev1.PodRunning:
				res.Running++
			case corev1.PodPending:
				res.Pending++
			}
		}
		res.Evicted = len(original) - left
		return left == 0
	})
	if err != nil && err != errTimeout {
		return res, err
	}
	if evs, err := c.CoreV1().Events(IngesterNamespace).List(ctx, metav1.ListOptions{FieldSelector: "reason=Preempted"}); err == nil {
		res.PreemptedEvents = len(evs.Items)
	}
	logf("%d of %d original ingesters preempted; %d ingesters running, %d pending", res.Evicted, res.OriginalIngesters, res.Running, res.Pending)
	l.State.Incidents = appendUnique(l.State.Incidents, IncidentPreemption)
	return res, l.State.Save()
}

func cpuDeployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: name, Image: PauseImage, ImagePullPolicy: corev1.PullNever,
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: ingesterCPU}},
					}},
					TerminationGracePeriodSeconds: ptr.To[int64](1),
				},
			},
		},
	}
}

// waitRunning waits for want Running pods matching selector and returns
// their names.
func waitRunning(ctx context.Context, c kubernetes.Interface, ns, selector string, want int, timeout time.Duration) (map[string]bool, error) {
	names := map[string]bool{}
	err := poll(ctx, time.Second, timeout, func(ctx context.Context) bool {
		pods, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false
		}
		names = map[string]bool{}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				names[p.Name] = true
			}
		}
		return len(names) >= want
	})
	if err == errTimeout {
		return names, fmt.Errorf("%s: %d of %d pods Running (%s) after %s", ns, len(names), want, selector, timeout)
	}
	return names, err
}

// Reset ends the lab's incidents: the telemetry DaemonSet and the
// preemption workloads are deleted, the PriorityClasses removed and the
// API server's limits restored.
func (l *Lab) Reset(ctx context.Context, log io.Writer) error {
	c, err := l.client()
	if err != nil {
		return err
	}
	cp := l.State.Hosts[0]
	if cur, _, err := readSpec(specPath(cp, "kube-apiserver")); err != nil || !equalArgv(cur.Argv, apiserverSpec(cp, l.State.Binaries.KubeAPIServer, nil).Argv) {
		fmt.Fprintln(log, "incident: restoring the apiserver's limits")
		if err := l.setAPIServerFlags(ctx, nil); err != nil {
			return err
		}
	}
	fg := metav1.DeletePropagationForeground
	del := metav1.DeleteOptions{PropagationPolicy: &fg}
	for _, ns := range []string{TelemetryNamespace, IngesterNamespace, NewClusterNS} {
		if err := c.CoreV1().Namespaces().Delete(ctx, ns, del); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	for _, name := range []string{"telemetry-agent"} {
		if err := c.RbacV1().ClusterRoleBindings().Delete(ctx, name, del); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if err := c.RbacV1().ClusterRoles().Delete(ctx, name, del); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	for _, pc := range []string{"critical", "high", "medium", "low"} {
		if err := c.SchedulingV1().PriorityClasses().Delete(ctx, pc, del); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	// Wait for the namespaces to go, so that the incidents can start again.
	var left string
	err = poll(ctx, time.Second, 2*time.Minute, func(ctx context.Context) bool {
		for _, ns := range []string{TelemetryNamespace, IngesterNamespace, NewClusterNS} {
			if _, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				left = ns
				return false
			}
		}
		return true
	})
	if err == errTimeout {
		return fmt.Errorf("namespace %s still terminating after 2m", left)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(log, "incident: every incident object is gone")
	l.State.Incidents = nil
	return l.State.Save()
}

func equalArgv(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
