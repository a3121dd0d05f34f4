package schematest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The examples of docs/json-output.md#runbooks validate; lines of an
// unknown type, without a required field or with an unknown status do not.
func TestDocsExamplesAndViolations(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(EventsSchemaPath()), "..", "json-output.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	_, section, ok := strings.Cut(doc, "### Runbooks")
	if !ok {
		t.Fatal("json-output.md has no Runbooks section")
	}
	_, block, _ := strings.Cut(section, "```json\n")
	block, _, _ = strings.Cut(block, "```")
	counts, err := ValidateEvents(strings.NewReader(block))
	if err != nil {
		t.Fatalf("the documented examples do not validate:\n%v", err)
	}
	if counts["runStarted"] != 1 || counts["runFinished"] != 1 || counts["change"] != 1 {
		t.Errorf("examples read: %v", counts)
	}

	for _, tt := range []struct{ line, want string }{
		{`{"type":"stepPaused","runId":"rb-20261203T073012-1a2b3c"}`, "/type"},
		{`{"runId":"rb-20261203T073012-1a2b3c"}`, "missing property 'type'"},
		{`{"type":"stepStarted","runId":"rb-20261203T073012-1a2b3c","step":1,"id":"shed","stepType":"shed-network"}`, "missing property 'title'"},
		{`{"type":"stepFinished","runId":"rb-20261203T073012-1a2b3c","step":1,"id":"a","stepType":"note","status":"exploded","elapsedMs":1}`, "/status"},
		{`{"type":"stepFinished","runId":"rb-20261203T073012-1a2b3c","step":1,"id":"a","stepType":"note","status":"failed","elapsedMs":1}`, "missing property 'error'"},
		{`{"type":"runStarted","runId":"rb-1","runbook":"x","steps":1,"time":"2026-12-03T07:30:12Z"}`, "/runId"},
		{`{"type":"runStarted","runId":"rb-20261203T073012-1a2b3c","runbook":"x","steps":1,"time":"yesterday"}`, "/time"},
		{`not json`, "not JSON"},
	} {
		_, err := ValidateEvents(strings.NewReader("\n" + tt.line + "\n"))
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "line 2:") {
			t.Errorf("%s: got %v, want an error on line 2 about %s", tt.line, err, tt.want)
		}
	}
}
