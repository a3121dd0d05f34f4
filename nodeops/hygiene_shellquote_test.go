package nodeops_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/breakglass/breakglass/nodeops"
)

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `''`},
		{"plain", `'plain'`},
		{"two words", `'two words'`},
		{"it's", `'it'\''s'`},
		{"''", `''\'''\'''`},
		{`$HOME "x" \n`, `'$HOME "x" \n'`},
		{"a;b|c&d`e`$(f)", "'a;b|c&d`e`$(f)'"},
		{"line\nbreak", "'line\nbreak'"},
		{"*?[a]~", `'*?[a]~'`},
	} {
		if got := nodeops.ShellQuote(tc.in); got != tc.want {
			t.Errorf("ShellQuote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// FuzzShellQuote checks with a real shell that a quoted string comes back
// as itself. A shell argument cannot hold NUL, so those inputs are skipped.
func FuzzShellQuote(f *testing.F) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		f.Skip("no sh")
	}
	for _, s := range []string{"", "a b", "it's", "'", `\'`, "$(id)", "a\nb", "-n", "%s%%", "\t \\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.ContainsRune(s, 0) {
			t.Skip("NUL cannot be in a shell argument")
		}
		out, err := exec.Command(sh, "-c", "printf %s "+nodeops.ShellQuote(s)).Output()
		if err != nil {
			t.Fatalf("sh -c printf %%s %s: %v", nodeops.ShellQuote(s), err)
		}
		if string(out) != s {
			t.Errorf("round trip of %q gave %q", s, out)
		}
	})
}
