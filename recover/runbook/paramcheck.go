package runbook

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
)

// Value checks of parameters (ParamSpec.Check). A literal value in a
// runbook file is checked when it is loaded, so that runbook validate
// names its file, line and field; a value rendered from a template (a
// parameter, an earlier step's result) is checked the same way before
// its step is prepared.

// oneOf accepts one of vals.
func oneOf(vals ...string) func(string) error {
	return func(v string) error {
		for _, w := range vals {
			if v == w {
				return nil
			}
		}
		return fmt.Errorf("%q: want %s", v, orList(vals))
	}
}

func orList(vals []string) string {
	if len(vals) == 1 {
		return vals[0]
	}
	return strings.Join(vals[:len(vals)-1], ", ") + " or " + vals[len(vals)-1]
}

// namespacedName accepts NAMESPACE/NAME.
func namespacedName(v string) error {
	ns, name, ok := strings.Cut(v, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("%q: want NAMESPACE/NAME", v)
	}
	return nil
}

// clusterName accepts the name of a cluster-scoped object.
func clusterName(v string) error {
	if strings.Contains(v, "/") {
		return fmt.Errorf("%q: want a name without a namespace (the object is cluster-scoped)", v)
	}
	return nil
}

// nonNegative accepts an integer of 0 or more.
func nonNegative(v string) error {
	if n, err := strconv.Atoi(v); err == nil && n < 0 {
		return fmt.Errorf("%d: must not be negative", n)
	}
	return nil
}

// labelSelector accepts what kubectl -l takes.
func labelSelector(v string) error {
	if _, err := labels.Parse(v); err != nil {
		return fmt.Errorf("%q: not a label selector: %v", v, err)
	}
	return nil
}

// quantity accepts a resource quantity (2, 1500m, 4Gi).
func quantity(v string) error {
	if _, err := resource.ParseQuantity(v); err != nil {
		return fmt.Errorf("%q: not a quantity (2, 1500m, 4Gi)", v)
	}
	return nil
}

// numberIn accepts a number in [lo, hi]; loOpen excludes lo.
func numberIn(lo, hi float64, loOpen bool, what string) func(string) error {
	return func(v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f > hi || f < lo || (loOpen && f == lo) {
			return fmt.Errorf("%q: want %s", v, what)
		}
		return nil
	}
}

// checkParam checks a non-empty value of s: its type, then s.Check.
func checkParam(s ParamSpec, v string) error {
	if err := checkValue(s.Type, v); err != nil {
		return err
	}
	if v = strings.TrimSpace(v); v == "" || s.Check == nil {
		return nil
	}
	return s.Check(v)
}

// check checks every value of a against its spec, as rendered: the
// first that fails, named.
func (a Args) check() error {
	for _, s := range a.specs {
		if v := a.String(s.Name); v != "" {
			if err := checkParam(s, v); err != nil {
				return fmt.Errorf("%s: %s: %w", a.what, s.Name, err)
			}
		}
	}
	return nil
}
