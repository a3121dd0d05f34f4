package lab

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/breakglass/breakglass/nodeops/manifest"
)

func TestPlanHosts(t *testing.T) {
	hosts, err := planHosts("/lab", netip.MustParsePrefix("10.77.0.0/24"), 3, 2, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ name, role, addr string }{
		{"cp-1", "control-plane", "10.77.0.10"},
		{"cp-2", "standby", "10.77.0.11"},
		{"worker-1", "worker", "10.77.0.21"},
		{"worker-2", "worker", "10.77.0.22"},
		{"worker-3", "worker", "10.77.0.23"},
		{"ssh-1", "ssh", "10.77.0.100"},
		{"ssh-2", "ssh", "10.77.0.101"},
	}
	if len(hosts) != len(want) {
		t.Fatalf("%d hosts, want %d", len(hosts), len(want))
	}
	for i, w := range want {
		h := hosts[i]
		if h.Name != w.name || h.Roles[0] != w.role || h.Address != w.addr {
			t.Errorf("host %d = %s %v %s, want %s %s %s", i, h.Name, h.Roles, h.Address, w.name, w.role, w.addr)
		}
		if h.Netns != "bglab-"+w.name || h.Root != "/lab/hosts/"+w.name || !strings.HasPrefix(h.MountNS, nsDir) {
			t.Errorf("host %s: netns %s root %s mountns %s", h.Name, h.Netns, h.Root, h.MountNS)
		}
		if len(vethPrefix+h.Name) > 15 {
			t.Errorf("host %s: interface name too long", h.Name)
		}
	}
	for _, bad := range []struct {
		subnet      string
		workers, ss int
	}{{"10.77.0.0/25", 3, 0}, {"10.77.0.0/24", 0, 0}, {"10.77.0.0/24", 71, 0}, {"10.77.0.0/24", 3, 151}} {
		if _, err := planHosts("/lab", netip.MustParsePrefix(bad.subnet), bad.workers, bad.ss, false); err == nil {
			t.Errorf("planHosts(%+v): no error", bad)
		}
	}
}

// TestOCIImage reads back the image tarball and checks the layout that
// ctr images import expects: digests match contents, the name annotation is
// set, and the layer holds the program.
func TestOCIImage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img.tar")
	prog := []byte("#!fake program")
	if err := writeOCIImage(path, "breakglass.lab/x:1.2", "/x", []imageFile{{Path: "x", Mode: 0o755, Data: prog}}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
	blob := func(d string) []byte {
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d)
		}
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(b)); got != d {
			t.Fatalf("blob %s has digest %s", d, got)
		}
		return b
	}
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	m := index.Manifests[0]
	if m.Annotations["io.containerd.image.name"] != "breakglass.lab/x:1.2" || m.Annotations["org.opencontainers.image.ref.name"] != "1.2" {
		t.Errorf("annotations %v", m.Annotations)
	}
	var manifest struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	json.Unmarshal(blob(m.Digest), &manifest)
	var config struct {
		Config struct{ Entrypoint []string } `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	json.Unmarshal(blob(manifest.Config.Digest), &config)
	if len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/x" {
		t.Errorf("entrypoint %v", config.Config.Entrypoint)
	}
	if len(manifest.Layers) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("layers %v diff_ids %v", manifest.Layers, config.RootFS.DiffIDs)
	}
	lr := tar.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	h, err := lr.Next()
	if err != nil || h.Name != "x" || h.Mode&0o111 == 0 {
		t.Fatalf("layer entry %+v %v", h, err)
	}
	if b, _ := io.ReadAll(lr); !bytes.Equal(b, prog) {
		t.Error("layer does not hold the program")
	}
}

func TestAPIServerSpecOverrides(t *testing.T) {
	cp := Host{Name: "cp-1", Address: "10.0.0.10"}
	base := apiserverSpec(cp, nil)
	over := apiserverSpec(cp, map[string]string{"max-requests-inflight": "4"})
	if len(base.Argv) != len(over.Argv) {
		t.Fatalf("override added a flag instead of replacing it")
	}
	if !contains(over.Argv, "--max-requests-inflight=4") || contains(over.Argv, "--max-requests-inflight=400") {
		t.Errorf("override not applied: %v", over.Argv)
	}
	if !contains(base.Argv, "--etcd-servers=https://127.0.0.1:2379") || !contains(base.Argv, "--advertise-address=10.0.0.10") {
		t.Errorf("base flags: %v", base.Argv)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestSuperviseRestarts runs the real supervisor on a real process: it
// restarts the component when it exits and when its spec changes, and stops
// it when cancelled.
func TestSuperviseRestarts(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	spec := filepath.Join(dir, "c.json")
	marks := filepath.Join(dir, "marks")
	write := func(tag string, sleep string) {
		b, _ := json.Marshal(Spec{Argv: []string{"sh", "-c", "echo " + tag + " >> " + marks + "; sleep " + sleep}})
		tmp := spec + ".tmp"
		os.WriteFile(tmp, b, 0o644)
		os.Rename(tmp, spec)
	}
	write("a", "0.2") // exits quickly: must be restarted
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var log bytes.Buffer
	go func() { done <- Supervise(ctx, spec, &safeWriter{w: &log}) }()
	waitFor(t, func() bool { return strings.Count(readString(marks), "a") >= 2 }, "restart after exit")
	time.Sleep(10 * time.Millisecond) // a different mtime for the new spec
	write("b", "60")                  // long-running: must be replaced when the spec changes
	waitFor(t, func() bool { return strings.Contains(readString(marks), "b") }, "restart on spec change")
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("supervisor did not stop")
	}
}

type safeWriter struct{ w io.Writer }

func (s *safeWriter) Write(p []byte) (int, error) { return len(p), nil }

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The API server's static pod as the lab writes it: the file is one
// breakglass's own manifest code parses (what apiserver tune edits), with
// the spec's command in the kube-apiserver container, the host's network
// and PKI, the lab's image; the lab reads the command back.
func TestAPIServerManifest(t *testing.T) {
	cp := Host{Name: "cp-1", Address: "10.0.0.10", Root: t.TempDir()}
	spec := apiserverSpec(cp, map[string]string{"max-requests-inflight": "777"})
	if err := writeAPIServerManifest(cp, spec); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(APIServerManifest(cp))
	if err != nil {
		t.Fatal(err)
	}
	pod, err := manifest.Parse(b)
	if err != nil {
		t.Fatalf("breakglass's manifest parser: %v\n%s", err, b)
	}
	c, err := manifest.Container(pod)
	if err != nil {
		t.Fatal(err)
	}
	if c.Image != APIServerImage || !pod.Spec.HostNetwork || c.Command[0] != "kube-apiserver" || !slices.Equal(manifest.Argv(pod), spec.Argv) {
		t.Errorf("pod: image %s, hostNetwork %v, command %v", c.Image, pod.Spec.HostNetwork, c.Command)
	}
	if v, ok := manifest.FlagValue(pod, "max-requests-inflight"); !ok || v != "777" {
		t.Errorf("max-requests-inflight %q %v", v, ok)
	}
	if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != pkiDir {
		t.Errorf("mounts %+v", c.VolumeMounts)
	}
	got, err := apiserverCommand(cp)
	if err != nil || !slices.Equal(got, spec.Argv) {
		t.Errorf("read back: %v %v", got, err)
	}
	// Nothing but the manifest in the manifests directory.
	if ents, _ := os.ReadDir(filepath.Dir(APIServerManifest(cp))); len(ents) != 1 {
		t.Errorf("manifests directory holds %v", ents)
	}
}

// ldd's libraries of a dynamic binary, the loader included: what the API
// server's image carries besides the binary.
func TestSharedLibraries(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("no ldd")
	}
	libs, err := sharedLibraries(context.Background(), sh)
	if err != nil {
		t.Fatal(err)
	}
	var libc, loader bool
	for _, l := range libs {
		libc = libc || strings.Contains(filepath.Base(l), "libc.so")
		loader = loader || strings.HasPrefix(filepath.Base(l), "ld-linux")
		if !filepath.IsAbs(l) {
			t.Errorf("library %q is not a path", l)
		}
	}
	if !libc || !loader {
		t.Errorf("libraries of %s: %v, want libc and the loader", sh, libs)
	}
}

// A host's pods' CPU cap is a quota on its kubelet's Burstable cgroup,
// set and lifted in place and read back from the cgroup.
func TestHostCPUCap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("cgroups need root")
	}
	h := Host{Name: fmt.Sprintf("captest-%d", os.Getpid())}
	if err := createCgroupRoot(h); err != nil {
		t.Skipf("no cgroup root here: %v", err)
	}
	// What the host's kubelet creates under its root.
	hier, _, err := cpuHierarchy()
	if err != nil {
		t.Skip(err)
	}
	if err := os.MkdirAll(filepath.Join(hier, burstableCgroup(h)), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(filepath.Join(hier, burstableCgroup(h)))
		os.Remove(filepath.Join(hier, cgroupRoot(h), "kubepods"))
		for _, hier := range cgroupHierarchies() {
			os.Remove(filepath.Join(hier, cgroupRoot(h)))
		}
	})
	for _, want := range []int{50, 25, 0} {
		if err := setHostCPUCap(h, want); err != nil {
			t.Fatal(err)
		}
		if got, err := hostCPUCap(h); err != nil || got != want {
			t.Errorf("cap %dm: read back %dm, %v", want, got, err)
		}
	}
}

// The overload incident starts its cap search at the cap that saturated
// the apiserver last time in this lab; a missing or foreign value starts
// it from the loosest.
func TestOverloadCapRemembered(t *testing.T) {
	l := &Lab{State: &State{Dir: t.TempDir()}}
	if got := l.lastOverloadCap(); got != 0 {
		t.Fatalf("no file: %d, want 0", got)
	}
	if err := l.rememberOverloadCap(70); err != nil {
		t.Fatal(err)
	}
	if got := l.lastOverloadCap(); got != 70 {
		t.Fatalf("remembered 70, read %d", got)
	}
	for _, bad := range []string{"", "abc", "33", "-1"} {
		if err := os.WriteFile(l.overloadCapFile(), []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := l.lastOverloadCap(); got != 0 {
			t.Errorf("file %q: %d, want 0 (not one of overloadCaps)", bad, got)
		}
	}
}

// TestCalmWatch: a cap is given up as calm only after calmAfter under it,
// with every probe of the last calmFor within the SLO; a probe with a miss
// starts the calm run again.
func TestCalmWatch(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	w := calmWatch{start: t0}
	// Calm from the first probe: not before calmAfter (20 s).
	for s := 0.0; s < 18; s += 2 {
		if w.observe(at(s), at(s+1), true) {
			t.Fatalf("calm at %.0fs, before %s under the cap", s+1, calmAfter)
		}
	}
	// A miss at 18 s: the calm run starts again at 20 s, and must last
	// calmFor (15 s) before the cap is calm.
	if w.observe(at(18), at(19), false) {
		t.Fatal("calm on a probe with a miss")
	}
	for s := 20.0; s < 34; s += 2 {
		if w.observe(at(s), at(s+1), true) {
			t.Fatalf("calm at %.0fs, %.0fs after the last miss", s+1, s+1-20)
		}
	}
	if !w.observe(at(34), at(35), true) {
		t.Fatalf("not calm at 35s: calm since 20s, %s under the cap", 35*time.Second)
	}
	// From the start, calm throughout: calm at calmAfter.
	w = calmWatch{start: t0}
	calmAt := 0.0
	for s := 0.0; s < 60 && calmAt == 0; s += 2 {
		if w.observe(at(s), at(s+1), true) {
			calmAt = s + 1
		}
	}
	if calmAt != 21 {
		t.Errorf("calm from the start: given up at %.0fs, want 21s (the first probe answered after %s)", calmAt, calmAfter)
	}
}
