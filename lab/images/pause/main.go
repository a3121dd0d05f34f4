// Command pause is the lab's pod sandbox image: it sleeps until it is told
// to stop, as registry.k8s.io/pause does. The lab builds it locally because
// no registry is reachable.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
