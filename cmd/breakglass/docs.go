package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() { register(newCmdDocs) }

// newCmdDocs generates the CLI reference in docs/reference from the cobra
// tree (make docs), so it cannot drift from the commands.
func newCmdDocs(d *Deps) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "docs",
		Short:  "Write the command reference as Markdown (make docs)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			if err := doc.GenMarkdownTree(root, dir); err != nil {
				return err
			}
			fmt.Fprintf(d.ErrOut, "wrote the command reference to %s\n", dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "docs/reference", "output `directory`")
	return cmd
}
