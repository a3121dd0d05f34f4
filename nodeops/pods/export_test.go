package pods

import (
	"context"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// CreateImageForTest creates an image record in the CRI namespace.
func (n *Node) CreateImageForTest(ctx context.Context, img images.Image) error {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	_, err := n.cd.ImageService().Create(ctx, img)
	return err
}

// DeleteImageForTest deletes an image record.
func (n *Node) DeleteImageForTest(ctx context.Context, name string) error {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	return n.cd.ImageService().Delete(ctx, name)
}
