package lab

import (
	"context"
	"fmt"
	"io"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The incidents' objects: where they run their workloads, and what they
// add cluster-wide.
var (
	incidentNamespaces      = []string{TelemetryNamespace, FleetNamespace, IngesterNamespace, NewClusterNS}
	incidentClusterRoles    = []string{"telemetry-agent"} // and bindings of the same name
	incidentPriorityClasses = []string{"critical", "high", "medium", "low"}
)

// incidentObjectLeft names one incident object the apiserver still has
// (terminating or not), or returns "" when every one is gone. It reads as
// the admin, whom the incident's limits exempt.
func (l *Lab) incidentObjectLeft(ctx context.Context, c *kube) string {
	gone := func(err error) bool { return apierrors.IsNotFound(err) }
	for _, ns := range incidentNamespaces {
		if _, err := c.Namespaces().Get(ctx, ns, metav1.GetOptions{}); !gone(err) {
			return "namespace " + ns
		}
	}
	for _, n := range incidentClusterRoles {
		if _, err := c.ClusterRoleBindings().Get(ctx, n, metav1.GetOptions{}); !gone(err) {
			return "ClusterRoleBinding " + n
		}
		if _, err := c.ClusterRoles().Get(ctx, n, metav1.GetOptions{}); !gone(err) {
			return "ClusterRole " + n
		}
	}
	for _, n := range incidentPriorityClasses {
		if _, err := c.PriorityClasses().Get(ctx, n, metav1.GetOptions{}); !gone(err) {
			return "PriorityClass " + n
		}
	}
	return ""
}

// Reset ends the lab's incidents: the API server's limits are restored
// first (through its spec on the node, so this works while it is
// saturated), then the telemetry DaemonSet and the preemption workloads are
// deleted and the PriorityClasses removed. It returns once the namespaces
// are gone from the apiserver and no worker's containerd runs any of their
// containers.
func (l *Lab) Reset(ctx context.Context, log io.Writer) error {
	c, err := l.client()
	if err != nil {
		return err
	}
	if !l.apiserverHasDefaultFlags() {
		fmt.Fprintln(log, "incident: restoring the apiserver's limits")
		if err := l.setAPIServerSpec(ctx, l.defaultAPIServerSpec()); err != nil {
			return err
		}
	}
	// Background propagation: the object goes at once and the garbage
	// collector removes its dependents. Foreground would leave each object
	// behind with a finalizer until the collector gets to it.
	bg := metav1.DeletePropagationBackground
	del := metav1.DeleteOptions{PropagationPolicy: &bg}
	for _, ns := range incidentNamespaces {
		if err := c.Namespaces().Delete(ctx, ns, del); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete namespace %s: %w", ns, err)
		}
	}
	for _, name := range incidentClusterRoles {
		if err := c.ClusterRoleBindings().Delete(ctx, name, del); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete ClusterRoleBinding %s: %w", name, err)
		}
		if err := c.ClusterRoles().Delete(ctx, name, del); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete ClusterRole %s: %w", name, err)
		}
	}
	for _, pc := range incidentPriorityClasses {
		if err := c.PriorityClasses().Delete(ctx, pc, del); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete PriorityClass %s: %w", pc, err)
		}
	}
	// Wait until every object is gone, so that the incidents can start
	// again and nothing is left behind.
	const goneTimeout = 3 * time.Minute
	var left string
	err = poll(ctx, time.Second, goneTimeout, func(ctx context.Context) bool {
		left = l.incidentObjectLeft(ctx, c)
		return left == ""
	})
	if err == errTimeout {
		return fmt.Errorf("%s still there after %s\nhint: see %s", left, goneTimeout, staticPodLogs(l.State.Hosts[0], controllerManagerExe))
	}
	if err != nil {
		return err
	}
	if err := l.waitGoneFromWorkers(ctx, agentsTimeout, incidentNamespaces...); err != nil {
		return err
	}
	// Cluster DNS resyncs once the API server answers (CoreDNS retries
	// with back-off): the lab is healthy when it answers again.
	if _, err := l.coreDNSHosts(); err != nil {
		fmt.Fprintf(log, "incident: cluster DNS not checked: %v\n", firstLine(err.Error()))
	} else if err := l.WaitDNS(ctx, 2*time.Minute); err != nil {
		return err
	}
	fmt.Fprintln(log, "incident: every incident object is gone")
	l.State.Incidents = nil
	return l.State.Save()
}
