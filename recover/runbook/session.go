package runbook

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/breakglass/breakglass/etcd"
	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/selector"
	"github.com/breakglass/breakglass/recover/change"
	"github.com/breakglass/breakglass/recover/journal"
	"github.com/breakglass/breakglass/recover/steps"
)

// Session is what step types work with: the levers' environment, etcd on
// first use, the journal, the operator, and the event stream.
type Session struct {
	// Env builds the kinds (its Store is filled by Store on first use).
	Env *steps.Env
	// OpenStore connects to etcd (nil: etcd is not configured).
	OpenStore func(ctx context.Context) (*etcd.Store, error)
	// Records reads the journal (a hold-lift and a daemonset-resume plan
	// from it).
	Records func() ([]journal.Record, error)
	// Ask puts a question to the operator (a confirm step); nil means
	// consent was given beforehand (--yes).
	Ask func(ctx context.Context, question string) error
	// Interactive is set when a person answers Ask at a terminal.
	Interactive bool
	Emit        func(change.Event)

	mu       sync.Mutex
	storeErr error
	tried    bool

	// The step being run, for the events a step emits.
	runID  string
	index  int
	stepID string
}

// Store returns etcd, connecting on first use.
func (s *Session) Store(ctx context.Context) (*etcd.Store, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Env.Store != nil || s.tried {
		return s.Env.Store, s.storeErr
	}
	s.tried = true
	if s.OpenStore == nil {
		s.storeErr = fmt.Errorf("etcd is not configured\nhint: give etcd endpoints in the inventory or with --endpoints")
		return nil, s.storeErr
	}
	s.Env.Store, s.storeErr = s.OpenStore(ctx)
	return s.Env.Store, s.storeErr
}

func (s *Session) emit(ev change.Event) {
	if s.Emit != nil {
		s.Emit(ev)
	}
}

// Note reports a message for the operator under the current step.
func (s *Session) Note(format string, a ...any) {
	s.emit(change.StepNote{RunID: s.runID, Index: s.index, ID: s.stepID, Text: fmt.Sprintf(format, a...)})
}

// Nodes resolves node selection terms (names, globs, role=ROLE,
// label=SELECTOR); none selects def, or every node when def is empty.
func (s *Session) Nodes(ctx context.Context, terms []string, def string) ([]nodeops.Target, error) {
	if len(terms) == 0 && def != "" {
		terms = []string{def}
	}
	nodes, warnings, err := s.Env.Nodes(ctx, selector.Options{Nodes: terms})
	for _, w := range warnings {
		s.Note("warning: %s", w)
	}
	if err != nil {
		return nil, err
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("nodes %s: no node matches", strings.Join(terms, ","))
	}
	return nodes, nil
}

// allNodes is every node breakglass knows (the undo of a kind needs them
// by name).
func (s *Session) allNodes(ctx context.Context) []nodeops.Target {
	nodes, _, _ := s.Env.Nodes(ctx, selector.Options{})
	return nodes
}

// fork is a Session on the same environment, journal reader, prompts and
// event stream, with a step of its own.
func (s *Session) fork() *Session {
	return &Session{Env: s.Env, OpenStore: s.OpenStore, Records: s.Records, Ask: s.Ask, Interactive: s.Interactive, Emit: s.Emit}
}
