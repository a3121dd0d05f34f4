package main

import (
	"encoding/json"
	"io"
	"os/exec"
	"path"
	"strings"
	"testing"
)

const module = "github.com/breakglass/breakglass"

// TestImportDirection keeps imports flowing one way:
// cmd -> recover/* -> {nodeops, etcd}; nodeops and etcd never import each
// other, recover or cmd, and only tests may use the lab. Benchmark programs
// (a package main in a directory named bench) are tools like cmd: they
// measure a whole path from the top (the stop path through the change
// engine, say) and may import what they measure.
func TestImportDirection(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := map[string][]string{
		"etcd":    {"nodeops", "recover", "cmd", "lab"},
		"nodeops": {"etcd", "recover", "cmd", "lab"},
		"recover": {"cmd", "lab"},
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	checked := 0
	for {
		var p struct {
			ImportPath string
			Name       string
			Deps       []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(p.ImportPath, module+"/")
		if p.Name == "main" && path.Base(rel) == "bench" {
			continue
		}
		top := strings.SplitN(rel, "/", 2)[0]
		bans, ok := forbidden[top]
		if !ok {
			continue
		}
		checked++
		for _, dep := range p.Deps {
			if !strings.HasPrefix(dep, module+"/") {
				continue
			}
			dtop := strings.SplitN(strings.TrimPrefix(dep, module+"/"), "/", 2)[0]
			for _, b := range bans {
				if dtop == b {
					t.Errorf("%s imports %s: %s must not depend on %s", rel, strings.TrimPrefix(dep, module+"/"), top, b)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no etcd, nodeops or recover package found: the test checked nothing")
	}
}
