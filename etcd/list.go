package etcd

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Page sizes. etcd before 3.7 walks the whole remaining range of its index
// on every limited range to count it, so many small pages cost
// O(objects^2/page): the API server's 500 is quadratic on a big cluster.
// breakglass asks for large pages and shrinks them only when their values
// grow past MaxPageBytes, which bounds memory whatever the object size.
const (
	DefaultPageSize     = 5000
	DefaultMaxPageBytes = 64 << 20
)

// ListOptions choose what a List reads and how much of it it decodes.
type ListOptions struct {
	// Namespace limits a namespaced resource to one namespace ("" = all).
	Namespace string
	// Revision pins the listing to a revision; 0 means the current one, which
	// every page is then pinned to.
	Revision int64
	// PageSize is the number of keys per page (DefaultPageSize when 0).
	PageSize int64
	// MaxPageBytes halves the page size while a page's values are larger
	// (DefaultMaxPageBytes when 0).
	MaxPageBytes int
	// Consistency of the first page (later pages read a pinned revision).
	Consistency Consistency
	// KeysOnly asks etcd for keys without values: no sizes, no decoding.
	KeysOnly bool
	// NoDecode fetches values (for their sizes) but does not decode them.
	NoDecode bool
	// MetadataOnly decodes apiVersion, kind and metadata only.
	MetadataOnly bool
	// MetaFilter, when set, sees each object decoded metadata only; objects
	// it rejects are never fully decoded nor returned. Objects that cannot
	// be decoded are always returned, with Err set.
	MetaFilter func(*Object) bool
	// Filter sees each fully decoded object; rejected ones are not returned.
	Filter func(*Object) bool
	// Workers decode in parallel (GOMAXPROCS when 0).
	Workers int
}

// ListStats says what a listing cost.
type ListStats struct {
	Revision int64
	Pages    int
	Keys     int
	Bytes    int64
	Decoded  int
	Returned int
}

// List calls fn for every object of r in key order (namespace, then name),
// reading pages pinned to one revision and decoding them in parallel while
// the next page is being fetched. At most two pages are held in memory.
func (s *Store) List(ctx context.Context, r Resource, opts ListOptions, fn func(*Object) error) (ListStats, error) {
	prefix := s.Layout.NamespacePrefix(r, opts.Namespace)
	return s.listPrefix(ctx, r, prefix, opts, fn)
}

type page struct {
	kvs   []*mvccpb.KeyValue
	rev   int64
	more  bool
	bytes int
	err   error
}

func (s *Store) listPrefix(ctx context.Context, r Resource, prefix string, opts ListOptions, fn func(*Object) error) (ListStats, error) {
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.MaxPageBytes <= 0 {
		opts.MaxPageBytes = DefaultMaxPageBytes
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	end := clientv3.GetPrefixRangeEnd(prefix)
	stats := ListStats{Revision: opts.Revision}
	limit := opts.PageSize

	fetch := func(start string, rev int64) page {
		o := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
		if rev > 0 {
			o = append(o, clientv3.WithRev(rev), clientv3.WithSerializable())
		} else {
			o = append(o, opts.Consistency.opts()...)
		}
		if opts.KeysOnly {
			o = append(o, clientv3.WithKeysOnly())
		}
		cctx, ccancel := s.call(ctx)
		defer ccancel()
		resp, err := s.kv.Get(cctx, start, o...)
		if err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				err = fmt.Errorf("%w\nhint: etcd compacted revision %d while listing; run the command again", err, rev)
			}
			return page{err: wrapEtcdErr("list "+prefix, err)}
		}
		p := page{kvs: resp.Kvs, rev: resp.Header.Revision, more: resp.More}
		if rev > 0 {
			p.rev = rev
		}
		for _, kv := range resp.Kvs {
			p.bytes += len(kv.Value)
		}
		return p
	}

	cur := fetch(prefix, opts.Revision)
	for {
		if cur.err != nil {
			return stats, cur.err
		}
		stats.Revision = cur.rev
		stats.Pages++
		stats.Keys += len(cur.kvs)
		stats.Bytes += int64(cur.bytes)

		// Adapt the next page to the size of the values seen so far.
		if cur.bytes > opts.MaxPageBytes && limit > 64 {
			limit /= 2
		} else if cur.bytes < opts.MaxPageBytes/4 && limit < opts.PageSize {
			limit *= 2
			if limit > opts.PageSize {
				limit = opts.PageSize
			}
		}

		// Fetch the next page while this one is decoded.
		var next chan page
		if cur.more && len(cur.kvs) > 0 {
			next = make(chan page, 1)
			start := string(cur.kvs[len(cur.kvs)-1].Key) + "\x00"
			go func(rev int64) { next <- fetch(start, rev) }(cur.rev)
		}

		objs := s.decodePage(r, cur.kvs, opts)
		for _, o := range objs {
			if o == nil {
				continue
			}
			if o.Decoded != nil {
				stats.Decoded++
			}
			stats.Returned++
			if err := fn(o); err != nil {
				cancel()
				if next != nil {
					<-next
				}
				return stats, err
			}
		}
		if next == nil {
			return stats, nil
		}
		cur = <-next
	}
}

// decodePage decodes the values of one page on opts.Workers goroutines and
// returns them in key order, nil where a filter dropped the object.
func (s *Store) decodePage(r Resource, kvs []*mvccpb.KeyValue, opts ListOptions) []*Object {
	out := make([]*Object, len(kvs))
	var next atomic.Int64
	work := func() {
		for {
			i := int(next.Add(1) - 1)
			if i >= len(kvs) {
				return
			}
			out[i] = s.decodeOne(r, kvs[i], opts)
		}
	}
	w := opts.Workers
	if w > len(kvs)/64+1 {
		w = len(kvs)/64 + 1
	}
	var wg sync.WaitGroup
	for range w - 1 {
		wg.Add(1)
		go func() { defer wg.Done(); work() }()
	}
	work()
	wg.Wait()
	return out
}

func (s *Store) decodeOne(r Resource, kv *mvccpb.KeyValue, opts ListOptions) *Object {
	key := string(kv.Key)
	o := &Object{Resource: r, Key: key, ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision, Size: len(kv.Value)}
	o.Namespace, o.Name, _ = s.Layout.Parse(r, key)
	if opts.KeysOnly || opts.NoDecode {
		return o
	}
	if opts.MetadataOnly || opts.MetaFilter != nil {
		o.Decoded, o.Err = s.Codec.DecodeMetadata(key, kv.Value, kv.ModRevision)
		if o.Err != nil {
			return o
		}
		if opts.MetaFilter != nil && !opts.MetaFilter(o) {
			return nil
		}
		if opts.MetadataOnly {
			return o
		}
		if !o.Decoded.Partial {
			// JSON and CBOR have no cheaper metadata path: already full.
			if opts.Filter != nil && !opts.Filter(o) {
				return nil
			}
			return o
		}
	}
	o.Decoded, o.Err = s.Codec.Decode(key, kv.Value, kv.ModRevision)
	if o.Err == nil && opts.Filter != nil && !opts.Filter(o) {
		return nil
	}
	return o
}
