// Package labtest gives end-to-end tests the running lab. The lab is brought
// up once per test run by `make test` (as root on Linux), which sets
// BREAKGLASS_LAB to its lab.json; without it, lab tests skip and say why.
package labtest

import (
	"os"
	"testing"

	"github.com/breakglass/breakglass/lab"
)

// Env is the variable that points tests at the lab's lab.json.
const Env = "BREAKGLASS_LAB"

// Lab returns the running lab or skips the test.
func Lab(t testing.TB) *lab.State {
	t.Helper()
	path := os.Getenv(Env)
	if path == "" {
		t.Skipf("no lab: %s is not set (make test brings the lab up when run as root on Linux)", Env)
	}
	s, err := lab.LoadState(path)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	return s
}
