package steps

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	"github.com/breakglass/breakglass/etcd"
)

// EtcdLeases reads kubelets' leases (kube-node-lease/NODE) from etcd, not
// through the API server: kubelet start waits on them while the API may
// be the thing under load.
type EtcdLeases struct{ Store *etcd.Store }

// RenewTime implements KubeletLeases.
func (l EtcdLeases) RenewTime(ctx context.Context, node string) (time.Time, error) {
	r, err := l.Store.Layout.Lookup("leases.coordination.k8s.io")
	if err != nil {
		return time.Time{}, err
	}
	o, err := l.Store.GetObject(ctx, r, "kube-node-lease", node, etcd.Serializable)
	if err != nil {
		return time.Time{}, err
	}
	if o.Err != nil {
		return time.Time{}, o.Err
	}
	lease, ok := o.Decoded.Object.(*coordinationv1.Lease)
	if !ok {
		return time.Time{}, fmt.Errorf("%s: not a Lease", o.Key)
	}
	if lease.Spec.RenewTime == nil {
		return time.Time{}, nil
	}
	return lease.Spec.RenewTime.Time, nil
}
