package netconn_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/fanout"
	"github.com/breakglass/breakglass/nodeops/netconn"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
)

func TestParseProcAddr(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"0100007F:1F90", "127.0.0.1:8080"},
		{"0A004D0A:192B", "10.77.0.10:6443"},
		{"00000000000000000000000001000000:01BB", "[::1]:443"},
		{"0000000000000000FFFF00000100007F:1F90", "127.0.0.1:8080"}, // v4-mapped
	} {
		got, err := netconn.ParseProcAddr(c.in)
		if err != nil || got.String() != c.want {
			t.Errorf("%s: got %v, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:xyz", "01007F:1F90"} {
		if _, err := netconn.ParseProcAddr(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestPodOfCgroup(t *testing.T) {
	cid := "4f1e0a3b2c5d6e7f80912a3b4c5d6e7f80912a3b4c5d6e7f80912a3b4c5d6e7f"
	for _, c := range []struct{ path, uid, cid string }{
		{"/bglab-worker-1/kubepods/besteffort/pod0b0e7e33-8ad6-4d35-9d0c-3fd3c3f8f1aa/" + cid, "0b0e7e33-8ad6-4d35-9d0c-3fd3c3f8f1aa", cid},
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b0e7e33_8ad6_4d35_9d0c_3fd3c3f8f1aa.slice/cri-containerd-" + cid + ".scope", "0b0e7e33-8ad6-4d35-9d0c-3fd3c3f8f1aa", cid},
		{"/kubepods/pod0b0e7e33-8ad6-4d35-9d0c-3fd3c3f8f1aa", "0b0e7e33-8ad6-4d35-9d0c-3fd3c3f8f1aa", ""},
		{"/system.slice/kubelet.service", "", ""},
		{"/", "", ""},
	} {
		uid, id := netconn.PodOfCgroup(c.path)
		if uid != c.uid || id != c.cid {
			t.Errorf("%s: got %q %q", c.path, uid, id)
		}
	}
}

func TestParse(t *testing.T) {
	out := []byte(`R 0B004D0A:A1B2 0A004D0A:192B 111
R 0B004D0A:A1B3 0A004D0A:192B 112
R 0B004D0A:A1B4 0A004D0A:192B 113
R 0B004D0A:A1B3 0A004D0A:192B 112
L 0A004D0A:192B 0C004D0A:C000 200
L 0A004D0A:192B 0C004D0A:C000 200
L 0A004D0A:192B 0C004D0A:C001 201
L 0A004D0A:192B 0D004D0A:C000 202
F 40 111
F 40 112
F 41 113
P 40 telemetry
C 40 12:pids:/kubepods/besteffort/pod0b0e7e33-8ad6-4d35-9d0c-3fd3c3f8f1aa/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
P 41 kubelet
C 41 12:pids:/system.slice/kubelet.service
`)
	tb, err := netconn.Parse(out, 6443)
	if err != nil {
		t.Fatal(err)
	}
	if tb.Outbound() != 3 || len(tb.Conns) != 6 {
		t.Fatalf("conns: %+v", tb.Conns)
	}
	if len(tb.Processes) != 2 || tb.Processes[0].Comm != "telemetry" || tb.Processes[0].Conns != 2 || tb.Processes[0].PodUID != "0b0e7e33-8ad6-4d35-9d0c-3fd3c3f8f1aa" || tb.Processes[1].PodUID != "" {
		t.Errorf("processes: %+v", tb.Processes)
	}
	src := tb.BySource()
	if len(src) != 2 || src[0].Address != netip.MustParseAddr("10.77.0.12") || src[0].Conns != 2 {
		t.Errorf("by source: %+v", src)
	}
	if _, err := netconn.Parse([]byte("X 1 2\n"), 6443); err == nil {
		t.Error("unknown record accepted")
	}
}

// dialN opens n connections to a listener of its own and returns the port.
func dialN(t *testing.T, n int) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	for range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	return l.Addr().(*net.TCPAddr).Port
}

func checkOwn(t *testing.T, tb *netconn.Table, n int) {
	t.Helper()
	if tb.Outbound() != n {
		t.Fatalf("outbound: %d, want %d (%+v)", tb.Outbound(), n, tb.Conns)
	}
	if src := tb.BySource(); len(src) != 1 || src[0].Conns != n || src[0].Address != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("inbound by source: %+v", src)
	}
	var own *netconn.Process
	for i, p := range tb.Processes {
		if p.PID == os.Getpid() {
			own = &tb.Processes[i]
		}
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	if own == nil || own.Conns != n || own.Comm != string(comm[:len(comm)-1]) || own.Cgroup == "" {
		t.Errorf("this process: %+v in %+v", own, tb.Processes)
	}
}

// The script on this machine's real /proc finds this test's own
// connections and this process.
func TestScriptOnThisMachine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reading other processes' fds needs root")
	}
	port := dialN(t, 5)
	out, err := exec.Command("sh", "-c", netconn.Script(port)).Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	tb, err := netconn.Parse(out, port)
	if err != nil {
		t.Fatal(err)
	}
	checkOwn(t, tb, 5)
}

// Through real sshd and the fan-out: one command per node.
func TestScanOverSSH(t *testing.T) {
	fx := sshdtest.Start(t, 2, sshdtest.Options{})
	c, err := sshclient.New(sshclient.Options{User: "root", IdentityFiles: []string{fx.ClientKey}, KnownHosts: []string{fx.KnownHosts},
		GlobalKnownHosts: []string{filepath.Join(fx.Dir, "ssh_known_hosts")},
		DialTimeout:      5 * time.Second, HandshakeTimeout: 5 * time.Second, AuthTimeout: 5 * time.Second, SessionTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	port := dialN(t, 3)
	var targets []nodeops.Target
	for _, s := range fx.Servers {
		targets = append(targets, nodeops.Target{Name: s.Name, Address: s.Host, Port: s.Port})
	}
	res := netconn.Scan(context.Background(), c, targets, port, fanout.OptionsOf[*netconn.Table]{Concurrency: 2, Timeout: 20 * time.Second})
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Target.Name, r.Err)
		}
		checkOwn(t, r.Output, 3)
	}
}
