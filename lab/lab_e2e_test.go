package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
)

// kubectl runs the real kubectl built by the lab with the admin kubeconfig.
func kubectl(t *testing.T, s *lab.State, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(s.Binaries.Kubectl, append([]string{"--kubeconfig", s.Kubeconfig, "--request-timeout=30s"}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sshHost runs a command on a lab host with the real OpenSSH client,
// verifying the host key against the lab's known_hosts.
func sshHost(s *lab.State, h lab.Host, knownHosts string, command string) (string, error) {
	cmd := exec.Command("ssh", "-i", s.SSHKey,
		"-o", "UserKnownHostsFile="+knownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "root@"+h.Address, command)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestLabWorkersReadyInKubectl(t *testing.T) {
	s := labtest.Lab(t)
	var list struct {
		Items []struct {
			Metadata struct{ Name string } `json:"metadata"`
			Status   struct {
				Conditions []struct{ Type, Status string } `json:"conditions"`
				NodeInfo   struct {
					KubeletVersion          string `json:"kubeletVersion"`
					ContainerRuntimeVersion string `json:"containerRuntimeVersion"`
				} `json:"nodeInfo"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(kubectl(t, s, "", "get", "nodes", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	ready := map[string]bool{}
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				ready[n.Metadata.Name] = true
			}
		}
		if n.Status.NodeInfo.KubeletVersion != lab.KubeVersion {
			t.Errorf("node %s: kubelet %q, want %s", n.Metadata.Name, n.Status.NodeInfo.KubeletVersion, lab.KubeVersion)
		}
		if !strings.HasPrefix(n.Status.NodeInfo.ContainerRuntimeVersion, "containerd://") {
			t.Errorf("node %s: runtime %q, want containerd", n.Metadata.Name, n.Status.NodeInfo.ContainerRuntimeVersion)
		}
	}
	workers := s.HostsWithRole("worker")
	if len(workers) == 0 {
		t.Fatal("lab has no workers")
	}
	for _, w := range workers {
		if !ready[w.Name] {
			t.Errorf("worker %s is not a Ready node", w.Name)
		}
	}
}

// TestLabDaemonSetRunsInEachWorkersContainerd proves real pods: a DaemonSet's
// pod runs on every worker, and its container is in that worker's own
// containerd, seen over SSH on the worker.
func TestLabDaemonSetRunsInEachWorkersContainerd(t *testing.T) {
	s := labtest.Lab(t)
	ns := fmt.Sprintf("lab-ds-%d", time.Now().UnixNano()%100000)
	kubectl(t, s, "", "create", "namespace", ns)
	t.Cleanup(func() {
		exec.Command(s.Binaries.Kubectl, "--kubeconfig", s.Kubeconfig, "delete", "namespace", ns, "--wait=false").Run()
	})
	kubectl(t, s, fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe, namespace: %s}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: probe, image: %s, imagePullPolicy: Never}]
`, ns, lab.PauseImage), "apply", "-f", "-")

	workers := s.HostsWithRole("worker")
	type podInfo struct{ node, containerID string }
	var pods []podInfo
	deadline := time.Now().Add(90 * time.Second)
	for {
		var list struct {
			Items []struct {
				Spec   struct{ NodeName string } `json:"spec"`
				Status struct {
					Phase             string `json:"phase"`
					ContainerStatuses []struct {
						ContainerID string `json:"containerID"`
					} `json:"containerStatuses"`
				} `json:"status"`
			} `json:"items"`
		}
		json.Unmarshal([]byte(kubectl(t, s, "", "-n", ns, "get", "pods", "-o", "json")), &list)
		pods = pods[:0]
		for _, p := range list.Items {
			if p.Status.Phase == "Running" && len(p.Status.ContainerStatuses) > 0 {
				pods = append(pods, podInfo{p.Spec.NodeName, strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")})
			}
		}
		if len(pods) == len(workers) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d DaemonSet pods Running after 90s", len(pods), len(workers))
		}
		time.Sleep(time.Second)
	}
	for _, p := range pods {
		h, ok := s.Host(p.node)
		if !ok {
			t.Fatalf("pod on unknown node %q", p.node)
		}
		out, err := sshHost(s, h, s.KnownHosts, "ctr -n k8s.io containers ls -q")
		if err != nil {
			t.Fatalf("%s: ctr: %v\n%s", h.Name, err, out)
		}
		if !strings.Contains(out, p.containerID) {
			t.Errorf("%s: container %s of its DaemonSet pod not in its containerd:\n%s", h.Name, p.containerID, out)
		}
		// And not in another worker's containerd: each has its own.
		for _, o := range workers {
			if o.Name == h.Name {
				continue
			}
			other, err := sshHost(s, o, s.KnownHosts, "ctr -n k8s.io containers ls -q")
			if err == nil && strings.Contains(other, p.containerID) {
				t.Errorf("container %s of %s also listed by %s's containerd", p.containerID, h.Name, o.Name)
			}
		}
	}
}

// TestLabHostsHaveOwnIdentityAndPaths checks, through each host's real sshd
// with strict host-key checking, that each host has its own hostname and sees
// its own /etc/kubernetes and /run/containerd at the default paths.
func TestLabHostsHaveOwnIdentityAndPaths(t *testing.T) {
	s := labtest.Lab(t)
	for _, h := range s.Hosts {
		out, err := sshHost(s, h, s.KnownHosts, "hostname; test -S /run/containerd/containerd.sock && echo containerd; test -f /etc/kubernetes/pki/etcd/ca.crt && echo etcd-pki; ip -4 -o addr show eth0")
		if err != nil {
			t.Fatalf("%s: %v\n%s", h.Name, err, out)
		}
		lines := strings.Split(out, "\n")
		if lines[0] != h.Name {
			t.Errorf("%s: hostname %q", h.Name, lines[0])
		}
		isWorker, isCP := h.HasRole("worker"), h.HasRole("control-plane")
		// Workers run containerd for their pods, the control plane for
		// its static pods (the API server), a standby host for the API
		// server apiserver add brings up there.
		wantCtrd := isWorker || isCP || h.HasRole(lab.StandbyRole)
		if got := strings.Contains(out, "containerd\n"); got != wantCtrd {
			t.Errorf("%s: containerd socket present=%v, want %v", h.Name, got, wantCtrd)
		}
		if got := strings.Contains(out, "etcd-pki"); got != isCP {
			t.Errorf("%s: etcd pki present=%v, want %v", h.Name, got, isCP)
		}
		if !strings.Contains(out, h.Address+"/") {
			t.Errorf("%s: eth0 lacks %s:\n%s", h.Name, h.Address, out)
		}
	}
}

// TestLabHostKeysAreVerified: an empty known_hosts makes OpenSSH refuse.
func TestLabHostKeysAreVerified(t *testing.T) {
	s := labtest.Lab(t)
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o644)
	out, err := sshHost(s, s.Hosts[0], empty, "true")
	if err == nil || !strings.Contains(out, "Host key verification failed") {
		t.Fatalf("want host key verification failure, got err=%v:\n%s", err, out)
	}
}

// TestLabEtcdRequiresClientCerts: etcd answers with the lab's client
// certificate and refuses without one.
func TestLabEtcdRequiresClientCerts(t *testing.T) {
	s := labtest.Lab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ep := strings.Join(s.Etcd.Endpoints, ",")
	out, err := exec.CommandContext(ctx, s.Binaries.Etcdctl, "--endpoints", ep, "--cacert", s.Etcd.CACert,
		"--cert", s.Etcd.Cert, "--key", s.Etcd.Key, "get", "/registry/namespaces/kube-system", "--keys-only").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "/registry/namespaces/kube-system") {
		t.Fatalf("etcdctl with client cert: %v\n%s", err, out)
	}
	out, err = exec.CommandContext(ctx, s.Binaries.Etcdctl, "--endpoints", ep, "--cacert", s.Etcd.CACert,
		"--dial-timeout=3s", "--command-timeout=5s", "get", "/registry/namespaces/kube-system", "--keys-only").CombinedOutput()
	if err == nil {
		t.Fatalf("etcdctl without a client certificate succeeded:\n%s", out)
	}
}

// TestLabInventoryLoads: the inventory lab up writes is valid and names
// every host.
func TestLabInventoryLoads(t *testing.T) {
	s := labtest.Lab(t)
	b, err := os.ReadFile(s.Inventory)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range s.Hosts {
		if !strings.Contains(string(b), "address: "+h.Address) {
			t.Errorf("inventory lacks host %s (%s)", h.Name, h.Address)
		}
	}
}

// cp-1's admin kubeconfigs are kubeadm's: admin.conf a cluster admin
// through RBAC (kubeadm:cluster-admins), super-admin.conf system:masters;
// both work, through the real apiserver.
func TestLabAdminKubeconfigsAreKubeadms(t *testing.T) {
	s := labtest.Lab(t)
	cp := s.Hosts[0]
	for file, group := range map[string]string{"admin.conf": "kubeadm:cluster-admins", "super-admin.conf": "system:masters"} {
		path := filepath.Join(cp.Root, "etc/kubernetes", file)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatalf("%s: %v", cp.Name, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", file, fi.Mode().Perm())
		}
		out, err := exec.Command(s.Binaries.Kubectl, "--kubeconfig", path, "--server", s.APIServer, "--request-timeout=30s", "auth", "whoami", "-o", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl auth whoami with %s: %v\n%s", file, err, out)
		}
		var who struct {
			Status struct {
				UserInfo struct {
					Groups []string `json:"groups"`
				} `json:"userInfo"`
			} `json:"status"`
		}
		if err := json.Unmarshal(out, &who); err != nil {
			t.Fatal(err)
		}
		groups := strings.Join(who.Status.UserInfo.Groups, ",")
		if !strings.Contains(","+groups+",", ","+group+",") || (group != "system:masters" && strings.Contains(groups, "system:masters")) {
			t.Errorf("%s: groups %s, want %s", file, groups, group)
		}
		if out, err := exec.Command(s.Binaries.Kubectl, "--kubeconfig", path, "--server", s.APIServer, "--request-timeout=30s", "auth", "can-i", "*", "*").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "yes" {
			t.Errorf("%s: can-i '*' '*': %s %v", file, out, err)
		}
	}
}
