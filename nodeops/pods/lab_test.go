package pods_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"

	"github.com/breakglass/breakglass/lab"
	"github.com/breakglass/breakglass/lab/labtest"
	"github.com/breakglass/breakglass/nodeops/pods"
)

// socketNode connects to a lab worker's containerd through its socket on
// this machine (the worker's /run/containerd is a directory of the lab),
// without SSH: these tests are about the containerd side.
func socketNode(t *testing.T, st *lab.State, host string) *pods.Node {
	t.Helper()
	var root string
	for _, h := range st.Hosts {
		if h.Name == host {
			root = h.Root
		}
	}
	if root == "" {
		t.Fatalf("lab has no host %s", host)
	}
	sock := filepath.Join(root, "run/containerd/containerd.sock")
	n, err := pods.Connect(t.Context(), host, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestLabListsPodsFromContainerd lists worker-1's pods from its real
// containerd: the sandboxes kubelet made carry the pod's namespace, name,
// uid and labels.
func TestLabListsPodsFromContainerd(t *testing.T) {
	st := labtest.Lab(t)
	n := socketNode(t, st, "worker-1")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	v, err := n.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v == "" {
		t.Fatal("no runtime version")
	}
	list, err := n.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list {
		if p.Namespace == "" || p.Name == "" || p.UID == "" || p.SandboxID == "" {
			t.Errorf("pod without identity: %+v", p)
		}
		if p.Node != "worker-1" {
			t.Errorf("pod %s on node %q", p.Ref(), p.Node)
		}
	}
	pause, err := n.SandboxImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pause != lab.PauseImage {
		t.Fatalf("sandbox image %q, want %q", pause, lab.PauseImage)
	}
}

// TestLabHoldAndReleaseImage points a throwaway name (a copy of the
// telemetry image's record) at the pause image on a real containerd, and
// back: CRI resolves the name to the pause image's ID while held and to the
// original ID after, the original content is kept by a pinned record, and
// the hold is listed with its change.
func TestLabHoldAndReleaseImage(t *testing.T) {
	st := labtest.Lab(t)
	n := socketNode(t, st, "worker-1")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	orig, err := n.GetImage(ctx, lab.TelemetryImage)
	if err != nil {
		t.Fatal(err)
	}
	pause, err := n.GetImage(ctx, lab.PauseImage)
	if err != nil {
		t.Fatal(err)
	}
	name := "breakglass.lab/holdtest:" + time.Now().Format("150405")
	if err := n.CreateImageForTest(ctx, images.Image{Name: name, Target: orig.Target}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.DeleteImageForTest(context.Background(), name) })

	// CRI learns of the new record through containerd's events.
	waitImageID(t, ctx, n, name, orig.ID)
	// Planned against another digest: refused, nothing changed.
	if _, err := n.HoldImage(ctx, name, lab.PauseImage, pause.Target.Digest, "chg-1", time.Now()); err == nil {
		t.Fatal("hold planned against the wrong digest was accepted")
	}
	h, err := n.HoldImage(ctx, name, lab.PauseImage, orig.Target.Digest, "chg-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	held := waitImageID(t, ctx, n, name, pause.ID)
	if held.Target.Digest != pause.Target.Digest {
		t.Fatalf("held target %s, want the pause image's %s", held.Target.Digest, pause.Target.Digest)
	}
	keep, err := n.GetImage(ctx, h.Keep)
	if err != nil {
		t.Fatalf("keep record: %v", err)
	}
	if keep.Target.Digest != orig.Target.Digest || keep.Labels[pods.LabelPinned] != "pinned" {
		t.Fatalf("keep record %+v", keep)
	}
	holds, err := n.Holds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range holds {
		if x.Image == name && x.Change == "chg-1" && x.Original.Digest == orig.Target.Digest {
			found = true
		}
	}
	if !found {
		t.Fatalf("hold of %s not listed: %+v", name, holds)
	}
	// Again by the same change: nothing to do.
	if _, err := n.HoldImage(ctx, name, lab.PauseImage, orig.Target.Digest, "chg-1", time.Now()); err != nil {
		t.Fatalf("holding again: %v", err)
	}
	if _, _, err := n.ReleaseImage(ctx, name, "chg-other"); err == nil {
		t.Fatal("another change released the hold")
	}
	ok, _, err := n.ReleaseImage(ctx, name, "chg-1")
	if err != nil || !ok {
		t.Fatalf("release: %v %v", ok, err)
	}
	after := waitImageID(t, ctx, n, name, orig.ID)
	if after.Target.Digest != orig.Target.Digest || after.Target.Size != orig.Target.Size || after.Target.MediaType != orig.Target.MediaType {
		t.Fatalf("restored target %+v, want %+v", after.Target, orig.Target)
	}
	for _, k := range []string{pods.LabelHold, pods.LabelHoldOriginal, pods.LabelHoldSince} {
		if _, ok := after.Labels[k]; ok {
			t.Errorf("label %s left on the restored image", k)
		}
	}
	if _, err := n.GetImage(ctx, h.Keep); err == nil {
		t.Errorf("keep record %s left behind", h.Keep)
	}
}

// waitImageID waits until CRI resolves name to id: the CRI plugin learns
// of image changes through containerd's events.
func waitImageID(t *testing.T, ctx context.Context, n *pods.Node, name, id string) pods.Image {
	t.Helper()
	for {
		img, err := n.GetImage(ctx, name)
		if err == nil && img.ID == id {
			return img
		}
		select {
		case <-ctx.Done():
			t.Fatalf("CRI never resolved %s to %s (last %+v, %v)", name, id, img, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
