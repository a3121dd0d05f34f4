package runbook

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/breakglass/breakglass/nodeops/pods"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/steps"
)

// The steps that change nothing (note, confirm, verify, wait-until) and
// the checks they run. A check reads what is there, from the nodes, from
// etcd or from the apiserver as a client sees it.

var checkStepParams = []ParamSpec{
	{Name: "check", Type: "string", Required: true, Doc: "the check to run"},
	{Name: "timeout", Type: "duration", Doc: "how long to wait for it to hold"},
	{Name: "interval", Type: "duration", Default: "2s", Doc: "how often it is evaluated"},
}

func init() {
	RegisterStep(StepType{Name: "note", Summary: "show a message to the operator",
		Params: []ParamSpec{{Name: "message", Type: "string", Required: true, Doc: "the message"}},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			return &Action{Do: func(ctx context.Context, dryRun bool) (map[string]string, error) {
				s.Note("%s", a.String("message"))
				return nil, nil
			}}, nil
		}})
	RegisterStep(StepType{Name: "confirm", Summary: "ask the operator before going on (--yes answers it)",
		Params: []ParamSpec{{Name: "message", Type: "string", Required: true, Doc: "the question"}},
		Prepare: func(ctx context.Context, s *Session, a Args) (*Action, error) {
			return &Action{Do: func(ctx context.Context, dryRun bool) (map[string]string, error) {
				if dryRun {
					s.Note("would ask: %s", a.String("message"))
					return nil, nil
				}
				if s.Ask == nil {
					s.Note("%s: yes (--yes)", a.String("message"))
					return nil, nil
				}
				return nil, s.Ask(ctx, a.String("message"))
			}}, nil
		}})
	RegisterStep(StepType{Name: "verify", Summary: "check a condition, waiting up to timeout (default: once) for it to hold; fails the step otherwise",
		Params: checkStepParams, CheckParams: true, Prepare: prepareCheckStep(0)})
	RegisterStep(StepType{Name: "wait-until", Summary: "wait until a condition holds (default timeout 2m)",
		Params: checkStepParams, CheckParams: true, Prepare: prepareCheckStep(2 * time.Minute)})

	RegisterCheck(CheckType{Name: "apiserver", Summary: "the apiserver answers requests of a client within a latency (its SLO)",
		Params: []ParamSpec{
			{Name: "kubeconfig", Type: "string", Doc: "the client's kubeconfig (an ordinary user's, not system:masters); default: $KUBECONFIG or ~/.kube/config, else anonymous to the inventory's apiserver.url"},
			{Name: "path", Type: "string", Default: "/readyz", Doc: "what is asked (/api/v1/pods?limit=500 for an ordinary LIST)"},
			{Name: "within", Type: "duration", Default: "1s", Doc: "the latency each answer must come within"},
			{Name: "requests", Type: "int", Default: "5", Check: numberIn(1, 1e6, false, "at least 1 request"), Doc: "how many requests, one after the other, must all be answered 2xx in time"},
		},
		Build: buildAPIServerCheck})
	RegisterCheck(CheckType{Name: "workload-stopped", Summary: "no selected pod runs a container of its own image on the nodes (containerd); a held pod running the pause image counts as stopped",
		Params: cloneSpecs(podSelectParams), Build: buildPodsCheck(true)})
	RegisterCheck(CheckType{Name: "pods-running", Summary: "at least min selected pods run on the nodes (containerd)",
		Params: append(cloneSpecs(podSelectParams), ParamSpec{Name: "min", Type: "int", Default: "1", Doc: "how many pods must run"}),
		Build:  buildPodsCheck(false)})
	RegisterCheck(CheckType{Name: "apiserver-restartable", Summary: "every API server of the nodes answers /livez and /readyz on its node and is not starved of CPU: a tune would not be refused",
		Params: []ParamSpec{{Name: "nodes", Type: "list", Doc: "the control-plane nodes (default role=control-plane)"}},
		Build:  buildRestartableCheck})
	RegisterCheck(CheckType{Name: "shed", Summary: "breakglass's nft table on the nodes is in the wanted state",
		Params: []ParamSpec{
			{Name: "state", Type: "string", Required: true, Check: oneOf("active", "none"), Doc: "active (the rules match) or none (no table, or a lapsed one)"},
			nodesParam,
		},
		Build: buildShedCheck})
}

func cloneSpecs(p []ParamSpec) []ParamSpec { return append([]ParamSpec(nil), p...) }

// checkArgs splits a check step's args: the check's own are the others.
func checkArgs(s *Session, a Args) (*CheckType, Args, error) {
	name := a.String("check")
	c, ok := LookupCheck(name)
	if !ok {
		return nil, Args{}, fmt.Errorf("unknown check %q", name)
	}
	vals := map[string]string{}
	for k, v := range a.vals {
		if k != "check" && k != "timeout" && k != "interval" {
			vals[k] = v
		}
	}
	return c, newArgs("check "+name, vals, c.Params), nil
}

func prepareCheckStep(defTimeout time.Duration) func(ctx context.Context, s *Session, a Args) (*Action, error) {
	return func(ctx context.Context, s *Session, a Args) (*Action, error) {
		c, ca, err := checkArgs(s, a)
		if err != nil {
			return nil, err
		}
		timeout := defTimeout
		if a.Has("timeout") {
			if timeout, err = a.Duration("timeout"); err != nil {
				return nil, err
			}
		}
		interval, err := a.Duration("interval")
		if err != nil {
			return nil, err
		}
		return &Action{Do: func(ctx context.Context, dryRun bool) (map[string]string, error) {
			f, err := c.Build(ctx, s, ca)
			if err != nil {
				return nil, err
			}
			if dryRun {
				// A rehearsal reads the condition once and reports it: the
				// state it checks for comes from steps not applied.
				ok, detail, err := f(ctx)
				s.emit(change.StepCheck{RunID: s.runID, Index: s.index, ID: s.stepID, Check: c.Name, OK: ok && err == nil, Detail: checkDetail(detail, err)})
				return nil, nil
			}
			return waitCheck(ctx, s, c.Name, f, timeout, interval)
		}}, nil
	}
}

func checkDetail(detail string, err error) string {
	if err != nil {
		return firstLine(err.Error())
	}
	return detail
}

// waitCheck evaluates f until it holds or timeout passes (once for 0),
// reporting each evaluation. It waits on the condition, not on a clock:
// the interval only spaces the reads.
func waitCheck(ctx context.Context, s *Session, name string, f CheckFunc, timeout, interval time.Duration) (map[string]string, error) {
	start := time.Now()
	if interval <= 0 {
		interval = 2 * time.Second
	}
	for {
		ok, detail, err := f(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.emit(change.StepCheck{RunID: s.runID, Index: s.index, ID: s.stepID, Check: name, OK: ok && err == nil, Detail: checkDetail(detail, err)})
		if ok && err == nil {
			return map[string]string{"detail": detail, "after": time.Since(start).Round(time.Millisecond).String()}, nil
		}
		if time.Since(start)+interval > timeout {
			if err != nil {
				return nil, fmt.Errorf("check %s: %w", name, err)
			}
			return nil, fmt.Errorf("check %s did not hold within %s: %s", name, timeout, detail)
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func buildAPIServerCheck(ctx context.Context, s *Session, a Args) (CheckFunc, error) {
	within, err := a.Duration("within")
	if err != nil {
		return nil, err
	}
	n, err := a.Int("requests")
	if err != nil {
		return nil, err
	}
	var cfg *rest.Config
	if kc := a.String("kubeconfig"); kc != "" {
		if cfg, err = clientcmd.BuildConfigFromFlags("", kc); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kc, err)
		}
	} else if c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), nil).ClientConfig(); err == nil {
		// The operator's own kubeconfig ($KUBECONFIG, ~/.kube/config).
		cfg = c
	} else {
		if s.Env.Inventory == nil || s.Env.Inventory.APIServer.URL == "" {
			return nil, fmt.Errorf("no kubeconfig given, none found ($KUBECONFIG, ~/.kube/config), and the inventory has no apiserver.url\nhint: give the check an ordinary user's kubeconfig")
		}
		// Anonymous, to the inventory's apiserver.url (its CA must be
		// trusted by the system).
		cfg = &rest.Config{Host: s.Env.Inventory.APIServer.URL}
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: rt, Timeout: within}
	url := strings.TrimSuffix(cfg.Host, "/") + a.String("path")
	return func(ctx context.Context) (bool, string, error) {
		var slowest time.Duration
		for i := 0; i < n; i++ {
			req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
			if err != nil {
				return false, "", err
			}
			start := time.Now()
			resp, err := hc.Do(req)
			d := time.Since(start)
			if err != nil {
				return false, fmt.Sprintf("request %d of %d: %v", i+1, n, firstLine(err.Error())), nil
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 300 {
				return false, fmt.Sprintf("request %d of %d: %s after %s", i+1, n, resp.Status, d.Round(time.Millisecond)), nil
			}
			if d > within {
				return false, fmt.Sprintf("request %d of %d: answered after %s (SLO %s)", i+1, n, d.Round(time.Millisecond), within), nil
			}
			slowest = max(slowest, d)
		}
		return true, fmt.Sprintf("%d of %d answered 2xx, slowest %s (SLO %s)", n, n, slowest.Round(time.Millisecond), within), nil
	}, nil
}

// buildPodsCheck: stopped (no selected pod runs its own image), or
// running (at least min selected pods run).
func buildPodsCheck(stopped bool) func(ctx context.Context, s *Session, a Args) (CheckFunc, error) {
	return func(ctx context.Context, s *Session, a Args) (CheckFunc, error) {
		k, err := podsKind(ctx, s, a, a.Has("daemonset") || a.Has("deployment"))
		if err != nil {
			return nil, err
		}
		minPods, err := a.Int("min")
		if err != nil {
			k.Close()
			return nil, err
		}
		sel := &steps.Selection{Targets: k.Targets, Selector: pods.Selector{Namespace: a.String("namespace"), Labels: a.String("selector"),
			Image: a.String("image"), Name: a.String("name")}, DaemonSet: a.String("daemonset"), Deployment: a.String("deployment"), Store: k.Store,
			// As stop-pods: a workload's pods are looked for on the nodes
			// they are scheduled on, unless the check names nodes.
			NarrowNodes: !a.Has("nodes")}
		return func(ctx context.Context) (bool, string, error) {
			// The selection is resolved afresh each time: a workload's
			// pods are new pods once its controller replaced them.
			cur := *sel
			cur.Selector.UIDs = nil
			if err := cur.Resolve(ctx); err != nil {
				return false, "", err
			}
			perNode := map[string]int{}
			total, failed := 0, 0
			for _, r := range k.List(ctx, cur.Targets, cur.Selector.Image != "", stopped, "", nil) {
				if r.Err != nil {
					failed++
					continue
				}
				pauseID := ""
				for _, img := range r.Output.Images {
					if img.Name == r.Output.Pause {
						pauseID = img.ID
					}
				}
				for _, p := range r.Output.Pods {
					if !cur.Selector.Match(&p) {
						continue
					}
					if !stopped {
						if p.State == "ready" && p.Running() {
							perNode[r.Target.Name]++
							total++
						}
						continue
					}
					for _, c := range p.Containers {
						if c.State == "running" && (pauseID == "" || c.ImageRef != pauseID) {
							perNode[r.Target.Name]++
							total++
							break
						}
					}
				}
			}
			desc := describePerNode(perNode)
			if failed > 0 {
				desc += fmt.Sprintf("; %d node(s) did not answer", failed)
			}
			if stopped {
				return total == 0 && failed == 0, fmt.Sprintf("%d pod(s) still run their own image (%s)", total, desc), nil
			}
			return total >= minPods, fmt.Sprintf("%d pod(s) run, want at least %d (%s)", total, minPods, desc), nil
		}, nil
	}
}

func describePerNode(m map[string]int) string {
	if len(m) == 0 {
		return "none on any node"
	}
	var parts []string
	for n, c := range m {
		parts = append(parts, fmt.Sprintf("%s %d", n, c))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// buildRestartableCheck is the apiserver-restartable check: what
// apiserver tune refuses on (steps.Manifest.Unrestartable), asked until
// no node is left: a runbook waits with it for the API servers to have
// CPU to spare again once the load is off, before a tune restarts them.
func buildRestartableCheck(ctx context.Context, s *Session, a Args) (CheckFunc, error) {
	targets, err := s.Nodes(ctx, a.List("nodes"), steps.ShedNodes)
	if err != nil {
		return nil, err
	}
	k := s.Env.Manifest(targets, "", "")
	return func(ctx context.Context) (bool, string, error) {
		down, unknown, err := k.Unrestartable(ctx, targets)
		if err != nil {
			return false, "", err
		}
		if len(down) > 0 {
			return false, "not yet: " + strings.Join(down, ", "), nil
		}
		detail := fmt.Sprintf("the API server answers and has CPU to spare on %d node(s)", len(targets))
		if len(unknown) > 0 {
			detail = fmt.Sprintf("the API server answers on %d node(s); its CPU stall could not be measured on %s", len(targets), strings.Join(unknown, ", "))
		}
		return true, detail, nil
	}, nil
}

func buildShedCheck(ctx context.Context, s *Session, a Args) (CheckFunc, error) {
	want := a.String("state")
	if want != "active" && want != "none" {
		return nil, fmt.Errorf("state %q: want active or none", want)
	}
	targets, err := s.Nodes(ctx, a.List("nodes"), steps.ShedNodes)
	if err != nil {
		return nil, err
	}
	k := s.Env.Nft(targets)
	return func(ctx context.Context) (bool, string, error) {
		var off []string
		for _, r := range k.Probe(ctx, targets) {
			if r.Err != nil {
				off = append(off, r.Target.Name+": "+firstLine(r.Err.Error()))
				continue
			}
			active := r.Output.State.Present && r.Output.State.Active
			if active != (want == "active") {
				off = append(off, r.Target.Name+": "+map[bool]string{true: "active", false: "none"}[active])
			}
		}
		if len(off) > 0 {
			return false, "not " + want + " on " + strings.Join(off, ", "), nil
		}
		return true, fmt.Sprintf("%s on %d node(s)", want, len(targets)), nil
	}, nil
}

// APIServerProbe is the apiserver check's own request, made once, for a
// caller that watches the apiserver's health on its own (the TUI's poll):
// a GET of path (the check's default, /readyz, when empty) through the
// client the check builds for kubeconfig (when empty: $KUBECONFIG or
// ~/.kube/config, else anonymous to the inventory's apiserver.url), which
// holds when it is answered 2xx within timeout. It fails as the check
// does when there is no apiserver to ask.
func APIServerProbe(ctx context.Context, s *Session, kubeconfig, path string, timeout time.Duration) (CheckFunc, error) {
	c, ok := LookupCheck("apiserver")
	if !ok {
		return nil, fmt.Errorf("the apiserver check is not registered")
	}
	vals := map[string]string{"kubeconfig": kubeconfig, "requests": "1", "within": timeout.String()}
	if path != "" {
		vals["path"] = path
	}
	return c.Build(ctx, s, newArgs("check apiserver", vals, c.Params))
}

// APIServerKubeconfig is the kubeconfig the runbook's apiserver checks
// name (a verify or wait-until step's, or a step's verify), rendered
// against params (the run's resolved parameters): the first that names
// one and renders from the parameters alone (not from an earlier step's
// result, unknown before the run). "" when none does.
func (r *Runbook) APIServerKubeconfig(params map[string]string) string {
	sc := &scope{Params: params, Steps: map[string]map[string]string{}}
	var named []string
	for i := range r.Steps {
		st := &r.Steps[i]
		if t, ok := LookupStep(st.Type); ok && t.CheckParams && st.Params["check"] == "apiserver" {
			named = append(named, st.Params["kubeconfig"])
		}
		if st.Verify != nil && st.Verify.Check == "apiserver" {
			named = append(named, st.Verify.Params["kubeconfig"])
		}
	}
	for _, kc := range named {
		if v, err := sc.render("kubeconfig", kc); err == nil && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
