package steps

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/apiprobe"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/nodeops/sshclient"
	"github.com/breakglass/breakglass/nodeops/sshdtest"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
)

// These tests add and remove an API server through real OpenSSH sshd
// servers on loopback, with a node directory each standing in for
// /etc/kubernetes (see dirRunner) and fakeKubelet playing kubelet.

type memberFixture struct {
	kind    *APIServerMember
	kubelet *fakeKubelet
	a, b    nodeops.Target
	root    map[string]string // node -> its /etc/kubernetes
	journal string
	caKey   []byte
	events  []change.Event
}

func pemOf(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }

// newMemberFixture: cp-a runs an API server (manifest, CA, serving
// certificate for 10.0.0.10 and cp-a, service-account keys, admin
// kubeconfig); cp-b has an empty manifests directory and the CA
// certificate only (as a kubelet's host has).
func newMemberFixture(t *testing.T) *memberFixture {
	t.Helper()
	fx := sshdtest.Start(t, 2, sshdtest.Options{})
	client, err := sshclient.New(sshclient.Options{User: "root", IdentityFiles: []string{fx.ClientKey}, KnownHosts: []string{fx.KnownHosts},
		GlobalKnownHosts: []string{filepath.Join(fx.Dir, "ssh_known_hosts")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	base := t.TempDir()
	f := &memberFixture{root: map[string]string{}, journal: filepath.Join(base, "journal.jsonl")}
	r := &dirRunner{inner: client, dirs: map[string]string{}}
	f.kubelet = &fakeKubelet{files: map[string]string{}, seen: map[string][]string{}}
	names := []string{"cp-a", "cp-b"}
	var ts []nodeops.Target
	for i, s := range fx.Servers {
		root := filepath.Join(base, names[i], "etc", "kubernetes")
		if err := os.MkdirAll(filepath.Join(root, "manifests"), 0o755); err != nil {
			t.Fatal(err)
		}
		f.root[names[i]] = root
		r.dirs[names[i]] = root
		f.kubelet.files[names[i]] = filepath.Join(root, "manifests", "kube-apiserver.yaml")
		ts = append(ts, nodeops.Target{Name: names[i], Address: s.Host, Port: s.Port, Roles: []string{"control-plane"}})
	}
	r.from = f.root["cp-a"]
	f.a, f.b = ts[0], ts[1]
	ra := f.root["cp-a"]
	pki := filepath.Join(ra, "pki")

	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		DNSNames: []string{"cp-a", "kubernetes", "kubernetes.default"}, IPAddresses: []net.IP{net.ParseIP("10.96.0.1"), net.ParseIP("10.0.0.10")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ck, _ := x509.MarshalECPrivateKey(caKey)
	sk, _ := x509.MarshalECPrivateKey(srvKey)
	f.caKey = pemOf("EC PRIVATE KEY", ck)
	files := map[string]struct {
		b    []byte
		mode os.FileMode
	}{
		"pki/ca.crt":                    {pemOf("CERTIFICATE", caDER), 0o644},
		"pki/ca.key":                    {f.caKey, 0o600},
		"pki/apiserver.crt":             {pemOf("CERTIFICATE", srvDER), 0o644},
		"pki/apiserver.key":             {pemOf("EC PRIVATE KEY", sk), 0o600},
		"pki/sa.key":                    {[]byte("sa private key\n"), 0o600},
		"pki/sa.pub":                    {[]byte("sa public key\n"), 0o644},
		"pki/etcd/ca.crt":               {[]byte("etcd ca\n"), 0o644},
		"pki/apiserver-etcd-client.crt": {[]byte("etcd client cert\n"), 0o644},
		"pki/apiserver-etcd-client.key": {[]byte("etcd client key\n"), 0o600},
		"admin.conf":                    {[]byte("apiVersion: v1\nkind: Config\nusers: [{name: admin, user: {token: s3cret-token}}]\n"), 0o600},
	}
	for p, c := range files {
		fp := filepath.Join(ra, p)
		if err := os.MkdirAll(filepath.Dir(fp), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fp, c.b, c.mode); err != nil {
			t.Fatal(err)
		}
	}
	// cp-b has the cluster's CA certificate already (its kubelet's).
	if err := os.MkdirAll(filepath.Join(f.root["cp-b"], "pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.root["cp-b"], "pki", "ca.crt"), files["pki/ca.crt"].b, 0o644); err != nil {
		t.Fatal(err)
	}
	pp := func(s string) string { return filepath.Join(pki, s) }
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "kube-apiserver", Namespace: "kube-system",
			Annotations: map[string]string{manifest.AdvertiseAnnotation: "10.0.0.10:6443"}},
		Spec: corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Name: "kube-apiserver", Image: "registry.k8s.io/kube-apiserver:v1.31.4",
			Command: []string{"kube-apiserver", "--advertise-address=10.0.0.10", "--etcd-servers=https://127.0.0.1:2379",
				"--etcd-cafile=" + pp("etcd/ca.crt"), "--etcd-certfile=" + pp("apiserver-etcd-client.crt"), "--etcd-keyfile=" + pp("apiserver-etcd-client.key"),
				"--client-ca-file=" + pp("ca.crt"), "--tls-cert-file=" + pp("apiserver.crt"), "--tls-private-key-file=" + pp("apiserver.key"),
				"--service-account-key-file=" + pp("sa.pub"), "--service-account-signing-key-file=" + pp("sa.key"),
				"--audit-policy-file=/etc/audit/policy.yaml", "--secure-port=6443"},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "10.0.0.10", Path: "/livez"}}},
			VolumeMounts:  []corev1.VolumeMount{{Name: "k8s-certs", MountPath: pki, ReadOnly: true}}}},
			Volumes: []corev1.Volume{{Name: "k8s-certs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: pki}}}}}}
	b, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.kubelet.files["cp-a"], b, 0o600); err != nil {
		t.Fatal(err)
	}
	f.kind = &APIServerMember{Runner: r, Watch: f.kubelet, Hosts: ts, Path: f.kubelet.files["cp-a"], BackupDir: filepath.Join(ra, "breakglass-backup"),
		Etcd: []string{"https://10.0.0.10:2379"}, Kubeconfigs: []string{filepath.Join(ra, "super-admin.conf"), filepath.Join(ra, "admin.conf")},
		Wait: 3 * time.Second, Poll: 50 * time.Millisecond, CallTimeout: 20 * time.Second}
	return f
}

func (f *memberFixture) engine(dryRun bool) *change.Engine {
	return testEngine(f.journal, &f.events, dryRun, f.kind)
}

// tree lists every file under the node's directory with its mode.
func (f *memberFixture) tree(t *testing.T, node string) []string {
	t.Helper()
	var out []string
	root := f.root[node]
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel+" "+fi.Mode().String())
		return nil
	})
	return out
}

func (f *memberFixture) readB(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.root["cp-b"], rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAPIServerAddOnRealSSHD: a dry run writes nothing; the add writes
// the manifest rewritten for cp-b and every file it names with its mode,
// a serving certificate signed for cp-b's address (the CA key not
// copied), nothing secret in the journal; a second add is refused; undo
// takes it all away and leaves cp-b as it was.
func TestAPIServerAddOnRealSSHD(t *testing.T) {
	f := newMemberFixture(t)
	ctx := context.Background()
	before := f.tree(t, "cp-b")

	p, err := f.engine(true).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Items) != 1 || !strings.Contains(p.Items[0].Diff, "+    - --advertise-address=10.0.0.11\n") ||
		!strings.Contains(p.Items[0].Diff, "pki/apiserver.crt (mode 644") || !strings.Contains(p.Items[0].Diff, "signed for cp-b") {
		t.Fatalf("dry-run plan: %d items, diff:\n%s", len(p.Items), p.Items[0].Diff)
	}
	if strings.Contains(p.Items[0].Diff, "ca.key") || strings.Contains(p.Items[0].Diff, "PRIVATE KEY") || strings.Contains(p.Items[0].Diff, "s3cret") {
		t.Fatalf("the plan shows the CA key or a secret:\n%s", p.Items[0].Diff)
	}
	if got := f.tree(t, "cp-b"); !slices.Equal(got, before) {
		t.Fatalf("the dry run changed cp-b: %v, was %v", got, before)
	}

	p, err = f.engine(false).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	pod, err := manifest.Parse(f.readB(t, "manifests/kube-apiserver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"advertise-address": "10.0.0.11", "etcd-servers": "https://10.0.0.10:2379", "secure-port": "6443"} {
		if v, _ := manifest.FlagValue(pod, flag); v != want {
			t.Errorf("cp-b: --%s=%s, want %s", flag, v, want)
		}
	}
	if h := pod.Spec.Containers[0].LivenessProbe.HTTPGet.Host; h != "10.0.0.11" {
		t.Errorf("probe host %s", h)
	}
	if a := pod.Annotations[manifest.AdvertiseAnnotation]; a != "10.0.0.11:6443" {
		t.Errorf("annotation %s", a)
	}
	// Copied files keep their bytes and modes; the CA key stays on cp-a.
	for rel, mode := range map[string]os.FileMode{"pki/sa.key": 0o600, "pki/sa.pub": 0o644, "pki/apiserver-etcd-client.key": 0o600,
		"pki/etcd/ca.crt": 0o644, "admin.conf": 0o600, "pki/apiserver.key": 0o600} {
		fi, err := os.Stat(filepath.Join(f.root["cp-b"], rel))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("cp-b %s: mode %v, want %v", rel, fi.Mode().Perm(), mode)
		}
		a, _ := os.ReadFile(filepath.Join(f.root["cp-a"], rel))
		if rel != "pki/apiserver.key" && !bytes.Equal(a, f.readB(t, rel)) {
			t.Errorf("cp-b %s: other bytes than cp-a's", rel)
		}
	}
	if _, err := os.Stat(filepath.Join(f.root["cp-b"], "pki", "ca.key")); !os.IsNotExist(err) {
		t.Errorf("the CA key was copied to cp-b: %v", err)
	}
	crt := f.readB(t, "pki/apiserver.crt")
	if ok, _ := manifest.Covers(crt, "10.0.0.11"); !ok {
		t.Error("cp-b's serving certificate is not valid for 10.0.0.11")
	}
	if ok, _ := manifest.Covers(crt, "kubernetes.default"); !ok {
		t.Error("cp-b's serving certificate lost kubernetes.default")
	}
	if ok, _ := manifest.Covers(crt, "10.0.0.10"); ok {
		t.Error("cp-b's serving certificate is still valid for cp-a's address")
	}
	if !manifest.SignedBy(crt, f.readB(t, "pki/ca.crt")) {
		t.Error("cp-b's serving certificate is not signed by the cluster CA")
	}
	a, _ := os.ReadFile(filepath.Join(f.root["cp-a"], "pki", "apiserver.key"))
	if bytes.Equal(a, f.readB(t, "pki/apiserver.key")) {
		t.Error("cp-b got cp-a's serving key")
	}
	ents, _ := os.ReadDir(filepath.Join(f.root["cp-b"], "manifests"))
	if len(ents) != 1 || ents[0].Name() != "kube-apiserver.yaml" {
		t.Errorf("cp-b's manifests directory: %v", ents)
	}
	// Nothing secret in the journal.
	jb, _ := os.ReadFile(f.journal)
	for _, secret := range [][]byte{f.caKey, a, f.readB(t, "pki/apiserver.key"), []byte("s3cret-token"), []byte("sa private key")} {
		if bytes.Contains(jb, secret) || bytes.Contains(jb, []byte(base64.StdEncoding.EncodeToString(secret))) {
			t.Fatalf("the journal holds a secret (%.20q...)", secret)
		}
	}
	id := p.ID

	// A second add is refused: cp-b has a manifest.
	_, err = f.engine(false).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	var refused *change.RefusedError
	if !errors.As(err, &refused) {
		t.Fatalf("second add: %v, want refused", err)
	}

	recs, err := journal.Read(f.journal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.engine(false).Undo(ctx, recs, id, false); err != nil {
		t.Fatal(err)
	}
	if got := f.tree(t, "cp-b"); !slices.Equal(got, before) {
		t.Fatalf("after undo cp-b has %v, was %v", got, before)
	}
	if in, _ := f.kubelet.Instance(ctx, f.b); in.ID != "" {
		t.Fatal("an API server still runs on cp-b")
	}
}

// TestAPIServerAddRollsBack: an API server that does not come up on cp-b
// is taken away again with every file written; a file cp-b has with
// other bytes refuses the add, and nothing is written.
func TestAPIServerAddRollsBack(t *testing.T) {
	f := newMemberFixture(t)
	ctx := context.Background()
	before := f.tree(t, "cp-b")
	f.kubelet.broken = func(node string, _ []string) bool { return node == "cp-b" }
	_, err := f.engine(false).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	if err == nil || !strings.Contains(err.Error(), "did not come back") || !strings.Contains(err.Error(), "gone from cp-b again") {
		t.Fatalf("add to a broken node: %v", err)
	}
	if got := f.tree(t, "cp-b"); !slices.Equal(got, before) {
		t.Fatalf("after the rollback cp-b has %v, was %v", got, before)
	}
	f.kubelet.broken = nil

	if err := os.WriteFile(filepath.Join(f.root["cp-b"], "pki", "sa.pub"), []byte("another cluster's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before = f.tree(t, "cp-b")
	_, err = f.engine(false).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	var refused *change.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "sa.pub") {
		t.Fatalf("add over another sa.pub: %v, want refused naming it", err)
	}
	if got := f.tree(t, "cp-b"); !slices.Equal(got, before) {
		t.Fatalf("the refused add changed cp-b: %v, was %v", got, before)
	}
}

// TestAPIServerRemoveOnRealSSHD: the last API server is not taken away;
// with a second one, remove moves the manifest out of the manifests
// directory (kubelet stops it) and undo puts it back.
func TestAPIServerRemoveOnRealSSHD(t *testing.T) {
	f := newMemberFixture(t)
	ctx := context.Background()
	_, err := f.engine(false).Run(ctx, PlanRemove(f.kind, f.a, false))
	var refused *change.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "would leave none") {
		t.Fatalf("remove the last API server: %v, want refused", err)
	}
	if in, _ := f.kubelet.Instance(ctx, f.a); in.ID == "" {
		t.Fatal("the refused remove stopped cp-a's API server")
	}
	if _, err := f.engine(false).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(f.kubelet.files["cp-a"])
	p, err := f.engine(false).Run(ctx, PlanRemove(f.kind, f.a, false))
	if err != nil {
		t.Fatal(err)
	}
	if in, _ := f.kubelet.Instance(ctx, f.a); in.ID != "" {
		t.Fatal("cp-a's API server still runs")
	}
	ents, _ := os.ReadDir(filepath.Dir(f.kubelet.files["cp-a"]))
	if len(ents) != 0 {
		t.Fatalf("cp-a's manifests directory still holds %v", ents)
	}
	// cp-b is now the last one: it may not be taken away.
	recs, _ := journal.Read(f.journal)
	var addID string
	for _, r := range recs {
		if r.Op == OpAPIServerAdd {
			addID = r.ID
		}
	}
	if _, err := f.engine(false).Undo(ctx, recs, addID, false); !errors.As(err, &refused) {
		t.Fatalf("undo of the add while cp-b runs the last API server: %v, want refused", err)
	}
	if _, err := f.engine(false).Undo(ctx, recs, p.ID, false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f.kubelet.files["cp-a"]); !bytes.Equal(b, orig) {
		t.Fatal("undo did not put cp-a's manifest back as it was")
	}
	if in, _ := f.kubelet.Instance(ctx, f.a); in.ID == "" {
		t.Fatal("cp-a's API server is not back")
	}
}

// TestAPIServerAddFromSaturatedSource: a source whose API server runs but
// does not answer (saturated) is copied from, with a note; a source where
// no API server runs from the manifest is refused.
func TestAPIServerAddFromSaturatedSource(t *testing.T) {
	f := newMemberFixture(t)
	ctx := context.Background()
	f.kubelet.broken = func(node string, _ []string) bool { return node == "cp-a" }
	p, err := f.engine(true).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(p.Notes, func(n string) bool { return strings.Contains(n, "saturated, it is still copied") }) {
		t.Errorf("no note about the saturated source: %q", p.Notes)
	}
	f.kubelet.broken = nil
	// The "API server" of the fake runs the manifest's command line; one
	// that runs another says the manifest is not what runs.
	w := &argsWatch{fakeKubelet: f.kubelet, args: []string{"kube-apiserver", "--other"}}
	f.kind.Watch = w
	_, err = f.engine(true).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	var refused *change.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "no API server runs there") {
		t.Fatalf("source running another command line: %v, want refused", err)
	}
}

// argsWatch is fakeKubelet with the instance's command line replaced.
type argsWatch struct {
	*fakeKubelet
	args []string
}

func (w *argsWatch) Instance(ctx context.Context, t nodeops.Target) (apiprobe.Instance, error) {
	in, err := w.fakeKubelet.Instance(ctx, t)
	in.Args = w.args
	return in, err
}

// TestAPIServerAddCrashUndo: an add whose outcome never reached the
// journal (breakglass killed after writing) is undone from its intent:
// the manifest and every file it wrote are taken away again (the
// directories it made stay: the intent does not know them).
func TestAPIServerAddCrashUndo(t *testing.T) {
	f := newMemberFixture(t)
	ctx := context.Background()
	before := f.tree(t, "cp-b")
	p, err := f.engine(false).Run(ctx, PlanAdd(f.kind, f.a, f.b, "10.0.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	// Drop the outcome: what a crash between the write and the journal
	// leaves.
	b, err := os.ReadFile(f.journal)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.Contains(l, `"type":"outcome"`) && strings.Contains(l, p.ID) {
			continue
		}
		kept = append(kept, l)
	}
	if n := strings.Count(strings.TrimSpace(string(b)), "\n") + 1; len(kept) != n-1 {
		t.Fatalf("dropped %d journal lines, want the one outcome", n-len(kept))
	}
	if err := os.WriteFile(f.journal, []byte(strings.Join(kept, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, err := journal.Read(f.journal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.engine(false).Undo(ctx, recs, p.ID, false); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range f.tree(t, "cp-b") {
		if !strings.HasPrefix(l, "pki/etcd ") {
			got = append(got, l)
		}
	}
	if !slices.Equal(got, before) {
		t.Fatalf("after the undo of a crashed add cp-b has %v, was %v", got, before)
	}
	if in, _ := f.kubelet.Instance(ctx, f.b); in.ID != "" {
		t.Fatal("an API server still runs on cp-b")
	}
}
