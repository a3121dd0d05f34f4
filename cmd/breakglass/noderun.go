package main

import (
	"fmt"

	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

// nodeEnv is the steps environment of a command that changes nodes over
// SSH: the inventory, the fan-out options and a runner connected as the
// SSH flags say. The caller closes the runner with the returned func.
func (d *Deps) nodeEnv(f *sshFlags) (*steps.Env, func() error, error) {
	r, err := newRunner(d, f)
	if err != nil {
		return nil, nil, err
	}
	env := d.stepsEnv(f)
	env.Runner = r
	return env, r.Close, nil
}

// kindEngine returns an engine with only kind registered, printing its
// events. In text, started says on stderr what each item's start waits
// for (an API server restarting, say), when it returns something.
func (d *Deps) kindEngine(kind change.Kind, started func(change.ItemStarted) string) (*change.Engine, *change.Stream) {
	ep := &eventPrinter{d: d, p: newPrinter(d.Out, d.Global.Output)}
	e, stream := d.newEngineWith(func(ev change.Event) {
		if s, ok := ev.(change.ItemStarted); ok && started != nil && ep.p.Text() {
			if msg := started(s); msg != "" {
				fmt.Fprintf(d.ErrOut, "%s: %s\n", s.Item.Target.Node, msg)
			}
		}
		ep.print(ev)
	})
	e.Register(kind)
	return e, stream
}
