package nodeops

import "strings"

// ShellQuote quotes s as one word for a POSIX shell. Inside single quotes
// nothing is special, so only a single quote itself needs care: it ends the
// quoted part, is written escaped, and a new quoted part begins. Every
// command line breakglass builds from a value (a path, a whole command for
// sh -c) quotes the value here.
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
