// Package etcd reads and changes Kubernetes objects directly in etcd, for when
// the API server cannot be used: it knows where the API server keeps each
// resource (layout.go), decodes and encodes values the way the API server does
// (codec.go), lists in large pages pinned to one revision (list.go) and writes
// only with compare-and-swap transactions on the ModRevision, recording each
// change with a Journal before it is made (write.go).
//
// The package knows nothing of SSH: a tunnel to a control-plane node is a
// DialFunc handed in by the caller.
package etcd
