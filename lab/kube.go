package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kube is the lab's client of its own apiserver: typed objects through
// client-go's dynamic client. The typed clientset would do the same work,
// but linking it registers every API group's types in client-go's scheme
// when any breakglass command starts (about 5 ms of package init that
// exec, for one, never needs).
type kube struct {
	dyn  dynamic.Interface
	http *http.Client
	host string
}

func newKube(kubeconfigPath string, timeout time.Duration) (*kube, error) {
	return newKubeQPS(kubeconfigPath, timeout, 50, 100)
}

// newKubeUnlimited is a client with no client-side rate limit, for bulk
// creates the apiserver's own flow control can judge.
func newKubeUnlimited(kubeconfigPath string, timeout time.Duration) (*kube, error) {
	return newKubeQPS(kubeconfigPath, timeout, -1, 0)
}

func newKubeQPS(kubeconfigPath string, timeout time.Duration, qps float32, burst int) (*kube, error) {
	return newKubeHost(kubeconfigPath, "", timeout, qps, burst)
}

// newKubeAt is newKube's client for the API server at host (a URL) with
// kubeconfigPath's credentials: the lab's second API server, on cp-2.
func newKubeAt(kubeconfigPath, host string, timeout time.Duration) (*kube, error) {
	return newKubeHost(kubeconfigPath, host, timeout, 50, 100)
}

func newKubeHost(kubeconfigPath, host string, timeout time.Duration, qps float32, burst int) (*kube, error) {
	cfg, err := clientcmd.BuildConfigFromFlags(host, kubeconfigPath)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = timeout
	cfg.QPS, cfg.Burst = qps, burst
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return &kube{dyn: dyn, http: hc, host: strings.TrimSuffix(cfg.Host, "/")}, nil
}

// raw GETs a non-resource path (/readyz, /metrics) and returns its body;
// a status other than 200 is an error that carries the body.
func (k *kube) raw(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.host+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := k.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, apierrors.NewGenericServerResponse(resp.StatusCode, http.MethodGet, schema.GroupResource{}, path, strings.TrimSpace(string(body)), 0, false)
	}
	return body, nil
}

// res is one resource of the lab's apiserver, with objects of type T.
type res[T any] struct {
	ri  dynamic.ResourceInterface
	gvk schema.GroupVersionKind
}

func resourceOf[T any](k *kube, gv schema.GroupVersion, resource, kind, ns string) res[T] {
	var ri dynamic.ResourceInterface = k.dyn.Resource(gv.WithResource(resource))
	if ns != "" {
		ri = k.dyn.Resource(gv.WithResource(resource)).Namespace(ns)
	}
	return res[T]{ri: ri, gvk: gv.WithKind(kind)}
}

func (r res[T]) Create(ctx context.Context, obj *T, opts metav1.CreateOptions) (*T, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(r.gvk)
	out, err := r.ri.Create(ctx, u, opts)
	if err != nil {
		return nil, err
	}
	return fromUnstructured[T](out)
}

func (r res[T]) Get(ctx context.Context, name string, opts metav1.GetOptions) (*T, error) {
	u, err := r.ri.Get(ctx, name, opts)
	if err != nil {
		return nil, err
	}
	return fromUnstructured[T](u)
}

func (r res[T]) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return r.ri.Delete(ctx, name, opts)
}

// List returns the items of one LIST.
func (r res[T]) List(ctx context.Context, opts metav1.ListOptions) ([]T, error) {
	l, err := r.ri.List(ctx, opts)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(l.Items))
	for i := range l.Items {
		t, err := fromUnstructured[T](&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *t)
	}
	return out, nil
}

func fromUnstructured[T any](u *unstructured.Unstructured) (*T, error) {
	var t T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &t); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return &t, nil
}

var (
	coreGV       = corev1.SchemeGroupVersion
	appsGV       = appsv1.SchemeGroupVersion
	rbacGV       = rbacv1.SchemeGroupVersion
	schedulingGV = schedulingv1.SchemeGroupVersion
)

func (k *kube) Namespaces() res[corev1.Namespace] {
	return resourceOf[corev1.Namespace](k, coreGV, "namespaces", "Namespace", "")
}
func (k *kube) Nodes() res[corev1.Node] {
	return resourceOf[corev1.Node](k, coreGV, "nodes", "Node", "")
}
func (k *kube) Pods(ns string) res[corev1.Pod] {
	return resourceOf[corev1.Pod](k, coreGV, "pods", "Pod", ns)
}
func (k *kube) Events(ns string) res[corev1.Event] {
	return resourceOf[corev1.Event](k, coreGV, "events", "Event", ns)
}
func (k *kube) ConfigMaps(ns string) res[corev1.ConfigMap] {
	return resourceOf[corev1.ConfigMap](k, coreGV, "configmaps", "ConfigMap", ns)
}
func (k *kube) Services(ns string) res[corev1.Service] {
	return resourceOf[corev1.Service](k, coreGV, "services", "Service", ns)
}
func (k *kube) ServiceAccounts(ns string) res[corev1.ServiceAccount] {
	return resourceOf[corev1.ServiceAccount](k, coreGV, "serviceaccounts", "ServiceAccount", ns)
}
func (k *kube) DaemonSets(ns string) res[appsv1.DaemonSet] {
	return resourceOf[appsv1.DaemonSet](k, appsGV, "daemonsets", "DaemonSet", ns)
}
func (k *kube) Deployments(ns string) res[appsv1.Deployment] {
	return resourceOf[appsv1.Deployment](k, appsGV, "deployments", "Deployment", ns)
}
func (k *kube) ClusterRoles() res[rbacv1.ClusterRole] {
	return resourceOf[rbacv1.ClusterRole](k, rbacGV, "clusterroles", "ClusterRole", "")
}
func (k *kube) RoleBindings(ns string) res[rbacv1.RoleBinding] {
	return resourceOf[rbacv1.RoleBinding](k, rbacGV, "rolebindings", "RoleBinding", ns)
}

func (k *kube) ClusterRoleBindings() res[rbacv1.ClusterRoleBinding] {
	return resourceOf[rbacv1.ClusterRoleBinding](k, rbacGV, "clusterrolebindings", "ClusterRoleBinding", "")
}
func (k *kube) PriorityClasses() res[schedulingv1.PriorityClass] {
	return resourceOf[schedulingv1.PriorityClass](k, schedulingGV, "priorityclasses", "PriorityClass", "")
}
