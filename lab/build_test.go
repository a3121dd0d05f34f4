package lab

import (
	"testing"
	"time"
)

// A second build waits on the first's lock (the Kubernetes binaries' and
// CoreDNS's caches), and gets it once the first lets go.
func TestLockDirWaits(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		u, err := lockDir(dir)
		if err != nil {
			t.Error(err)
		} else {
			u()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("the second lock was taken while the first was held")
	case <-time.After(200 * time.Millisecond):
	}
	unlock()
	<-got
}
