package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Exit codes, documented in docs/exit-codes.md. This file is the only place
// where errors become exit codes.
const (
	exitOK        = 0
	exitError     = 1
	exitUsage     = 2
	exitNodesFail = 3
	exitRefused   = 4
	exitCancelled = 130
)

// exitCoder is implemented by errors that carry their own exit code, such as
// a fan-out where some nodes failed (3) or a refused safety check (4). Packages
// below cmd define their own error types with this method, so that they need
// not import cmd.
type exitCoder interface {
	ExitCode() int
}

// usageError marks a problem with the command line itself.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }
func (e *usageError) ExitCode() int { return exitUsage }

// usagef returns a usage error (exit code 2).
func usagef(format string, a ...any) error {
	return &usageError{fmt.Errorf(format, a...)}
}

// refusedError is a safety check that refused to act (exit code 4).
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }
func (e *refusedError) ExitCode() int { return exitRefused }

// exitCode maps an error to the process exit code. ctx is the command's
// context: 130 means a real SIGINT or SIGTERM ended it (its cause is a
// *signalError), never merely that the context is done.
func exitCode(err error, ctx context.Context) int {
	if err == nil {
		return exitOK
	}
	if interrupted(ctx, err) != nil {
		return exitCancelled
	}
	var ec exitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	if isCobraUsageError(err) {
		return exitUsage
	}
	return exitError
}

// interrupted returns the signal that cancelled the command, if one did.
func interrupted(ctx context.Context, err error) *signalError {
	var se *signalError
	if errors.As(err, &se) {
		return se
	}
	if ctx != nil && errors.As(context.Cause(ctx), &se) {
		return se
	}
	return nil
}

// isCobraUsageError recognises the errors cobra returns for bad flags and
// arguments; cobra has no typed errors for them.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag",
		"flag needs an argument", "invalid argument", "accepts ", "requires at least",
		"requires at most", "requires exactly", "required flag(s)", "if any flags in the group"} {
		if strings.HasPrefix(msg, p) || strings.Contains(msg, " "+p) {
			return true
		}
	}
	return false
}

// reportError prints err (if any) to w and returns the exit code. Every
// error is printed as it is; a signal adds one line that says so, and the
// bare "context canceled" it leaves in errors is not repeated.
func reportError(w io.Writer, err error, ctx context.Context) int {
	code := exitCode(err, ctx)
	if err == nil {
		return code
	}
	if se := interrupted(ctx, err); se != nil {
		if !errors.Is(err, context.Canceled) {
			fmt.Fprintf(w, "breakglass: %v\n", err)
		}
		fmt.Fprintf(w, "breakglass: cancelled (%v)\n", se)
		return code
	}
	fmt.Fprintf(w, "breakglass: %v\n", err)
	if strings.Contains(err.Error(), "hint:") {
		return code
	}
	switch {
	case code == exitUsage:
		fmt.Fprintln(w, "hint: run with --help to see the usage")
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintln(w, "hint: something did not answer in time; --timeout sets how long a call may take (0 means no limit)")
	}
	return code
}
