package manifest

import (
	"os"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
)

// The testdata manifest is written after kubeadm's documented layout for
// kube-apiserver.yaml (kubeadm init, v1.31): command flags, probes on the
// advertise address, requests.cpu 250m, hostPath volumes.
func kubeadmManifest(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/kube-apiserver.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func intp(v int) *int                { return &v }
func floatp(v float64) *float64      { return &v }
func qp(s string) *resource.Quantity { q := resource.MustParse(s); return &q }

// TestKubeadmLayoutRoundTrips: a manifest as kubeadm writes it renders
// back byte for byte, so that a tune's diff is the edit and nothing else.
func TestKubeadmLayoutRoundTrips(t *testing.T) {
	b := kubeadmManifest(t)
	p, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Render(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != string(b) {
		t.Fatalf("render differs:\n%s", Diff("n", "p", b, out))
	}
}

func TestPlanEdit(t *testing.T) {
	base := kubeadmManifest(t)
	tests := []struct {
		name    string
		edits   Edits
		changes []string
		has     []string // lines in the diff
		hasNot  []string
		err     string
	}{
		{name: "add inflight flags", edits: Edits{MaxRequestsInflight: intp(800), MaxMutatingRequestsInflight: intp(400)},
			changes: []string{"--max-requests-inflight=800 (added)", "--max-mutating-requests-inflight=400 (added)"},
			has:     []string{"+    - --max-requests-inflight=800\n", "+    - --max-mutating-requests-inflight=400\n"}},
		{name: "replace a flag", edits: Edits{Flags: []Flag{{"secure-port", "7443"}}},
			changes: []string{"--secure-port 6443 -> 7443"},
			has:     []string{"-    - --secure-port=6443\n", "+    - --secure-port=7443\n"}},
		{name: "goaway", edits: Edits{GoawayChance: floatp(0.01)}, changes: []string{"--goaway-chance=0.01 (added)"}},
		{name: "goaway too high", edits: Edits{GoawayChance: floatp(0.03)}, err: "between 0 and 0.02"},
		{name: "goaway negative", edits: Edits{GoawayChance: floatp(-0.001)}, err: "between 0 and 0.02"},
		{name: "inflight negative", edits: Edits{MaxRequestsInflight: intp(-1)}, err: "can not be negative"},
		{name: "cpu and memory requests", edits: Edits{CPU: qp("2"), Memory: qp("4Gi")},
			changes: []string{"requests.cpu 250m -> 2", "requests.memory (none) -> 4Gi"},
			has:     []string{"-        cpu: 250m\n", "+        cpu: \"2\"\n", "+        memory: 4Gi\n"}, hasNot: []string{"limits"}},
		{name: "same value twice", edits: Edits{MaxRequestsInflight: intp(1), Flags: []Flag{{"max-requests-inflight", "2"}}}, err: "asked for twice"},
		{name: "nothing", edits: Edits{}, err: "nothing to change"},
		{name: "already so", edits: Edits{Flags: []Flag{{"secure-port", "6443"}}, CPU: qp("250m")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ed, err := PlanEdit(base, tt.edits)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(ed.Changes, "|") != strings.Join(tt.changes, "|") {
				t.Errorf("changes %q, want %q", ed.Changes, tt.changes)
			}
			if tt.changes == nil {
				if ed.After != nil {
					t.Errorf("no change wanted, got a new manifest")
				}
				return
			}
			if ed.Reformatted {
				t.Error("kubeadm's layout reported as reformatted")
			}
			d := Diff("cp-1", DefaultPath, base, ed.After)
			for _, h := range tt.has {
				if !strings.Contains(d, h) {
					t.Errorf("diff lacks %q:\n%s", h, d)
				}
			}
			for _, h := range tt.hasNot {
				if strings.Contains(d, h) {
					t.Errorf("diff has %q:\n%s", h, d)
				}
			}
			// Only the edit: every other line is the same.
			plus, minus := 0, 0
			for _, l := range strings.Split(d, "\n") {
				if strings.HasPrefix(l, "+") && !strings.HasPrefix(l, "+++") {
					plus++
				}
				if strings.HasPrefix(l, "-") && !strings.HasPrefix(l, "---") {
					minus++
				}
			}
			if plus > 3 || minus > 1 {
				t.Errorf("diff touches more than the edit (+%d -%d):\n%s", plus, minus, d)
			}
			if _, err := Parse(ed.After); err != nil {
				t.Errorf("the new manifest does not parse: %v", err)
			}
		})
	}
}

func TestLimitsFollowWhenPresent(t *testing.T) {
	b := strings.Replace(string(kubeadmManifest(t)), "      requests:\n        cpu: 250m\n", "      limits:\n        cpu: \"1\"\n      requests:\n        cpu: 250m\n", 1)
	ed, err := PlanEdit([]byte(b), Edits{CPU: qp("1500m")})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ed.Changes, ""); got != "requests.cpu 250m -> 1500m, limits.cpu 1 -> 1500m" {
		t.Errorf("changes %q", got)
	}
	p, _ := Parse(ed.After)
	c, _ := Container(p)
	if l := c.Resources.Limits["cpu"]; l.String() != "1500m" {
		t.Errorf("limit %s", l.String())
	}
}

func TestFlagForms(t *testing.T) {
	b := strings.Replace(string(kubeadmManifest(t)), "    - --secure-port=6443\n", "    - --secure-port\n    - \"6443\"\n", 1)
	ed, err := PlanEdit([]byte(b), Edits{Flags: []Flag{{"secure-port", "7443"}}})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := Parse(ed.After)
	if v, _ := FlagValue(p, "secure-port"); v != "7443" {
		t.Errorf("secure-port %q", v)
	}
	if a := Argv(p); strings.Contains(strings.Join(a, " "), "6443\"") || len(a) != 28 {
		t.Errorf("argv %d: %q", len(a), a)
	}
	commented := "# edited by hand\n" + string(kubeadmManifest(t))
	if ed, err := PlanEdit([]byte(commented), Edits{MaxRequestsInflight: intp(1)}); err != nil || !ed.Reformatted {
		t.Errorf("a manifest not in kubeadm's layout (a comment) must be reported as reformatted: %v", err)
	}

	dup := strings.Replace(string(kubeadmManifest(t)), "    - --secure-port=6443\n", "    - --secure-port=6443\n    - --secure-port=6444\n", 1)
	if _, err := PlanEdit([]byte(dup), Edits{Flags: []Flag{{"secure-port", "7443"}}}); err == nil || !strings.Contains(err.Error(), "2 times") {
		t.Errorf("a flag given twice: %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, b := range map[string]string{
		"unknown field": strings.Replace(string(kubeadmManifest(t)), "  hostNetwork: true\n", "  hostNetwork: true\n  someFutureField: 1\n", 1),
		"not a pod":     "apiVersion: apps/v1\nkind: Deployment\n",
		"no container":  strings.Replace(string(kubeadmManifest(t)), "    name: kube-apiserver\n    readinessProbe", "    name: apiserver\n    readinessProbe", 1),
	} {
		if _, err := PlanEdit([]byte(b), Edits{MaxRequestsInflight: intp(1)}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseFlag(t *testing.T) {
	for in, want := range map[string]string{"audit-log-maxage=7": "--audit-log-maxage=7", "--v=2": "--v=2", "feature-gates=A=true,B=false": "--feature-gates=A=true,B=false", "x=": "--x="} {
		f, err := ParseFlag(in)
		if err != nil || f.String() != want {
			t.Errorf("%q: %v %v", in, f, err)
		}
	}
	for _, in := range []string{"novalue", "=1", "Bad=1", "a b=1"} {
		if _, err := ParseFlag(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestCheckBackupDir(t *testing.T) {
	if err := CheckBackupDir("/etc/kubernetes/manifests/bak", DefaultPath); err == nil {
		t.Error("a backup directory inside the manifests directory was taken")
	}
	if err := CheckBackupDir(DefaultBackupDir(DefaultPath), DefaultPath); err != nil || DefaultBackupDir(DefaultPath) != "/etc/kubernetes/breakglass-backup" {
		t.Errorf("default %s: %v", DefaultBackupDir(DefaultPath), err)
	}
	if TempName("<change-id>", DefaultPath)[0] != '.' {
		t.Error("the temporary file is not a dotfile")
	}
}
