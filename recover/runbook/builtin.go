package runbook

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

// builtins are the runbooks shipped in the binary.
//
//go:embed builtin/*.yaml
var builtins embed.FS

// BuiltinPrefix names a built-in runbook's source.
const BuiltinPrefix = "builtin:"

// Builtins lists the built-in runbooks' names.
func Builtins() []string {
	entries, _ := fs.ReadDir(builtins, "builtin")
	var out []string
	for _, e := range entries {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(out)
	return out
}

// Builtin loads the built-in runbook name.
func Builtin(name string) (*Runbook, error) {
	b, err := builtins.ReadFile("builtin/" + name + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("no built-in runbook %q (there are: %s)\nhint: breakglass runbook list", name, strings.Join(Builtins(), ", "))
	}
	return Load(BuiltinPrefix+name, b)
}

// Open loads a built-in runbook by name, or a runbook file by path (a
// name with a / or ending in .yaml or .yml).
func Open(nameOrFile string) (*Runbook, error) {
	if strings.HasPrefix(nameOrFile, BuiltinPrefix) {
		return Builtin(strings.TrimPrefix(nameOrFile, BuiltinPrefix))
	}
	if strings.ContainsRune(nameOrFile, '/') || strings.HasSuffix(nameOrFile, ".yaml") || strings.HasSuffix(nameOrFile, ".yml") {
		return LoadFile(nameOrFile)
	}
	return Builtin(nameOrFile)
}
