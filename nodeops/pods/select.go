package pods

import (
	"fmt"
	"path"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// Selector picks pods. Every set field must match (they narrow each
// other); the zero Selector matches every pod.
type Selector struct {
	// Namespace is the pod's namespace ("" any).
	Namespace string
	// Name is a shell pattern on the pod name ("" any).
	Name string
	// Labels is a label selector in the apimachinery syntax ("" any).
	Labels string
	// UIDs restricts the pods to these uids (resolved from a workload in
	// etcd); nil means any, an empty non-nil set matches nothing.
	UIDs map[string]bool
	// Image is a shell pattern on any container's image ("" any).
	Image string

	labels labels.Selector
}

// Compile checks the selector's patterns and label syntax; errors name the
// flag to fix.
func (s *Selector) Compile() error {
	if s.Name != "" {
		if _, err := path.Match(s.Name, ""); err != nil {
			return fmt.Errorf("pod name pattern %q: %w", s.Name, err)
		}
	}
	if s.Image != "" {
		if _, err := path.Match(s.Image, ""); err != nil {
			return fmt.Errorf("--image %q: %w", s.Image, err)
		}
	}
	s.labels = labels.Everything()
	if strings.TrimSpace(s.Labels) != "" {
		sel, err := labels.Parse(s.Labels)
		if err != nil {
			return fmt.Errorf("-l %q: %w\nhint: use the kubectl label-selector syntax: app=web, env in (prod,stage), !canary", s.Labels, err)
		}
		s.labels = sel
	}
	return nil
}

// Empty reports whether the selector would match every pod.
func (s *Selector) Empty() bool {
	return s.Namespace == "" && s.Name == "" && strings.TrimSpace(s.Labels) == "" && s.UIDs == nil && s.Image == ""
}

// Match reports whether p is selected. Compile must have succeeded.
func (s *Selector) Match(p *Pod) bool {
	if s.Namespace != "" && p.Namespace != s.Namespace {
		return false
	}
	if s.Name != "" {
		if ok, _ := path.Match(s.Name, p.Name); !ok {
			return false
		}
	}
	if s.UIDs != nil && !s.UIDs[p.UID] {
		return false
	}
	if s.labels != nil && !s.labels.Matches(labels.Set(p.Labels)) {
		return false
	}
	if s.Image != "" {
		hit := false
		for _, c := range p.Containers {
			for _, name := range append([]string{c.Image, c.ImageRef}, c.Tags...) {
				if ok, _ := path.Match(s.Image, name); ok {
					hit = true
				}
			}
		}
		if !hit {
			return false
		}
	}
	return true
}

// String describes the selector for plans and errors.
func (s *Selector) String() string {
	var parts []string
	if s.Namespace != "" {
		parts = append(parts, "namespace "+s.Namespace)
	}
	if s.Name != "" {
		parts = append(parts, "name "+s.Name)
	}
	if strings.TrimSpace(s.Labels) != "" {
		parts = append(parts, "labels "+s.Labels)
	}
	if s.UIDs != nil {
		parts = append(parts, fmt.Sprintf("%d pod uids", len(s.UIDs)))
	}
	if s.Image != "" {
		parts = append(parts, "image "+s.Image)
	}
	if len(parts) == 0 {
		return "every pod"
	}
	return strings.Join(parts, ", ")
}
