package lab

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"
)

//go:embed images/pause/main.go images/telemetry/main.go
var imageSources embed.FS

// Image names the lab's kubelets use. No registry is reachable: the images
// are built here and imported into each worker's containerd.
const (
	PauseImage     = "breakglass.lab/pause:3.10"
	TelemetryImage = "breakglass.lab/telemetry:1.0"
	// TelemetryExe is the telemetry agent's executable (/telemetry in its
	// image): what runs on a node when the agent runs.
	TelemetryExe = "telemetry"
)

type labImage struct {
	name    string // full reference
	program string // directory under images/
}

var labImages = []labImage{
	{PauseImage, "pause"},
	{TelemetryImage, "telemetry"},
}

// buildImages compiles the image programs (static Go binaries) and writes one
// OCI image tarball per image into cacheDir/images, reusing earlier builds of
// the same source. It returns the tarball paths.
func buildImages(ctx context.Context, cacheDir string, log io.Writer) ([]string, error) {
	h := sha256.New()
	fs.WalkDir(imageSources, "images", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := imageSources.ReadFile(p)
			io.WriteString(h, p)
			h.Write(b)
		}
		return nil
	})
	for _, im := range labImages {
		io.WriteString(h, im.name)
	}
	key := fmt.Sprintf("%x", h.Sum(nil))[:16]
	dir := filepath.Join(cacheDir, "images", key)
	var tars []string
	for _, im := range labImages {
		tars = append(tars, filepath.Join(dir, im.program+".tar"))
	}
	if allExist(dir, []string{"pause.tar", "telemetry.tar"}) {
		return tars, nil
	}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module breakglass.local/labimages\n\ngo 1.22\n"), 0o644); err != nil {
		return nil, err
	}
	for i, im := range labImages {
		b, err := imageSources.ReadFile("images/" + im.program + "/main.go")
		if err != nil {
			return nil, err
		}
		if err := writeFile(filepath.Join(src, im.program, "main.go"), b, 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(log, "lab: building image %s\n", im.name)
		out := filepath.Join(dir, im.program)
		if err := goCmdEnv(ctx, src, log, []string{"CGO_ENABLED=0"}, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./"+im.program); err != nil {
			return nil, err
		}
		bin, err := os.ReadFile(out)
		if err != nil {
			return nil, err
		}
		if err := writeOCIImage(tars[i], im.name, "/"+im.program, []imageFile{{Path: im.program, Mode: 0o755, Data: bin}}); err != nil {
			return nil, fmt.Errorf("image %s: %w", im.name, err)
		}
	}
	return tars, nil
}

// imageFile is one regular file of an image's only layer.
type imageFile struct {
	Path string // in the image, without the leading slash
	Mode int64
	Data []byte
}

// writeOCIImage writes an OCI image layout, as a tarball that
// `ctr images import` reads, holding one layer with files; entry is the
// entrypoint (a static binary, or one whose libraries are among files).
func writeOCIImage(path, ref, entry string, files []imageFile) error {
	epoch := time.Unix(0, 0)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	dirs := map[string]bool{}
	for _, f := range files {
		// Parent directories first, as a root filesystem has them.
		for d := filepath.Dir(f.Path); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.Path, Mode: f.Mode, Size: int64(len(f.Data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	blobs := map[string][]byte{}
	add := func(b []byte) (string, int) {
		d := fmt.Sprintf("sha256:%x", sha256.Sum256(b))
		blobs[d] = b
		return d, len(b)
	}
	layerDigest, layerSize := add(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": []string{entry}, "Env": []string{"PATH=/usr/local/bin:/"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	configDigest, configSize := add(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
	})
	manifestDigest, manifestSize := add(manifest)
	tag := ref[len(ref)-len(refTag(ref)):]
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    manifestDigest,
			"size":      manifestSize,
			"platform":  map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": tag,
			},
		}},
	})

	var out bytes.Buffer
	ow := tar.NewWriter(&out)
	file := func(name string, b []byte) error {
		if err := ow.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := ow.Write(b)
		return err
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := file("index.json", index); err != nil {
		return err
	}
	for d, b := range blobs {
		if err := file("blobs/sha256/"+d[len("sha256:"):], b); err != nil {
			return err
		}
	}
	if err := ow.Close(); err != nil {
		return err
	}
	return writeFile(path, out.Bytes(), 0o644)
}

func refTag(ref string) string {
	for i := len(ref) - 1; i >= 0; i-- {
		if ref[i] == ':' {
			return ref[i+1:]
		}
		if ref[i] == '/' {
			break
		}
	}
	return "latest"
}
