package lab

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// HostStatus is one host as lab status sees it.
type HostStatus struct {
	Name    string   `json:"name"`
	Roles   []string `json:"roles"`
	Address string   `json:"address"`
	// SSH is "ok" when port 22 answers with an SSH banner.
	SSH string `json:"ssh"`
	// Components maps each supervised component to "running" or "stopped".
	Components map[string]string `json:"components"`
	// Node is the Kubernetes node condition ("Ready", "NotReady", "-").
	Node string `json:"node"`
}

// Status is the whole lab as lab status sees it.
type Status struct {
	APIServer string       `json:"apiserver"` // "ready" or the error
	Incidents []string     `json:"incidents"`
	Hosts     []HostStatus `json:"hosts"`
}

// Status probes every host and component.
func (l *Lab) Status(ctx context.Context) Status {
	st := Status{Incidents: l.State.Incidents, APIServer: "ready"}
	if err := l.waitAPIServer(ctx, 3*time.Second); err != nil {
		st.APIServer = strings.SplitN(err.Error(), "\n", 2)[0]
	}
	nodes := map[string]string{}
	if c, err := newKube(l.State.Kubeconfig, 5*time.Second); err == nil {
		if list, err := c.Nodes().List(ctx, metav1.ListOptions{}); err == nil {
			for _, n := range list {
				if nodeReady(&n) {
					nodes[n.Name] = "Ready"
				} else {
					nodes[n.Name] = "NotReady"
				}
			}
		}
	}
	for _, h := range l.State.Hosts {
		hs := HostStatus{Name: h.Name, Roles: h.Roles, Address: h.Address, Components: map[string]string{}, Node: "-"}
		if v, ok := nodes[h.Name]; ok {
			hs.Node = v
		}
		hs.SSH = sshBanner(h.Address)
		pids, _ := filepath.Glob(filepath.Join(l.State.Dir, "run", h.Name+"-*.pid"))
		for _, p := range pids {
			comp := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), h.Name+"-"), ".pid")
			hs.Components[comp] = "stopped"
			b, _ := os.ReadFile(p)
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				hs.Components[comp] = "running"
			}
		}
		for _, exe := range staticPodExes {
			if _, err := os.Stat(filepath.Join(h.Root, manifestsDir, exe+".yaml")); err != nil {
				continue
			}
			// A static pod of the host's kubelet, not a supervised
			// process: running when its process runs in the host's pods.
			name := exe + " (static pod)"
			hs.Components[name] = "stopped"
			if len(processArgvs(h, exe)) > 0 {
				hs.Components[name] = "running"
			}
		}
		st.Hosts = append(st.Hosts, hs)
	}
	return st
}

func sshBanner(addr string) string {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "22"), 2*time.Second)
	if err != nil {
		return "unreachable"
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if strings.HasPrefix(string(buf[:n]), "SSH-") {
		return "ok"
	}
	return "no banner"
}

// ComponentList renders the components of a host as "a b c" with the
// stopped ones marked.
func (h HostStatus) ComponentList() string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(h.Components)) {
		if h.Components[n] != "running" {
			n += "(" + h.Components[n] + ")"
		}
		parts = append(parts, n)
	}
	return strings.Join(parts, " ")
}

// String summarises a probe for logs.
func (p Probe) String() string {
	return fmt.Sprintf("%s: %d/%d ok (%d slower than %s), %d throttled (429), %d timed out, p50 %s", p.Phase, p.OK, p.Requests, p.Slow, SLO, p.Throttled, p.TimedOut, p.P50)
}
