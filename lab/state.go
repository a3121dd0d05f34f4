package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// State is what lab.json records: everything a test, a benchmark or an
// operator needs to reach the lab. Paths are absolute.
type State struct {
	// Dir is the lab directory (default ./.lab).
	Dir string `json:"dir"`
	// Inventory is the breakglass.yaml written for the lab.
	Inventory string `json:"inventory"`
	// Kubeconfig is the admin kubeconfig (group system:masters, which the
	// API server's inflight limits exempt).
	Kubeconfig string `json:"kubeconfig"`
	// OncallKubeconfig is an ordinary cluster-admin that is not in
	// system:masters: its requests are limited like everyone else's, so it
	// shows what kubectl users see during the overload incident.
	OncallKubeconfig string `json:"oncallKubeconfig"`
	// APIServer is the API server URL, e.g. https://10.77.0.10:6443.
	APIServer string `json:"apiserver"`
	// Etcd says how to reach the lab's etcd with TLS client certificates.
	Etcd EtcdState `json:"etcd"`
	// Kubectl, KubeAPIServer... are the binaries built from the module proxy.
	Binaries Binaries `json:"binaries"`
	// SSHKey is the operator's private key; KnownHosts lists every host key.
	SSHKey     string `json:"sshKey"`
	KnownHosts string `json:"knownHosts"`
	// Hosts are the lab's machines, control plane first.
	Hosts []Host `json:"hosts"`
	// Bridge is the Linux bridge every host is attached to; Subnet its CIDR.
	Bridge string `json:"bridge"`
	Subnet string `json:"subnet"`
	// Incidents lists the incidents started on this lab.
	Incidents []string `json:"incidents,omitempty"`
}

// EtcdState is how to reach the lab's etcd.
type EtcdState struct {
	Endpoints []string `json:"endpoints"`
	CACert    string   `json:"cacert"`
	Cert      string   `json:"cert"`
	Key       string   `json:"key"`
}

// Binaries are the paths of the Kubernetes binaries the lab runs.
type Binaries struct {
	KubeAPIServer         string `json:"kubeAPIServer"`
	KubeControllerManager string `json:"kubeControllerManager"`
	KubeScheduler         string `json:"kubeScheduler"`
	Kubelet               string `json:"kubelet"`
	Kubectl               string `json:"kubectl"`
	Etcd                  string `json:"etcd"`
	Etcdctl               string `json:"etcdctl"`
}

// Host is one lab machine: a network namespace with its own address, mount
// namespace and sshd.
type Host struct {
	Name    string   `json:"name"`
	Roles   []string `json:"roles"`
	Address string   `json:"address"`
	// Netns is the network namespace name (ip netns exec NETNS ...).
	Netns string `json:"netns"`
	// MountNS and UTSNS are the files that pin the host's mount and UTS
	// namespaces (nsenter --mount=FILE).
	MountNS string `json:"mountNS"`
	UTSNS   string `json:"utsNS"`
	// Root is the host's private directory on the lab machine.
	Root string `json:"root"`
}

// StateFile is the name of the state file in the lab directory.
const StateFile = "lab.json"

// LoadState reads lab.json from a lab directory or a path to the file.
func LoadState(path string) (*State, error) {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, StateFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: no lab here\nhint: run breakglass lab up", path)
		}
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

// Save writes lab.json atomically.
func (s *State) Save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(s.Dir, StateFile), append(b, '\n'), 0o644)
}

// Host returns the host with the given name.
func (s *State) Host(name string) (Host, bool) {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// HostsWithRole returns the hosts that have the role, in order.
func (s *State) HostsWithRole(role string) []Host {
	var out []Host
	for _, h := range s.Hosts {
		if slices.Contains(h.Roles, role) {
			out = append(out, h)
		}
	}
	return out
}

// HasRole reports whether h has the role.
func (h Host) HasRole(role string) bool { return slices.Contains(h.Roles, role) }

// KubeletHosts are the hosts that run a kubelet: the control plane (its
// static pods), the standby control-plane hosts and the workers.
func (s *State) KubeletHosts() []Host {
	var out []Host
	for _, h := range s.Hosts {
		if h.HasRole("control-plane") || h.HasRole(StandbyRole) || h.HasRole("worker") {
			out = append(out, h)
		}
	}
	return out
}
