// Command relay is a ProxyCommand for tests, in place of nc: relay LOG HOST
// PORT appends "HOST PORT" to LOG (so a test can tell it was used),
// connects to HOST:PORT and copies its stdin there and what comes back to
// its stdout.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: relay LOG HOST PORT")
		os.Exit(2)
	}
	log, host, port := os.Args[1], os.Args[2], os.Args[3]
	f, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintln(f, host, port)
	f.Close()
	c, err := net.Dial("tcp", net.JoinHostPort(host, port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		io.Copy(c, os.Stdin)
		c.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(os.Stdout, c)
}
