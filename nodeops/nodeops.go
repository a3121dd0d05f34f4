// Package nodeops holds what every node-side action shares: the Target a
// command reaches over SSH, the Runner interface that runs a command on one
// node, the Status a node ends in, and the NodeSource interface through which
// the inventory is completed from the cluster's Node objects.
//
// The SSH client lives in nodeops/sshclient, the fan-out engine in
// nodeops/fanout and node selection in nodeops/selector.
package nodeops

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Target is one node as resolved for a run: where to reach it and how it was
// found.
type Target struct {
	Name string
	// Address is a host name or IP address, without port.
	Address string
	// Port is the SSH port; 0 means the client's default (ssh config, then
	// the inventory, then 22).
	Port int
	// User overrides the SSH user ("" means the client's default).
	User   string
	Roles  []string
	Labels map[string]string
	// ContainerdSocket is containerd's socket on the node ("" means the
	// inventory's default).
	ContainerdSocket string
	// Source says where the node came from: "inventory", "etcd",
	// "inventory+etcd" or "nodes-file".
	Source string
}

// HasRole reports whether the target has the role.
func (t Target) HasRole(role string) bool {
	for _, r := range t.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// Command is what to run on a node. Line is given to the remote shell; the
// runner adds `sudo -n` when its sudo policy says so.
type Command struct {
	Line string
	// Stdin, if not nil, is written to the command's standard input.
	Stdin []byte
	// NoSudo runs Line as the SSH user even when the policy would add sudo
	// (used by checks that test sudo themselves).
	NoSudo bool
}

// Output is what a command that ran left behind. Stdout and Stderr are the
// tails the runner kept (see sshclient.Options.OutputLimit).
type Output struct {
	ExitCode int
	Stdout   []byte
	Stderr   []byte
	// Truncated reports that the head of stdout or stderr was dropped.
	Truncated bool
}

// Runner runs one command on one node. Implementations must return when ctx
// is done, and return errors of type *Error so that the fan-out can classify
// them.
type Runner interface {
	Run(ctx context.Context, t Target, c Command) (Output, error)
}

// Status is how a node ended.
type Status string

// The statuses, in the order summaries list them.
const (
	// StatusOK: the command ran and exited 0.
	StatusOK Status = "ok"
	// StatusFailed: the command ran (or started) and failed: non-zero exit,
	// killed by a signal, the connection lost mid-command, or the per-node
	// timeout expired while it ran.
	StatusFailed Status = "failed"
	// StatusUnreachable: the node could not be reached: no route, connection
	// refused, or a timeout before the command started.
	StatusUnreachable Status = "unreachable"
	// StatusRefused: trust failed: the host key changed, is unknown or was
	// revoked, or the node refused our credentials (authentication or sudo).
	StatusRefused Status = "refused"
	// StatusCancelled: the run was cancelled before the node finished.
	StatusCancelled Status = "cancelled"
)

// Statuses lists every status in summary order.
var Statuses = []Status{StatusOK, StatusFailed, StatusUnreachable, StatusRefused, StatusCancelled}

// Phase is the step of reaching a node where an error happened.
type Phase string

// The phases of one command on one node.
const (
	PhaseDial      Phase = "dial"
	PhaseHandshake Phase = "handshake"
	PhaseHostKey   Phase = "host key"
	PhaseAuth      Phase = "auth"
	PhaseSession   Phase = "session"
	PhaseCommand   Phase = "command"
)

// Error is a failure on one node, with the phase it happened in and the
// status it leaves the node in.
type Error struct {
	Node   string
	Phase  Phase
	Status Status
	// Reason is a short machine-friendly word: "timeout", "exit",
	// "host-key-changed", "host-key-unknown", "auth", "sudo", "refused",
	// "reset", "killed", "cancelled"...
	Reason string
	// Retryable is set when nothing ran on the node yet and the error is
	// transient (connection refused or reset before the command started).
	Retryable bool
	// Hint tells the operator what to do, if anything.
	Hint string
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "node %s: %s: %v", e.Node, e.Phase, e.Err)
	if e.Hint != "" && !strings.Contains(e.Err.Error(), "hint:") {
		b.WriteString("\nhint: ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// ExitError is the error of a command that ran and exited non-zero (or was
// killed by a signal, then Signal is set and Code is -1).
type ExitError struct {
	Code   int
	Signal string
}

func (e *ExitError) Error() string {
	if e.Signal != "" {
		return "killed by signal " + e.Signal
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// StatusOf classifies an error returned by a Runner. A nil error is ok;
// an error that is not an *Error counts as failed, or cancelled when it is
// a context cancellation.
func StatusOf(err error) (Status, string) {
	if err == nil {
		return StatusOK, ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Status, e.Reason
	}
	if errors.Is(err, context.Canceled) {
		return StatusCancelled, "cancelled"
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return StatusFailed, "timeout"
	}
	return StatusFailed, ""
}

// Retryable reports whether err is safe to retry: nothing ran on the node.
func Retryable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retryable
}

// ClusterNode is a node as the cluster knows it (a Node object in etcd).
type ClusterNode struct {
	Name string
	// InternalIP is the first InternalIP in status.addresses ("" if none).
	InternalIP string
	// Hostname is the Hostname address, if any.
	Hostname string
	// Roles come from node-role.kubernetes.io/ROLE labels.
	Roles  []string
	Labels map[string]string
}

// NodeSource lists the cluster's nodes without the API server, e.g. from
// the Node objects in etcd. Node selection uses it to complete the
// inventory and to match labels.
type NodeSource interface {
	ListNodes(ctx context.Context) ([]ClusterNode, error)
}
