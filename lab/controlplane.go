package lab

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Paths inside cp-1, laid out as kubeadm does.
const (
	pkiDir     = "/etc/kubernetes/pki"
	etcdPKIDir = "/etc/kubernetes/pki/etcd"
)

// writeControlPlanePKI writes cp-1's certificates as kubeadm lays them out,
// the kubeconfigs of the components and the operator, and each worker's
// kubelet credentials.
func (l *Lab) writeControlPlanePKI() error {
	s := l.State
	cp := s.Hosts[0]
	root := func(p string) string { return filepath.Join(cp.Root, p) }
	clusterCA, err := newCA("kubernetes")
	if err != nil {
		return err
	}
	etcdCA, err := newCA("etcd-ca")
	if err != nil {
		return err
	}
	pki, epki := root(pkiDir), root(etcdPKIDir)
	if err := clusterCA.write(pki, "ca"); err != nil {
		return err
	}
	if err := etcdCA.write(epki, "ca"); err != nil {
		return err
	}
	etcdIPs := []string{"127.0.0.1", cp.Address}
	for _, c := range []struct {
		ca   *ca
		dir  string
		name string
		spec certSpec
	}{
		{etcdCA, epki, "server", certSpec{cn: cp.Name, server: true, client: true, dns: []string{cp.Name, "localhost"}, ips: etcdIPs}},
		{etcdCA, epki, "peer", certSpec{cn: cp.Name, server: true, client: true, dns: []string{cp.Name, "localhost"}, ips: etcdIPs}},
		{etcdCA, epki, "healthcheck-client", certSpec{cn: "kube-etcd-healthcheck-client", client: true}},
		{etcdCA, pki, "apiserver-etcd-client", certSpec{cn: "kube-apiserver-etcd-client", client: true}},
		{clusterCA, pki, "apiserver", certSpec{cn: "kube-apiserver", server: true,
			dns: []string{cp.Name, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
			ips: []string{cp.Address, "10.96.0.1", "127.0.0.1"}}},
		{clusterCA, pki, "apiserver-kubelet-client", certSpec{cn: "kube-apiserver-kubelet-client", orgs: []string{"kubeadm:cluster-admins"}, client: true}},
	} {
		if err := c.ca.writePair(c.dir, c.name, c.spec); err != nil {
			return err
		}
	}
	if err := writeSAKeys(pki); err != nil {
		return err
	}

	// Kubeconfigs: components on cp-1 talk to the local apiserver address.
	kc := func(path, cn string, orgs []string) error {
		cert, key, err := clusterCA.issue(certSpec{cn: cn, orgs: orgs, client: true})
		if err != nil {
			return err
		}
		return writeFile(path, kubeconfig(s.APIServer, clusterCA.certPEM(), cert, key, cn), 0o600)
	}
	if err := kc(root("/etc/kubernetes/controller-manager.conf"), "system:kube-controller-manager", nil); err != nil {
		return err
	}
	if err := kc(root("/etc/kubernetes/scheduler.conf"), "system:kube-scheduler", nil); err != nil {
		return err
	}
	// As kubeadm (1.29 and later) writes them: admin.conf is a cluster
	// admin through RBAC (group kubeadm:cluster-admins, bound to
	// cluster-admin by bootstrapObjects), super-admin.conf is
	// system:masters, which RBAC cannot take away and API Priority and
	// Fairness exempts: what breakglass asks a saturated API server with
	// on the node (apiprobe.DefaultKubeconfigs, super-admin.conf first).
	if err := kc(root("/etc/kubernetes/admin.conf"), "kubernetes-admin", []string{"kubeadm:cluster-admins"}); err != nil {
		return err
	}
	if err := kc(root("/etc/kubernetes/super-admin.conf"), "kubernetes-super-admin", []string{"system:masters"}); err != nil {
		return err
	}
	// The operator's copies, in the lab directory.
	if err := kc(s.Kubeconfig, "kubernetes-admin", []string{"system:masters"}); err != nil {
		return err
	}
	if err := kc(s.OncallKubeconfig, "oncall", nil); err != nil {
		return err
	}
	opki := filepath.Join(s.Dir, "pki")
	if err := writeFile(filepath.Join(opki, "etcd-ca.crt"), etcdCA.certPEM(), 0o644); err != nil {
		return err
	}
	if err := etcdCA.writePair(opki, "etcd-client", certSpec{cn: "breakglass", client: true}); err != nil {
		return err
	}
	for _, w := range s.KubeletHosts() {
		if err := writeFile(filepath.Join(w.Root, pkiDir, "ca.crt"), clusterCA.certPEM(), 0o644); err != nil {
			return err
		}
		if err := kc(filepath.Join(w.Root, "/etc/kubernetes/kubelet.conf"), "system:node:"+w.Name, []string{"system:nodes"}); err != nil {
			return err
		}
	}
	return nil
}

func etcdSpec(cp Host, bin string) Spec {
	p := func(f string) string { return etcdPKIDir + "/" + f }
	return Spec{Argv: []string{bin,
		"--name=" + cp.Name,
		"--data-dir=/var/lib/etcd",
		"--listen-client-urls=https://127.0.0.1:2379,https://" + cp.Address + ":2379",
		"--advertise-client-urls=https://" + cp.Address + ":2379",
		"--listen-peer-urls=https://" + cp.Address + ":2380",
		"--initial-advertise-peer-urls=https://" + cp.Address + ":2380",
		"--initial-cluster=" + cp.Name + "=https://" + cp.Address + ":2380",
		"--listen-metrics-urls=http://127.0.0.1:2381",
		"--cert-file=" + p("server.crt"), "--key-file=" + p("server.key"),
		"--client-cert-auth=true", "--trusted-ca-file=" + p("ca.crt"),
		"--peer-cert-file=" + p("peer.crt"), "--peer-key-file=" + p("peer.key"),
		"--peer-client-cert-auth=true", "--peer-trusted-ca-file=" + p("ca.crt"),
		"--snapshot-count=10000",
	}}
}

// apiserverFlags are the API server's flags; extra ones (from an incident)
// replace flags of the same name.
func apiserverSpec(cp Host, extra map[string]string) Spec {
	bin := apiserverExe
	p := func(f string) string { return pkiDir + "/" + f }
	flags := map[string]string{
		"advertise-address":                cp.Address,
		"bind-address":                     "0.0.0.0",
		"secure-port":                      "6443",
		"etcd-servers":                     "https://127.0.0.1:2379",
		"etcd-cafile":                      p("etcd/ca.crt"),
		"etcd-certfile":                    p("apiserver-etcd-client.crt"),
		"etcd-keyfile":                     p("apiserver-etcd-client.key"),
		"client-ca-file":                   p("ca.crt"),
		"tls-cert-file":                    p("apiserver.crt"),
		"tls-private-key-file":             p("apiserver.key"),
		"kubelet-client-certificate":       p("apiserver-kubelet-client.crt"),
		"kubelet-client-key":               p("apiserver-kubelet-client.key"),
		"kubelet-preferred-address-types":  "InternalIP",
		"service-account-issuer":           "https://kubernetes.default.svc.cluster.local",
		"service-account-key-file":         p("sa.pub"),
		"service-account-signing-key-file": p("sa.key"),
		"service-cluster-ip-range":         "10.96.0.0/16",
		"authorization-mode":               "Node,RBAC",
		"enable-admission-plugins":         "NodeRestriction",
		"allow-privileged":                 "true",
		"profiling":                        "false",
		"endpoint-reconciler-type":         "lease",
		"max-requests-inflight":            "400",
		"max-mutating-requests-inflight":   "200",
		"enable-priority-and-fairness":     "true",
	}
	for k, v := range extra {
		flags[k] = v
	}
	// The container's command: the static pod's (see staticpod.go). A CPU
	// cap (the overload incident's) goes on the host's pods, not in the manifest.
	return Spec{Argv: append([]string{bin}, sortedFlags(flags)...)}
}

func sortedFlags(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, "--"+k+"="+m[k])
	}
	return out
}

func controllerManagerSpec(bin string) Spec {
	return Spec{Argv: []string{bin,
		"--kubeconfig=/etc/kubernetes/controller-manager.conf",
		"--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
		"--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
		"--bind-address=127.0.0.1",
		"--service-account-private-key-file=" + pkiDir + "/sa.key",
		"--root-ca-file=" + pkiDir + "/ca.crt",
		"--cluster-signing-cert-file=" + pkiDir + "/ca.crt",
		"--cluster-signing-key-file=" + pkiDir + "/ca.key",
		"--use-service-account-credentials=true",
		"--controllers=*,bootstrapsigner,tokencleaner",
		"--leader-elect=false",
		// Pods of a node that stops answering are evicted sooner than the
		// default five minutes, so rehearsals see it.
		"--node-monitor-grace-period=40s",
	}}
}

func schedulerSpec(bin string) Spec {
	return Spec{Argv: []string{bin,
		"--kubeconfig=/etc/kubernetes/scheduler.conf",
		"--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
		"--authorization-kubeconfig=/etc/kubernetes/scheduler.conf",
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
	}}
}

// client returns a client of the lab's apiserver as its admin.
func (l *Lab) client() (*kube, error) {
	return newKube(l.State.Kubeconfig, 15*time.Second)
}

// waitAPIServer waits until /readyz answers ok.
func (l *Lab) waitAPIServer(ctx context.Context, timeout time.Duration) error {
	c, err := l.client()
	if err != nil {
		return err
	}
	var last error
	err = poll(ctx, 500*time.Millisecond, timeout, func(ctx context.Context) bool {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var body []byte
		body, last = c.raw(rctx, "/readyz")
		return last == nil && strings.TrimSpace(string(body)) == "ok"
	})
	if err != errTimeout {
		return err
	}
	return fmt.Errorf("apiserver not ready after %s: %v\nhint: see its static pod's logs, %s, and cp-1's kubelet's, %s", timeout, last, l.apiserverLogs(), filepath.Join(l.State.Dir, "logs", "cp-1-kubelet.log"))
}

// bootstrapObjects creates what kubeadm would: admin.conf's group bound to
// cluster-admin, the oncall user's binding and the apiserver's access to
// kubelets.
func (l *Lab) bootstrapObjects(ctx context.Context) error {
	c, err := l.client()
	if err != nil {
		return err
	}
	bindings := []*rbacv1.ClusterRoleBinding{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:cluster-admins"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "kubeadm:cluster-admins"}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "breakglass-lab:oncall"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "oncall"}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "breakglass-lab:apiserver-kubelet"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:kubelet-api-admin"},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "kube-apiserver-kubelet-client"}},
		},
	}
	for _, b := range bindings {
		if _, err := c.ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create clusterrolebinding %s: %w", b.Name, err)
		}
	}
	return nil
}
