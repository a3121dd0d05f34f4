// Command breakglass recovers a Kubernetes control plane that kubectl can no
// longer reach, by going around the API server: to etcd directly and to the
// nodes over SSH.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal cancels the context so that every node and call is
	// accounted for; after it, a second Ctrl-C kills at once.
	go func() { <-ctx.Done(); stop() }()
	d := newDeps()
	err := newRootCmd(d).ExecuteContext(ctx)
	stop()
	os.Exit(reportError(d.ErrOut, err, ctx))
}
