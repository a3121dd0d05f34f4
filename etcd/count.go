package etcd

import (
	"context"
	"sort"
)

// Census is how many objects of one resource etcd holds, and how many bytes
// their values take: what a LIST of them costs, without decoding anything.
type Census struct {
	Resource Resource
	Revision int64
	Objects  int
	// Bytes is the total size of the values (0 with KeysOnly).
	Bytes int64
	// Largest is the size of the largest value.
	Largest int
	// Namespaces breaks a namespaced resource down (nil otherwise).
	Namespaces []NamespaceCensus
}

// NamespaceCensus is one namespace's share of a Census.
type NamespaceCensus struct {
	Namespace string
	Objects   int
	Bytes     int64
}

// Count scans the keys (and, unless keysOnly, the sizes of the values) of a
// resource at one revision. Values are fetched a page at a time and dropped;
// none is decoded.
func (s *Store) Count(ctx context.Context, r Resource, ns string, keysOnly bool, rev int64) (*Census, error) {
	c := &Census{Resource: r}
	byNS := map[string]*NamespaceCensus{}
	stats, err := s.List(ctx, r, ListOptions{Namespace: ns, Revision: rev, KeysOnly: keysOnly, NoDecode: true}, func(o *Object) error {
		c.Objects++
		c.Bytes += int64(o.Size)
		c.Largest = max(c.Largest, o.Size)
		if r.Namespaced {
			n := byNS[o.Namespace]
			if n == nil {
				n = &NamespaceCensus{Namespace: o.Namespace}
				byNS[o.Namespace] = n
			}
			n.Objects++
			n.Bytes += int64(o.Size)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.Revision = stats.Revision
	for _, n := range byNS {
		c.Namespaces = append(c.Namespaces, *n)
	}
	sort.Slice(c.Namespaces, func(i, j int) bool { return c.Namespaces[i].Namespace < c.Namespaces[j].Namespace })
	return c, nil
}

// CountAll counts every resource in the layout (built-in and known custom
// ones) at one revision, skipping those with no objects.
func (s *Store) CountAll(ctx context.Context, keysOnly bool) ([]*Census, error) {
	rs := Builtins()
	rs = append(rs, s.Layout.custom...)
	var out []*Census
	var rev int64
	for _, r := range rs {
		c, err := s.Count(ctx, r, "", keysOnly, rev)
		if err != nil {
			return nil, err
		}
		rev = c.Revision
		if c.Objects > 0 {
			out = append(out, c)
		}
	}
	return out, nil
}
