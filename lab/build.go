package lab

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// KubeVersion is the one Kubernetes version the lab builds and runs.
const KubeVersion = "v1.31.4"

// stagingModules are the k8s.io modules that k8s.io/kubernetes replaces with
// its staging directories; a module that requires k8s.io/kubernetes must pin
// each of them to the matching published version.
var stagingModules = []string{
	"api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
	"cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
	"controller-manager", "cri-api", "cri-client", "csi-translation-lib",
	"dynamic-resource-allocation", "endpointslice", "kms", "kube-aggregator",
	"kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl", "kubelet", "metrics",
	"mount-utils", "pod-security-admission", "sample-apiserver", "sample-cli-plugin", "sample-controller",
}

// buildRecipeVersion changes when the way binaries are built changes.
const buildRecipeVersion = "2"

var kubeBinaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"}

// DefaultCacheDir is where built binaries are kept between runs, outside
// the repository: $XDG_CACHE_HOME/breakglass or ~/.cache/breakglass.
func DefaultCacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "breakglass")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "breakglass")
	}
	return filepath.Join(os.TempDir(), "breakglass-cache")
}

func buildRecipe() (gomod, tools string) {
	var b strings.Builder
	fmt.Fprintf(&b, "module breakglass.local/k8sbuild\n\ngo 1.23\n\nrequire k8s.io/kubernetes %s\n", KubeVersion)
	staging := "v0" + strings.TrimPrefix(KubeVersion, "v1")
	for _, m := range stagingModules {
		fmt.Fprintf(&b, "replace k8s.io/%s => k8s.io/%s %s\n", m, m, staging)
	}
	tools = `//go:build tools

package k8sbuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
`
	return b.String(), tools
}

// EnsureBinaries builds the Kubernetes binaries from the Go module proxy into
// the cache, unless a build of the same recipe is already there. It returns
// their paths. Progress goes to log.
func EnsureBinaries(ctx context.Context, cacheDir string, log io.Writer) (Binaries, error) {
	dir := filepath.Join(cacheDir, "k8s", KubeVersion)
	bin := filepath.Join(dir, "bin")
	b := Binaries{
		KubeAPIServer:         filepath.Join(bin, "kube-apiserver"),
		KubeControllerManager: filepath.Join(bin, "kube-controller-manager"),
		KubeScheduler:         filepath.Join(bin, "kube-scheduler"),
		Kubelet:               filepath.Join(bin, "kubelet"),
		Kubectl:               filepath.Join(bin, "kubectl"),
		Etcd:                  "/usr/bin/etcd",
		Etcdctl:               "/usr/bin/etcdctl",
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return b, err
	}
	// One build at a time per cache (lab up, benchmarks and CI may race).
	unlock, err := lockDir(dir)
	if err != nil {
		return b, err
	}
	defer unlock()

	gomod, tools := buildRecipe()
	sum := sha256.Sum256([]byte(gomod + tools + strings.Join(kubeBinaries, ",") + buildRecipeVersion))
	stamp := fmt.Sprintf("%x\n", sum)
	stampPath := filepath.Join(dir, "stamp")
	if readString(stampPath) == stamp && allExist(bin, kubeBinaries) {
		return b, nil
	}

	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return b, err
	}
	// go mod tidy rewrites go.mod; start again from the recipe only when the
	// recipe itself changed.
	recipePath := filepath.Join(src, "recipe")
	modStamp := fmt.Sprintf("%x\n", sha256.Sum256([]byte(gomod+tools)))
	if readString(recipePath) != modStamp {
		os.Remove(filepath.Join(src, "go.sum"))
		if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(gomod), 0o644); err != nil {
			return b, err
		}
		if err := os.WriteFile(filepath.Join(src, "tools.go"), []byte(tools), 0o644); err != nil {
			return b, err
		}
		fmt.Fprintf(log, "lab: resolving Kubernetes %s modules (first run only)\n", KubeVersion)
		if err := goCmd(ctx, src, log, "mod", "tidy"); err != nil {
			return b, err
		}
		if err := os.WriteFile(recipePath, []byte(modStamp), 0o644); err != nil {
			return b, err
		}
	}
	start := time.Now()
	fmt.Fprintf(log, "lab: building %s %s from the Go module proxy (a few minutes cold, seconds warm)\n", strings.Join(kubeBinaries, ", "), KubeVersion)
	// Stamp the version the way Kubernetes' own build does, so that nodes,
	// kubectl version and the apiserver report v1.31.4, not v0.0.0-master.
	minor := strings.Split(strings.TrimPrefix(KubeVersion, "v"), ".")[1]
	ldflags := fmt.Sprintf("-X k8s.io/component-base/version.gitVersion=%[1]s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=%[2]s -X k8s.io/component-base/version.gitTreeState=clean "+
		"-X k8s.io/client-go/pkg/version.gitVersion=%[1]s -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=%[2]s", KubeVersion, minor)
	args := []string{"build", "-ldflags=" + ldflags, "-o", bin + "/"}
	for _, n := range kubeBinaries {
		pkg := "k8s.io/kubernetes/cmd/" + n
		args = append(args, pkg)
	}
	if err := goCmd(ctx, src, log, args...); err != nil {
		return b, err
	}
	fmt.Fprintf(log, "lab: built in %s\n", time.Since(start).Round(time.Second))
	return b, os.WriteFile(stampPath, []byte(stamp), 0o644)
}

// lockDir takes dir's build lock (a flock on dir/.lock), waiting for
// another process's build to end, and returns its release.
func lockDir(dir string) (unlock func(), err error) {
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, err
	}
	return func() {
		syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
		lock.Close()
	}, nil
}

func goCmd(ctx context.Context, dir string, log io.Writer, args ...string) error {
	return goCmdEnv(ctx, dir, log, nil, args...)
}

func goCmdEnv(ctx context.Context, dir string, log io.Writer, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	// The throwaway module must not inherit the caller's module settings.
	cmd.Env = append(append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off"), env...)
	var tail tailBuffer
	cmd.Stdout = io.MultiWriter(&tail)
	cmd.Stderr = io.MultiWriter(&tail)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), dir, err, tail.String())
	}
	return nil
}

func allExist(dir string, names []string) bool {
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return false
		}
	}
	return true
}

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// tailBuffer keeps the last 8 KiB written to it, for error messages.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 8192 {
		t.b = t.b[len(t.b)-8192:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }
