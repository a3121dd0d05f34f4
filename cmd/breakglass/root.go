package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// commands holds the constructors of the top-level commands. Each command
// file registers its own in an init function, so adding a command touches
// no shared file.
var commands []func(d *Deps) *cobra.Command

func register(f func(d *Deps) *cobra.Command) { commands = append(commands, f) }

// outputFormats are the values -o accepts; each command says which of them
// it supports with checkOutput.
var outputFormats = []string{"table", "wide", "json", "yaml", "name"}

func newRootCmd(d *Deps) *cobra.Command {
	g := &d.Global
	root := &cobra.Command{
		Use:   "breakglass",
		Short: "Recover a Kubernetes control plane that kubectl can no longer reach",
		Long: `breakglass goes around a saturated Kubernetes API server: it reads and
writes objects in etcd directly and reaches the nodes over SSH.

In a terminal (stdin and stdout, without --yes and -o json), breakglass
with no arguments offers the built-in runbooks: choose one, give its
parameters, and it runs as "breakglass runbook run NAME" does. Otherwise
it prints this help.

Exit codes: 0 ok, 1 error, 2 usage, 3 some nodes failed, 4 refused by a
safety check, 130 cancelled. See docs/exit-codes.md.`,
		// No Args: cobra still refuses an unknown command (exit 2).
		RunE: func(cmd *cobra.Command, args []string) error {
			if !useTUI(d) {
				return cmd.Help()
			}
			return runPicker(cmd, d)
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("inventory") {
				g.InventoryExplicit = true
			} else if env := os.Getenv("BREAKGLASS_INVENTORY"); env != "" {
				g.Inventory = env
				g.InventoryExplicit = true
			}
			if !slices.Contains(outputFormats, g.Output) {
				return usagef("--output %q: must be one of %s", g.Output, strings.Join(outputFormats, ", "))
			}
			if g.Concurrency < 1 {
				return usagef("--concurrency %d: must be at least 1", g.Concurrency)
			}
			if g.Timeout < 0 {
				return usagef("--timeout %s: must not be negative", g.Timeout)
			}
			return checkDryRun(cmd, g.DryRun)
		},
	}
	root.SetIn(d.In)
	root.SetOut(d.Out)
	root.SetErr(d.ErrOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })

	pf := root.PersistentFlags()
	pf.StringVar(&g.Inventory, "inventory", "breakglass.yaml", "inventory `file` (env BREAKGLASS_INVENTORY)")
	pf.StringVarP(&g.Output, "output", "o", "table", "output format: table, wide, json, yaml or name (commands say which they support)")
	pf.BoolVar(&g.DryRun, "dry-run", false, "show every change without making it")
	pf.BoolVar(&g.Yes, "yes", false, "do not ask for confirmation")
	pf.IntVar(&g.Concurrency, "concurrency", defaultConcurrency(), "how many nodes to work on at once")
	pf.DurationVar(&g.Timeout, "timeout", 30*time.Second, "per-node or per-call timeout (0 means none)")
	pf.CountVarP(&g.Verbose, "verbose", "v", "more detail on stderr (repeat for more)")

	for _, f := range commands {
		root.AddCommand(f(d))
	}
	return root
}

// checkOutput returns a usage error if the global -o is not one the command
// supports.
func checkOutput(d *Deps, supported ...string) error {
	if !slices.Contains(supported, d.Global.Output) {
		return usagef("--output %s is not supported here: use one of %s", d.Global.Output, strings.Join(supported, ", "))
	}
	return nil
}

// confirm asks the user to confirm a change unless --yes is set. Without a
// terminal on stdin it refuses rather than guess.
//
// The answer is read in a goroutine so that Ctrl-C at the prompt ends it at
// once: SIGINT cancels ctx (main's signalContext), but a read from a
// terminal is not interrupted by it. The error then wraps ctx's cause, so
// that the command exits 130. The reader left blocked is harmless: the
// command is ending, and a terminal drops the line Ctrl-C interrupted.
func confirm(ctx context.Context, d *Deps, question string) error {
	if d.Global.Yes {
		return nil
	}
	if !d.InIsTTY {
		return &refusedError{fmt.Errorf("%s: not confirmed\nhint: stdin is not a terminal; pass --yes to confirm", question)}
	}
	if ctx.Err() != nil {
		return promptCancelled(ctx, question)
	}
	fmt.Fprintf(d.ErrOut, "%s [y/N] ", question)
	answers := make(chan string, 1)
	go func() {
		var answer string
		fmt.Fscanln(d.In, &answer)
		answers <- answer
	}()
	select {
	case answer := <-answers:
		if a := strings.ToLower(strings.TrimSpace(answer)); a == "y" || a == "yes" {
			return nil
		}
		return &refusedError{fmt.Errorf("%s: not confirmed", question)}
	case <-ctx.Done():
		// The terminal echoed ^C after the question; end the line so that
		// what follows (and the shell prompt) starts on its own.
		fmt.Fprintln(d.ErrOut)
		return promptCancelled(ctx, question)
	}
}

// promptCancelled is confirm's error when ctx ended before an answer. It
// wraps both ctx.Err() and the cause: the cause (a *signalError) makes the
// exit code 130, and context.Canceled tells reportError not to repeat the
// question before its own "cancelled" line.
func promptCancelled(ctx context.Context, question string) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause == nil || cause == err {
		return fmt.Errorf("%s: not confirmed: %w", question, err)
	}
	return fmt.Errorf("%s: not confirmed: %w (%w)", question, err, cause)
}
