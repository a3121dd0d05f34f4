package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/breakglass/breakglass/lab"
)

func newCmdLabBuild(d *Deps, opts *labOptions) *cobra.Command {
	var only string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build (or find in the cache) the Kubernetes binaries and CoreDNS the lab runs",
		Long: `Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
kubectl ` + lab.KubeVersion + `, and CoreDNS ` + lab.CoreDNSVersion + ` (the lab's cluster DNS, as an
image), from the Go module proxy into the cache (several minutes the first
time, nothing afterwards) and print their paths. Needs no root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := lab.EnsureBinaries(cmd.Context(), opts.CacheDir, d.ErrOut)
			if err != nil {
				return err
			}
			coredns, err := lab.EnsureCoreDNSImage(cmd.Context(), opts.CacheDir, d.ErrOut)
			if err != nil {
				return err
			}
			paths := map[string]string{
				"kube-apiserver": b.KubeAPIServer, "kube-controller-manager": b.KubeControllerManager,
				"kube-scheduler": b.KubeScheduler, "kubelet": b.Kubelet, "kubectl": b.Kubectl,
				"etcd": b.Etcd, "etcdctl": b.Etcdctl, "coredns": coredns,
			}
			if only != "" {
				p, ok := paths[only]
				if !ok {
					return usagef("--print %q: not one of the lab's binaries", only)
				}
				fmt.Fprintln(d.Out, p)
				return nil
			}
			if d.Global.Output == "json" {
				return printJSON(d.Out, struct {
					Type string `json:"type"`
					lab.Binaries
					CoreDNSImage string `json:"coreDNSImage"`
				}{"labBinaries", b, coredns})
			}
			for _, n := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "etcd", "etcdctl", "coredns"} {
				fmt.Fprintf(d.Out, "%-24s %s\n", n, paths[n])
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&only, "print", "", "print only this binary's path (e.g. kube-apiserver)")
	cmd.Flags().StringVar(&opts.CacheDir, "cache-dir", lab.DefaultCacheDir(), "where built binaries are kept between runs")
	return cmd
}
