// Command breakglass recovers a Kubernetes control plane that kubectl can no
// longer reach, by going around the API server: to etcd directly and to the
// nodes over SSH.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/breakglass/breakglass/nodeops/fanout"
)

func main() {
	fanout.TuneGC()
	ctx, stop := signalContext(context.Background())
	d := newDeps()
	err := newRootCmd(d).ExecuteContext(ctx)
	stop()
	os.Exit(reportError(d.ErrOut, err, ctx))
}

// signalError is the cause of a context cancelled by SIGINT or SIGTERM. It
// is the only thing that makes breakglass say "cancelled" and exit 130:
// a context that ends for any other reason (a deadline, a finished command)
// is reported as the error it is.
type signalError struct{ sig os.Signal }

func (e *signalError) Error() string { return "interrupted by " + sigName(e.sig) }

func sigName(s os.Signal) string {
	switch s {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// signalContext returns a context that the first SIGINT or SIGTERM cancels
// with a *signalError as its cause, so that every node and call is
// accounted for; after it, a second signal kills at once. stop releases the
// signal handler without touching the context's cause.
func signalContext(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			cancel(&signalError{s})
			// The default action again: the next signal ends the process.
			signal.Stop(sigs)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
	}
}
