// Package manifest reads, edits and writes the kube-apiserver static-pod
// manifest of a kubeadm control-plane node over SSH: the file is parsed
// as a corev1.Pod with the Kubernetes types (strictly: a field these types
// do not know would be lost on writing, so it is refused), edited through
// the types, rendered back as kubeadm renders it, and shown as a unified
// diff. Writing backs the file up outside the manifests directory, writes
// a dotfile next to it (kubelet ignores dotfiles), syncs and renames it
// over the original only if the original still has the bytes the change
// was planned against, and checks that nothing but the original names is
// left in the directory: kubelet starts every other file there as a pod.
package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// DefaultPath is kubeadm's kube-apiserver manifest.
const DefaultPath = "/etc/kubernetes/manifests/kube-apiserver.yaml"

// ContainerName is the name of the API server's container in kubeadm's
// manifest.
const ContainerName = "kube-apiserver"

// Hash is the hex SHA-256 of b: the state a manifest change is planned
// against.
func Hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Parse decodes a manifest as a Pod. Unknown fields are an error: the Pod
// is written back from these types, and a field they do not hold would be
// dropped from the node's manifest.
func Parse(b []byte) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(b, p); err != nil {
		return nil, fmt.Errorf("not a Pod manifest breakglass can rewrite without losing anything: %w", err)
	}
	if p.Kind != "Pod" || p.APIVersion != "v1" {
		return nil, fmt.Errorf("apiVersion %q kind %q: want v1 Pod", p.APIVersion, p.Kind)
	}
	return p, nil
}

// Render encodes a Pod as kubeadm writes its manifests (sigs.k8s.io/yaml
// of the typed object: keys sorted, creationTimestamp: null, status: {}).
func Render(p *corev1.Pod) ([]byte, error) { return yaml.Marshal(p) }

// Container returns the kube-apiserver container of the pod.
func Container(p *corev1.Pod) (*corev1.Container, error) {
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Name == ContainerName {
			return &p.Spec.Containers[i], nil
		}
	}
	var names []string
	for _, c := range p.Spec.Containers {
		names = append(names, c.Name)
	}
	return nil, fmt.Errorf("no container %q in the pod (it has %s)", ContainerName, strings.Join(names, ", "))
}

// Argv is the command line the container's process runs with, as /proc
// shows it: command then args. It is nil when the command comes from the
// image (no command in the manifest), which the pod alone cannot tell.
func Argv(p *corev1.Pod) []string {
	c, err := Container(p)
	if err != nil || len(c.Command) == 0 {
		return nil
	}
	return append(append([]string{}, c.Command...), c.Args...)
}

// ArgvOf is Argv of a manifest's bytes (nil when they do not parse, or
// when the command line holds $(VAR) references kubelet expands).
func ArgvOf(b []byte) []string {
	p, err := Parse(b)
	if err != nil {
		return nil
	}
	argv := Argv(p)
	for _, a := range argv {
		if strings.Contains(a, "$(") {
			return nil
		}
	}
	return argv
}

// FlagValue returns the value of --name in the kube-apiserver container's
// command line (command or args), in either --name=value or --name value
// form.
func FlagValue(p *corev1.Pod, name string) (string, bool) {
	c, err := Container(p)
	if err != nil {
		return "", false
	}
	for _, list := range [][]string{c.Command, c.Args} {
		for i, a := range list {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				return v, true
			}
			if a == "--"+name && i+1 < len(list) {
				return list[i+1], true
			}
		}
	}
	return "", false
}

// Flag is one --name=value of the API server's command line.
type Flag struct{ Name, Value string }

func (f Flag) String() string { return "--" + f.Name + "=" + f.Value }

var flagName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// ParseFlag reads name=value (a leading -- on the name is allowed).
func ParseFlag(s string) (Flag, error) {
	name, value, ok := strings.Cut(s, "=")
	name = strings.TrimPrefix(name, "--")
	if !ok || !flagName.MatchString(name) {
		return Flag{}, fmt.Errorf("%q: want name=value (an API server flag without its --, such as audit-log-maxage=7)", s)
	}
	return Flag{Name: name, Value: value}, nil
}

// Edits are the changes asked of the manifest. Nil fields are left alone.
type Edits struct {
	MaxRequestsInflight         *int
	MaxMutatingRequestsInflight *int
	GoawayChance                *float64
	CPU, Memory                 *resource.Quantity
	// Flags replace or add any other flag, in order.
	Flags []Flag
}

// Validate checks the values as the API server does, and that no flag is
// asked for twice.
func (e Edits) Validate() error {
	if v := e.MaxRequestsInflight; v != nil && *v < 0 {
		return fmt.Errorf("--max-requests-inflight %d: can not be negative (0 means no limit)", *v)
	}
	if v := e.MaxMutatingRequestsInflight; v != nil && *v < 0 {
		return fmt.Errorf("--max-mutating-requests-inflight %d: can not be negative (0 means no limit)", *v)
	}
	if v := e.GoawayChance; v != nil && (*v < 0 || *v > 0.02) {
		return fmt.Errorf("--goaway-chance %g: must be between 0 and 0.02, as the API server requires", *v)
	}
	for _, q := range []*resource.Quantity{e.CPU, e.Memory} {
		if q != nil && q.Sign() <= 0 {
			return fmt.Errorf("resource %s: must be more than 0", q.String())
		}
	}
	seen := map[string]bool{}
	for _, f := range e.flags() {
		if seen[f.Name] {
			return fmt.Errorf("--%s is asked for twice", f.Name)
		}
		seen[f.Name] = true
	}
	if len(seen) == 0 && e.CPU == nil && e.Memory == nil {
		return fmt.Errorf("nothing to change")
	}
	return nil
}

// flags are every flag the edits set, the named ones first.
func (e Edits) flags() []Flag {
	var out []Flag
	if v := e.MaxRequestsInflight; v != nil {
		out = append(out, Flag{"max-requests-inflight", strconv.Itoa(*v)})
	}
	if v := e.MaxMutatingRequestsInflight; v != nil {
		out = append(out, Flag{"max-mutating-requests-inflight", strconv.Itoa(*v)})
	}
	if v := e.GoawayChance; v != nil {
		out = append(out, Flag{"goaway-chance", strconv.FormatFloat(*v, 'g', -1, 64)})
	}
	return append(out, e.Flags...)
}

// Apply edits the pod in place and says what changed, one phrase per
// change ("--max-requests-inflight 400 -> 800"); nothing when the pod
// already is as asked.
func (e Edits) Apply(p *corev1.Pod) ([]string, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	c, err := Container(p)
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, f := range e.flags() {
		was, ok, err := setFlag(c, f)
		if err != nil {
			return nil, err
		}
		switch {
		case !ok:
			changed = append(changed, fmt.Sprintf("--%s=%s (added)", f.Name, f.Value))
		case was != f.Value:
			changed = append(changed, fmt.Sprintf("--%s %s -> %s", f.Name, was, f.Value))
		}
	}
	for _, r := range []struct {
		name corev1.ResourceName
		q    *resource.Quantity
	}{{corev1.ResourceCPU, e.CPU}, {corev1.ResourceMemory, e.Memory}} {
		if r.q == nil {
			continue
		}
		if s := setResource(&c.Resources, r.name, *r.q); s != "" {
			changed = append(changed, s)
		}
	}
	return changed, nil
}

// setFlag replaces --name=value in the command line (command or args),
// or adds it at the end of args when the container has args, else of
// command. It returns the value it had, if any. A flag given more than
// once is refused: which one the API server takes is not for breakglass
// to guess.
func setFlag(c *corev1.Container, f Flag) (was string, found bool, err error) {
	type at struct {
		list *[]string
		i    int
		pair bool // --name value
	}
	var hits []at
	for _, list := range []*[]string{&c.Command, &c.Args} {
		for i, a := range *list {
			if v, ok := strings.CutPrefix(a, "--"+f.Name+"="); ok {
				hits = append(hits, at{list, i, false})
				was = v
			} else if a == "--"+f.Name && i+1 < len(*list) && !strings.HasPrefix((*list)[i+1], "-") {
				hits = append(hits, at{list, i, true})
				was = (*list)[i+1]
			}
		}
	}
	switch len(hits) {
	case 0:
		if len(c.Args) > 0 || len(c.Command) == 0 {
			c.Args = append(c.Args, f.String())
		} else {
			c.Command = append(c.Command, f.String())
		}
		return "", false, nil
	case 1:
		h := hits[0]
		if h.pair {
			*h.list = slices.Delete(*h.list, h.i+1, h.i+2)
		}
		(*h.list)[h.i] = f.String()
		return was, true, nil
	}
	return "", false, fmt.Errorf("--%s is on the API server's command line %d times: edit the manifest by hand", f.Name, len(hits))
}

// setResource sets the request of name to q, and its limit too when the
// container has one (a request above the limit is invalid).
func setResource(r *corev1.ResourceRequirements, name corev1.ResourceName, q resource.Quantity) string {
	var parts []string
	if old, ok := r.Requests[name]; !ok || old.Cmp(q) != 0 {
		if r.Requests == nil {
			r.Requests = corev1.ResourceList{}
		}
		parts = append(parts, fmt.Sprintf("requests.%s %s -> %s", name, quantity(old, ok), q.String()))
		r.Requests[name] = q
	}
	if old, ok := r.Limits[name]; ok && old.Cmp(q) != 0 {
		parts = append(parts, fmt.Sprintf("limits.%s %s -> %s", name, old.String(), q.String()))
		r.Limits[name] = q
	}
	return strings.Join(parts, ", ")
}

func quantity(q resource.Quantity, ok bool) string {
	if !ok {
		return "(none)"
	}
	return q.String()
}

// Edit is the planned edit of one manifest.
type Edit struct {
	// After is the new manifest; Changes say what changed (none: the
	// manifest already is as asked, and After is nil).
	After   []byte
	Changes []string
	// Reformatted is set when rendering the manifest changes more than
	// the edit (it was not written as kubeadm writes it: comments, key
	// order, quoting): the diff shows all of it.
	Reformatted bool
}

// PlanEdit parses before, applies the edits and renders the result.
func PlanEdit(before []byte, e Edits) (*Edit, error) {
	p, err := Parse(before)
	if err != nil {
		return nil, err
	}
	orig := p.DeepCopy()
	changes, err := e.Apply(p)
	if err != nil {
		return nil, err
	}
	if equality.Semantic.DeepEqual(orig, p) {
		return &Edit{}, nil
	}
	after, err := Render(p)
	if err != nil {
		return nil, err
	}
	// What is written must read back as what was meant.
	back, err := Parse(after)
	if err != nil {
		return nil, fmt.Errorf("internal: the edited manifest does not parse: %w", err)
	}
	if !equality.Semantic.DeepEqual(back, p) {
		return nil, fmt.Errorf("internal: the edited manifest does not read back as edited")
	}
	same, err := Render(orig)
	if err != nil {
		return nil, err
	}
	return &Edit{After: after, Changes: changes, Reformatted: string(same) != string(before)}, nil
}

// Diff is a unified diff of two manifests, named by node and path.
func Diff(node, path string, before, after []byte) string {
	if string(before) == string(after) {
		return ""
	}
	d, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: lines(string(before)), B: lines(string(after)),
		FromFile: node + ":" + path, ToFile: node + ":" + path + " (new)", Context: 3,
	})
	if err != nil {
		return fmt.Sprintf("--- %s:%s\n# diff: %v\n", node, path, err)
	}
	return d
}

func lines(s string) []string {
	if s == "" {
		return nil
	}
	l := strings.SplitAfter(s, "\n")
	if l[len(l)-1] == "" {
		l = l[:len(l)-1]
	} else {
		l[len(l)-1] += "\n"
	}
	return l
}
