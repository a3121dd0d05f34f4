package runbook

import (
	"context"
	"errors"
	"strings"
	"testing"
)

const okRunbook = `name: demo
description: a demo
parameters:
  ttl: {type: duration, default: 15m}
  ds: {type: string, required: true}
steps:
  - id: shed
    type: shed-network
    params:
      ttl: "{{ .params.ttl }}"
      allow: [10.0.0.0/8, 192.168.1.1]
  - id: hold
    type: hold-pods
    params: {daemonset: "{{ .params.ds }}"}
    verify:
      check: workload-stopped
      params: {daemonset: "{{ .params.ds }}"}
      timeout: 1m
    onFailure: rollback
  - id: wait
    type: wait-until
    when: "{{ ne .steps.hold.change \"\" }}"
    params: {check: shed, state: active, timeout: 30s}
`

func TestLoadValid(t *testing.T) {
	rb, err := Load("demo.yaml", []byte(okRunbook))
	if err != nil {
		t.Fatal(err)
	}
	if rb.Name != "demo" || len(rb.Steps) != 3 || len(rb.Parameters) != 2 {
		t.Fatalf("loaded %+v", rb)
	}
	if got := rb.Steps[0].Params["allow"]; got != "10.0.0.0/8\n192.168.1.1" {
		t.Errorf("a list param is %q", got)
	}
	if rb.Steps[1].OnFailure != OnFailureRollback || rb.Steps[1].Verify == nil || rb.Steps[1].Verify.Check != "workload-stopped" {
		t.Errorf("step hold: %+v", rb.Steps[1])
	}
	if rb.Steps[0].OnFailure != OnFailureStop {
		t.Errorf("default onFailure %q", rb.Steps[0].OnFailure)
	}
}

// Every loading error names the file, the line and the field.
func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string // each "line: field: text"
	}{
		{"yaml syntax", "name: x\nsteps: [\n", []string{"f.yaml:2: (yaml): "}},
		{"empty", "", []string{"f.yaml:1: (file): empty"}},
		{"unknown top field", "name: x\nstep: []\n", []string{"f.yaml:2: step: unknown field", "f.yaml:1: steps: missing"}},
		{"bad name", "name: Bad_Name\nsteps: [{id: a, type: note, params: {message: hi}}]\n", []string{"f.yaml:1: name: \"Bad_Name\""}},
		{"no steps", "name: x\nsteps: []\n", []string{"f.yaml:2: steps: want a list of at least one step"}},
		{"unknown type", "name: x\nsteps:\n  - id: a\n    type: shed-netwrok\n", []string{`f.yaml:4: steps[0].type: unknown step type "shed-netwrok" (this build has: `}},
		{"missing required param of apiserver-add", "name: x\nsteps:\n  - id: a\n    type: apiserver-add\n", []string{`f.yaml:3: steps[0].params.node: missing: the standby host`}},
		{"bad advertiseAddress", "name: x\nsteps:\n  - id: a\n    type: apiserver-add\n    params: {node: cp-2, advertiseAddress: cp-2.example}\n", []string{`f.yaml:5: steps[0].params.advertiseAddress: "cp-2.example": want an IP address`}},
		{"missing id", "name: x\nsteps:\n  - type: note\n    params: {message: hi}\n", []string{"f.yaml:3: steps[0].id: missing"}},
		{"duplicate id", "name: x\nsteps:\n  - {id: a, type: note, params: {message: hi}}\n  - {id: a, type: note, params: {message: hi}}\n", []string{`f.yaml:4: steps[1].id: "a": already the id of steps[0]`}},
		{"id with dash", "name: x\nsteps:\n  - {id: my-step, type: note, params: {message: hi}}\n", []string{`f.yaml:3: steps[0].id: "my-step": step ids are letters`}},
		{"unknown param", "name: x\nsteps:\n  - id: a\n    type: shed-lift\n    params:\n      node: cp-1\n", []string{"f.yaml:6: steps[0].params.node: unknown parameter (want one of nodes, firewall)"}},
		{"missing required param", "name: x\nsteps:\n  - id: a\n    type: shed-network\n    params:\n      mode: drop\n", []string{"f.yaml:6: steps[0].params.ttl: missing: how long"}},
		{"bad literal type", "name: x\nsteps:\n  - id: a\n    type: shed-network\n    params:\n      ttl: soon\n", []string{`f.yaml:6: steps[0].params.ttl: "soon" is not a duration`}},
		{"bad onFailure", "name: x\nsteps:\n  - id: a\n    type: note\n    params: {message: hi}\n    onFailure: retry\n", []string{`f.yaml:6: steps[0].onFailure: "retry": want stop, continue or rollback`}},
		{"undeclared param ref", "name: x\nsteps:\n  - id: a\n    type: note\n    params:\n      message: \"{{ .params.nope }}\"\n", []string{`f.yaml:6: steps[0].params.message: refers to parameter "nope"`}},
		{"later step ref", "name: x\nsteps:\n  - id: a\n    type: note\n    params:\n      message: \"{{ .steps.b.change }}\"\n  - {id: b, type: note, params: {message: hi}}\n", []string{`f.yaml:6: steps[0].params.message: refers to step "b", which is not an earlier step`}},
		{"bad template", "name: x\nsteps:\n  - id: a\n    type: note\n    params:\n      message: \"{{ .params.x \"\n", []string{"f.yaml:6: steps[0].params.message: template: "}},
		{"unknown check", "name: x\nsteps:\n  - id: a\n    type: shed-lift\n    verify: {check: magic}\n", []string{`f.yaml:5: steps[0].verify.check: unknown check "magic"`}},
		{"check param", "name: x\nsteps:\n  - id: a\n    type: wait-until\n    params: {check: shed, state: active, colour: red}\n", []string{"f.yaml:5: steps[0].params.colour: unknown parameter"}},
		{"check missing its param", "name: x\nsteps:\n  - id: a\n    type: wait-until\n    params: {check: shed}\n", []string{"f.yaml:5: steps[0].params.state: missing"}},
		{"verify bad timeout", "name: x\nsteps:\n  - id: a\n    type: shed-lift\n    verify: {check: shed, params: {state: none}, timeout: later}\n", []string{`f.yaml:5: steps[0].verify.timeout: "later"`}},
		{"param bad type", "name: x\nparameters:\n  n: {type: number}\nsteps: [{id: a, type: note, params: {message: hi}}]\n", []string{`f.yaml:3: parameters.n.type: "number": want one of string, int, bool, duration, list`}},
		{"param bad default", "name: x\nparameters:\n  n: {type: int, default: many}\nsteps: [{id: a, type: note, params: {message: hi}}]\n", []string{`f.yaml:3: parameters.n.default: "many" is not an integer`}},
		{"several problems at once", "name: x\nsteps:\n  - id: a\n    type: nope\n  - id: b\n    type: note\n", []string{"f.yaml:4: steps[0].type: unknown step type", "f.yaml:5: steps[1].params.message: missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load("f.yaml", []byte(tc.yaml))
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("want a LoadError, got %v", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q:\n%s", w, msg)
				}
			}
			if le.ExitCode() != 2 {
				t.Errorf("exit code %d", le.ExitCode())
			}
		})
	}
}

func TestResolveParams(t *testing.T) {
	rb, err := Load("demo.yaml", []byte(okRunbook))
	if err != nil {
		t.Fatal(err)
	}
	got, err := rb.ResolveParams(map[string]string{"ds": "telemetry/agent"})
	if err != nil || got["ttl"] != "15m" || got["ds"] != "telemetry/agent" {
		t.Errorf("resolved %v, %v", got, err)
	}
	for _, tc := range []struct {
		given map[string]string
		want  string
	}{
		{map[string]string{}, "--param ds is required"},
		{map[string]string{"ds": "a/b", "colour": "red"}, "--param colour: runbook demo has no such parameter"},
		{map[string]string{"ds": "a/b", "ttl": "long"}, `--param ttl: "long" is not a duration`},
	} {
		if _, err := rb.ResolveParams(tc.given); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.given, err, tc.want)
		}
	}
}

// A capability that lands later registers its step type, and runbooks
// naming it then validate.
func TestRegisterStepLater(t *testing.T) {
	const yaml = "name: x\nsteps:\n  - id: a\n    type: test-later\n    params: {nodes: worker-1}\n"
	if _, err := Load("f.yaml", []byte(yaml)); err == nil || !strings.Contains(err.Error(), `unknown step type "test-later"`) {
		t.Fatalf("before registration: %v", err)
	}
	RegisterStep(StepType{Name: "test-later", Params: []ParamSpec{nodesParam},
		Prepare: func(context.Context, *Session, Args) (*Action, error) { return nil, errors.New("test only") }})
	defer func() {
		registry.Lock()
		delete(registry.steps, "test-later")
		registry.Unlock()
	}()
	if _, err := Load("f.yaml", []byte(yaml)); err != nil {
		t.Fatalf("after registration: %v", err)
	}
}

func TestBuiltinsLoad(t *testing.T) {
	names := Builtins()
	if len(names) < 2 {
		t.Fatalf("builtins: %v", names)
	}
	for _, n := range []string{"apiserver-overload", "priority-preemption-cascade"} {
		rb, err := Builtin(n)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if rb.Name != n || rb.Source != "builtin:"+n {
			t.Errorf("%s: name %q source %q", n, rb.Name, rb.Source)
		}
	}
	if _, err := Open("no-such-runbook"); err == nil || !strings.Contains(err.Error(), "apiserver-overload") {
		t.Errorf("unknown builtin: %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(okRunbook))
	f.Add([]byte("name: x\nsteps: [{id: a, type: note, params: {message: hi}}]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rb, err := Load("f.yaml", b)
		if err == nil && (rb.Name == "" || len(rb.Steps) == 0) {
			t.Fatalf("loaded a runbook without a name or steps: %+v", rb)
		}
	})
}

// Literal parameter values are checked for what they must be, not only
// their type, when the runbook is loaded: each refusal names the file,
// line and field, and says what is wanted.
func TestLoadChecksParamValues(t *testing.T) {
	for _, tc := range []struct{ step, want string }{
		{"type: scale\n    params: {object: web, replicas: \"1\"}", `steps[0].params.object: "web": want NAMESPACE/NAME`},
		{"type: scale\n    params: {object: shop/web, replicas: \"-2\"}", "steps[0].params.replicas: -2: must not be negative"},
		{"type: stop-pods\n    params: {selector: \"app in (a\"}", `steps[0].params.selector: "app in (a": not a label selector`},
		{"type: stop-pods\n    params: {daemonset: telemetry, via: ssh}", `steps[0].params.daemonset: "telemetry": want NAMESPACE/NAME`},
		{"type: shed-network\n    params: {ttl: 5m, mode: block}", `steps[0].params.mode: "block": want drop, reject or limit`},
		{"type: shed-network\n    params: {ttl: 5m, firewall: pf}", `steps[0].params.firewall: "pf": want auto, nft or iptables`},
		{"type: priorityclass-neutralise\n    params: {priorityClass: default/high}", `steps[0].params.priorityClass: "default/high": want a name without a namespace`},
		{"type: verify\n    params: {check: shed, state: on}", `steps[0].params.state: "on": want active or none`},
	} {
		_, err := Load("bad.yaml", []byte("name: x\nsteps:\n  - id: a\n    "+tc.step+"\n"))
		if err == nil || !strings.Contains(err.Error(), "bad.yaml:5: "+tc.want) {
			t.Errorf("%s:\n%v\nwant bad.yaml:5: %s", tc.step, err, tc.want)
		}
	}
	// The same parameters with good values load.
	if _, err := Load("good.yaml", []byte("name: x\nsteps:\n  - id: a\n    type: stop-pods\n    params: {selector: \"app in (a,b)\", daemonset: t/agent, via: sudo}\n  - id: b\n    type: shed-network\n    params: {ttl: 5m, mode: limit, rate: \"5\", firewall: nft}\n")); err != nil {
		t.Errorf("good values: %v", err)
	}
}
