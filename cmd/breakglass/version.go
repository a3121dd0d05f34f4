package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() { register(newCmdVersion) }

func newCmdVersion(d *Deps) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of breakglass",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rev := ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						rev = s.Value
					}
				}
			}
			if d.Global.Output == "json" {
				return printJSON(d.Out, map[string]string{"type": "version", "version": version, "revision": rev, "go": runtime.Version()})
			}
			fmt.Fprintf(d.Out, "breakglass %s", version)
			if rev != "" {
				fmt.Fprintf(d.Out, " (%.12s)", rev)
			}
			fmt.Fprintf(d.Out, " %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
