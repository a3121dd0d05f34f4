package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Labels breakglass puts on the image records it changes.
const (
	// LabelHold is on an image name pointed at the pause image: the ID of
	// the change that did it.
	LabelHold = "breakglass.io/hold"
	// LabelHoldOriginal is the original target's digest on a held name,
	// and LabelHoldSince when the hold was made (RFC 3339).
	LabelHoldOriginal = "breakglass.io/hold-original"
	LabelHoldSince    = "breakglass.io/hold-since"
	// LabelHoldOf is on the record that keeps the original image while its
	// name is held: the held name.
	LabelHoldOf = "breakglass.io/hold-of"
	// LabelPinned keeps an image from kubelet's image garbage collection
	// (containerd's CRI plugin reports it as pinned).
	LabelPinned = "io.cri-containerd.pinned"
)

// Image is an image record in the CRI namespace, with the image ID
// (config digest) CRI resolves it to.
type Image struct {
	Name   string             `json:"name"`
	Target ocispec.Descriptor `json:"target"`
	// ID is the image ID kubelet sees (the config digest), from CRI.
	ID     string            `json:"id,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// GetImage reads the image record name and the ID CRI resolves it to.
func (n *Node) GetImage(ctx context.Context, name string) (Image, error) {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	img, err := n.cd.ImageService().Get(ctx, name)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return Image{}, fmt.Errorf("%s: image %s: not in containerd's %s namespace: %w", n.Name, name, CRINamespace, err)
		}
		return Image{}, fmt.Errorf("%s: image %s: %w", n.Name, name, err)
	}
	out := Image{Name: img.Name, Target: img.Target, Labels: img.Labels}
	st, err := n.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
	if err == nil && st.Image != nil {
		out.ID = st.Image.Id
	}
	return out, nil
}

// Images lists the node's image records in the CRI namespace, each with
// the image ID CRI resolves it to (two calls, whatever the number of
// images).
func (n *Node) Images(ctx context.Context) ([]Image, error) {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	recs, err := n.cd.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: list images: %w", n.Name, err)
	}
	cri, err := n.img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("%s: CRI ListImages: %w", n.Name, err)
	}
	ids := map[string]string{}
	for _, img := range cri.Images {
		for _, ref := range append(append([]string{}, img.RepoTags...), img.RepoDigests...) {
			ids[ref] = img.Id
		}
	}
	out := make([]Image, 0, len(recs))
	for _, r := range recs {
		out = append(out, Image{Name: r.Name, Target: r.Target, Labels: r.Labels, ID: ids[r.Name]})
	}
	return out, nil
}

// SandboxImage is the pause image containerd's CRI plugin runs every
// sandbox with, from its configuration (CRI Status, verbose).
func (n *Node) SandboxImage(ctx context.Context) (string, error) {
	st, err := n.rt.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		return "", fmt.Errorf("%s: CRI Status: %w", n.Name, err)
	}
	var cfg struct {
		SandboxImage string `json:"sandboxImage"`
		PinnedImages struct {
			Sandbox string `json:"sandbox"`
		} `json:"pinnedImages"`
	}
	if raw := st.Info["config"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
			return "", fmt.Errorf("%s: CRI Status config: %w", n.Name, err)
		}
	}
	switch {
	case cfg.SandboxImage != "":
		return cfg.SandboxImage, nil
	case cfg.PinnedImages.Sandbox != "":
		return cfg.PinnedImages.Sandbox, nil
	}
	return "", fmt.Errorf("%s: containerd's CRI configuration names no sandbox image\nhint: pass --pause-image with the node's pause image", n.Name)
}

// Hold is an image name pointed at the pause image.
type Hold struct {
	Node string `json:"node"`
	// Image is the held name; Original its real target, kept alive by the
	// record Keep; Pause the image it points at now.
	Image    string             `json:"image"`
	Original ocispec.Descriptor `json:"original"`
	Keep     string             `json:"keep"`
	Pause    string             `json:"pause"`
	Change   string             `json:"change"`
	Since    time.Time          `json:"since"`
}

// KeepName is the name of the record that keeps image's original content
// (and its image ID, for CRI and kubelet's image GC) while the name is
// held: the same repository, tag "breakglass-held-" and the digest's first
// 12 hex digits.
func KeepName(image string, d digest.Digest) (string, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", image, err)
	}
	if _, ok := named.(reference.Digested); ok {
		return "", fmt.Errorf("image %q is named by digest: its name cannot point at another image", image)
	}
	hex := d.Encoded()
	if len(hex) > 12 {
		hex = hex[:12]
	}
	tagged, err := reference.WithTag(reference.TrimNamed(named), "breakglass-held-"+hex)
	if err != nil {
		return "", err
	}
	return tagged.String(), nil
}

// ErrMoved says that an image's target is not the one planned against.
var ErrMoved = errors.New("image moved since it was planned")

// HoldImage points image at pause, so that kubelet's next start of a
// container with that image runs the pause image; planned is the target
// digest the operator saw (the hold refuses with ErrMoved when it changed).
// The original target is kept by a pinned record of its own, so that
// neither containerd's content GC nor kubelet's image GC removes it, and
// its labels say what to restore. Holding a name already held by the same
// change does nothing.
func (n *Node) HoldImage(ctx context.Context, image, pause string, planned digest.Digest, change string, now time.Time) (Hold, error) {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	is := n.cd.ImageService()
	img, err := is.Get(ctx, image)
	if err != nil {
		return Hold{}, fmt.Errorf("%s: image %s: %w", n.Name, image, err)
	}
	if img.Labels[LabelHold] != "" {
		h, err := n.holdOf(ctx, img)
		if err == nil && h.Change == change {
			return h, nil
		}
		return Hold{}, fmt.Errorf("%s: image %s is already held by change %s", n.Name, image, img.Labels[LabelHold])
	}
	if img.Target.Digest != planned {
		return Hold{}, fmt.Errorf("%s: image %s: planned at %s, now %s: %w", n.Name, image, planned, img.Target.Digest, ErrMoved)
	}
	p, err := is.Get(ctx, pause)
	if err != nil {
		return Hold{}, fmt.Errorf("%s: pause image %s: %w", n.Name, pause, err)
	}
	keep, err := KeepName(image, img.Target.Digest)
	if err != nil {
		return Hold{}, err
	}
	keepRec := images.Image{Name: keep, Target: img.Target, Labels: map[string]string{LabelPinned: "pinned", LabelHoldOf: image, LabelHold: change}}
	if _, err := is.Create(ctx, keepRec); err != nil {
		if !errdefs.IsAlreadyExists(err) {
			return Hold{}, fmt.Errorf("%s: keep %s as %s: %w", n.Name, image, keep, err)
		}
		if _, err := is.Update(ctx, keepRec, "target", "labels."+LabelPinned, "labels."+LabelHoldOf, "labels."+LabelHold); err != nil {
			return Hold{}, fmt.Errorf("%s: keep %s as %s: %w", n.Name, image, keep, err)
		}
	}
	since := now.UTC().Format(time.RFC3339)
	held := images.Image{Name: image, Target: p.Target, Labels: map[string]string{
		LabelHold: change, LabelHoldOriginal: img.Target.Digest.String(), LabelHoldSince: since}}
	if _, err := is.Update(ctx, held, "target", "labels."+LabelHold, "labels."+LabelHoldOriginal, "labels."+LabelHoldSince); err != nil {
		return Hold{}, fmt.Errorf("%s: point %s at %s: %w", n.Name, image, pause, err)
	}
	t, _ := time.Parse(time.RFC3339, since)
	return Hold{Node: n.Name, Image: image, Original: img.Target, Keep: keep, Pause: pause, Change: change, Since: t}, nil
}

// holdOf reads the hold of a held image record.
func (n *Node) holdOf(ctx context.Context, img images.Image) (Hold, error) {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	d, err := digest.Parse(img.Labels[LabelHoldOriginal])
	if err != nil {
		return Hold{}, fmt.Errorf("%s: image %s: label %s: %w", n.Name, img.Name, LabelHoldOriginal, err)
	}
	keep, err := KeepName(img.Name, d)
	if err != nil {
		return Hold{}, err
	}
	h := Hold{Node: n.Name, Image: img.Name, Keep: keep, Change: img.Labels[LabelHold], Original: ocispec.Descriptor{Digest: d}}
	h.Since, _ = time.Parse(time.RFC3339, img.Labels[LabelHoldSince])
	k, err := n.cd.ImageService().Get(ctx, keep)
	if err != nil {
		return h, fmt.Errorf("%s: image %s is held but its original (%s) is gone: %w", n.Name, img.Name, keep, err)
	}
	h.Original = k.Target
	return h, nil
}

// Holds lists the node's held images, oldest first.
func (n *Node) Holds(ctx context.Context) ([]Hold, error) {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	list, err := n.cd.ImageService().List(ctx, `labels."`+LabelHold+`"`)
	if err != nil {
		return nil, fmt.Errorf("%s: list images: %w", n.Name, err)
	}
	var out []Hold
	var errs []error
	for _, img := range list {
		if img.Labels[LabelHoldOf] != "" {
			continue // a keep record
		}
		h, err := n.holdOf(ctx, img)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out, errors.Join(errs...)
}

// ReleaseImage points a held image back at its original target, exactly
// (the digest kept by the hold), and removes the keep record. A name held
// by another change than change is left alone unless change is "".
// Releasing a name that is not held does nothing and reports false.
func (n *Node) ReleaseImage(ctx context.Context, image, change string) (bool, Hold, error) {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	is := n.cd.ImageService()
	img, err := is.Get(ctx, image)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return false, Hold{}, nil
		}
		return false, Hold{}, fmt.Errorf("%s: image %s: %w", n.Name, image, err)
	}
	if img.Labels[LabelHold] == "" {
		return false, Hold{}, nil
	}
	if change != "" && img.Labels[LabelHold] != change {
		return false, Hold{}, fmt.Errorf("%s: image %s is held by change %s, not %s", n.Name, image, img.Labels[LabelHold], change)
	}
	h, err := n.holdOf(ctx, img)
	if err != nil {
		return false, h, err
	}
	restored := images.Image{Name: image, Target: h.Original, Labels: map[string]string{}}
	// A label path with no value in Labels deletes the label.
	if _, err := is.Update(ctx, restored, "target", "labels."+LabelHold, "labels."+LabelHoldOriginal, "labels."+LabelHoldSince); err != nil {
		return false, h, fmt.Errorf("%s: restore %s to %s: %w", n.Name, image, h.Original.Digest, err)
	}
	if err := is.Delete(ctx, h.Keep); err != nil && !errdefs.IsNotFound(err) {
		return true, h, fmt.Errorf("%s: %s restored, but its keep record %s was not removed: %w", n.Name, image, h.Keep, err)
	}
	return true, h, nil
}
