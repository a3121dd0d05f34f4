package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// KV is the part of the etcd client the store uses: ranges and transactions.
// clientv3.KV satisfies it.
type KV interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
	Txn(ctx context.Context) clientv3.Txn
}

// Store reads and writes Kubernetes objects in one etcd cluster.
type Store struct {
	cli    *clientv3.Client
	kv     KV
	cfg    Config
	Layout *Layout
	Codec  *Codec

	crdOnce sync.Once
	crdErr  error
}

func newStore(cli *clientv3.Client, kv KV, c Config) *Store {
	return &Store{cli: cli, kv: kv, cfg: c, Layout: NewLayout(c.Prefix), Codec: NewCodec()}
}

// NewStoreFromClient wraps an existing client (tests, the benchmark).
func NewStoreFromClient(cli *clientv3.Client, c Config) *Store {
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	return newStore(cli, cli.KV, c)
}

// Close closes the connection.
func (s *Store) Close() error {
	if s.cli == nil {
		return nil
	}
	return s.cli.Close()
}

// Config returns the settings the store was opened with.
func (s *Store) Config() Config { return s.cfg }

// call bounds one etcd call by the per-call timeout, inside the caller's
// context.
func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.cfg.CallTimeout > 0 {
		return context.WithTimeout(ctx, s.cfg.CallTimeout)
	}
	return context.WithCancel(ctx)
}

// Consistency chooses between a linearizable read (through the leader's
// quorum: what a write must start from) and a serializable one (answered by
// the member itself: still works when quorum is lost, may lag slightly).
type Consistency int

const (
	// Serializable reads are for discovery.
	Serializable Consistency = iota
	// Linearizable reads come before every write.
	Linearizable
)

func (c Consistency) opts() []clientv3.OpOption {
	if c == Serializable {
		return []clientv3.OpOption{clientv3.WithSerializable()}
	}
	return nil
}

// Get reads one key. It returns nil and no error when the key does not exist.
func (s *Store) Get(ctx context.Context, key string, c Consistency) (*mvccpb.KeyValue, int64, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, key, c.opts()...)
	if err != nil {
		return nil, 0, wrapEtcdErr("get "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	return resp.Kvs[0], resp.Header.Revision, nil
}

// Object is one stored object, decoded or not.
type Object struct {
	Resource Resource
	Key      string
	// Namespace and Name come from the key, so they are known even when the
	// value cannot be decoded.
	Namespace, Name string
	ModRevision     int64
	CreateRevision  int64
	Size            int
	// Decoded is nil when Err is set.
	Decoded *Decoded
	Err     error
}

// GetObject reads and decodes one object; a missing object is a
// *NotFoundError.
func (s *Store) GetObject(ctx context.Context, r Resource, ns, name string, c Consistency) (*Object, error) {
	key := s.Layout.Key(r, ns, name)
	kv, _, err := s.Get(ctx, key, c)
	if err != nil {
		return nil, err
	}
	if kv == nil {
		return nil, &NotFoundError{Resource: r, Namespace: ns, Name: name, Key: key}
	}
	o := &Object{Resource: r, Key: key, Namespace: ns, Name: name, ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision, Size: len(kv.Value)}
	if !r.Namespaced {
		o.Namespace = ""
	}
	o.Decoded, o.Err = s.Codec.Decode(key, kv.Value, kv.ModRevision)
	return o, nil
}

// NotFoundError is a missing object.
type NotFoundError struct {
	Resource  Resource
	Namespace string
	Name      string
	Key       string
}

func (e *NotFoundError) Error() string {
	where := ""
	if e.Resource.Namespaced {
		where = fmt.Sprintf(" in namespace %q", e.Namespace)
	}
	return fmt.Sprintf("%s %q not found%s (no key %s)", e.Resource.GroupResource(), e.Name, where, e.Key)
}

// LoadCustomResources reads the CRDs stored in etcd and adds their
// resources to the layout, once. The API server stores CRDs as JSON (of
// apiextensions.k8s.io/v1beta1 in 1.31), which decodes unstructured: names,
// short names and scope come from the spec. Should a CRD be stored in a form
// breakglass decodes metadata only, its name "<plural>.<group>" still gives
// the key path, and the shape of its first stored key tells the scope.
func (s *Store) LoadCustomResources(ctx context.Context) error {
	s.crdOnce.Do(func() { s.crdErr = s.loadCustomResources(ctx) })
	return s.crdErr
}

func (s *Store) loadCustomResources(ctx context.Context) error {
	crd, _ := s.Layout.Lookup("customresourcedefinitions")
	var found []Resource
	var probe []Resource
	_, err := s.List(ctx, crd, ListOptions{}, func(o *Object) error {
		if r, ok := customResourceOf(o); ok {
			found = append(found, r)
			return nil
		}
		if plural, group, ok := strings.Cut(o.Name, "."); ok {
			probe = append(probe, CustomResource(group, plural, true))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read CRDs: %w", err)
	}
	for _, r := range probe {
		cctx, cancel := s.call(ctx)
		resp, err := s.kv.Get(cctx, s.Layout.ResourcePrefix(r), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1), clientv3.WithSerializable())
		cancel()
		if err != nil {
			return wrapEtcdErr("read custom resources "+r.GroupResource(), err)
		}
		if len(resp.Kvs) > 0 {
			rest := strings.TrimPrefix(string(resp.Kvs[0].Key), s.Layout.ResourcePrefix(r))
			r.Namespaced = strings.Contains(rest, "/")
		}
		found = append(found, r)
	}
	s.Layout.AddCustom(found...)
	return nil
}

// customResourceOf reads a CRD decoded unstructured (any version: the
// fields used are the same in v1beta1 and v1).
func customResourceOf(o *Object) (Resource, bool) {
	if o.Decoded == nil {
		return Resource{}, false
	}
	u, ok := o.Decoded.Object.(*unstructured.Unstructured)
	if !ok {
		return Resource{}, false
	}
	group, _, _ := unstructured.NestedString(u.Object, "spec", "group")
	plural, _, _ := unstructured.NestedString(u.Object, "spec", "names", "plural")
	if group == "" || plural == "" {
		return Resource{}, false
	}
	scope, _, _ := unstructured.NestedString(u.Object, "spec", "scope")
	r := CustomResource(group, plural, scope != "Cluster")
	if v, _, _ := unstructured.NestedString(u.Object, "spec", "names", "singular"); v != "" {
		r.Singular = v
	}
	r.Kind, _, _ = unstructured.NestedString(u.Object, "spec", "names", "kind")
	r.ShortNames, _, _ = unstructured.NestedStringSlice(u.Object, "spec", "names", "shortNames")
	return r, true
}

// Resolve finds a resource by any of its names, looking at the CRDs in
// etcd when the name is not a built-in one.
func (s *Store) Resolve(ctx context.Context, name string) (Resource, error) {
	r, err := s.Layout.Lookup(name)
	if err == nil {
		return r, nil
	}
	if lerr := s.LoadCustomResources(ctx); lerr != nil {
		return Resource{}, lerr
	}
	return s.Layout.Lookup(name)
}

func wrapEtcdErr(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("etcd %s: %w\nhint: etcd did not answer in time; raise --timeout or check etcd's health (etcdctl endpoint status)", what, err)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("etcd %s: %w", what, err)
}

// Client returns the underlying etcd client (tests and the benchmark read
// keys with it).
func (s *Store) Client() *clientv3.Client { return s.cli }
