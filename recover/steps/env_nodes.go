package steps

import (
	"fmt"
	"time"

	"github.com/breakglass/breakglass/nodeops"
	"github.com/breakglass/breakglass/nodeops/apiprobe"
	"github.com/breakglass/breakglass/nodeops/manifest"
	"github.com/breakglass/breakglass/nodeops/service"
	"github.com/breakglass/breakglass/recover/change"
)

// The kinds that change files and services on nodes over SSH (the API
// server's manifest, kubelets and the controller-manager), built the same
// way for the commands and for runbook steps.

// DefaultServiceBackupDir is where files moved aside by kubelet stop go
// on the nodes, one directory per change.
const DefaultServiceBackupDir = "/etc/kubernetes/breakglass-backup"

// ServiceOptions say how kubelets and the controller-manager are found
// and waited for.
type ServiceOptions struct {
	// ControllerManagerManifest is the controller-manager's file on the
	// control-plane nodes ("": kubeadm's, the lab's, else its unit).
	ControllerManagerManifest string
	// BackupDir is where files moved aside go ("":
	// DefaultServiceBackupDir).
	BackupDir string
	// Wait bounds how long one node may take to stop or start (0: 2m).
	Wait time.Duration
	// HostedControllerManager is a hosted control plane's
	// controller-manager (Env.HostedControllerManager), or nil.
	HostedControllerManager *Object
}

// Service returns the service kind for targets (every node a change may
// touch, for undo). With a Store, started kubelets are waited for until
// they renewed their node's lease, read from etcd.
func (e *Env) Service(targets []nodeops.Target, o ServiceOptions) *Service {
	kl, cm := service.Kubelet(), service.ControllerManager(o.ControllerManagerManifest)
	kl.BackupDir, cm.BackupDir = o.BackupDir, o.BackupDir
	if kl.BackupDir == "" {
		kl.BackupDir, cm.BackupDir = DefaultServiceBackupDir, DefaultServiceBackupDir
	}
	k := &Service{Runner: e.Runner, Targets: targets, Kubelet: kl, ControllerManager: cm, Wait: o.Wait,
		CallTimeout: e.Fanout.Timeout, Concurrency: e.Fanout.Concurrency}
	if e.Store != nil {
		k.Leases = EtcdLeases{Store: e.Store}
		k.Etcd = &change.Etcd{Store: e.Store}
	}
	k.HostedControllerManager = o.HostedControllerManager
	return k
}

// HostedControllerManager is the hosted controller-manager named by flag
// (what flagName calls it, in errors), else by the inventory's
// controllerManager.deployment; nil when neither names one.
func (e *Env) HostedControllerManager(flagName, flag string) (*Object, error) {
	from := flagName
	if flag == "" && e.Inventory != nil && e.Inventory.ControllerManager.Deployment != "" {
		flag, from = e.Inventory.ControllerManager.Deployment, "inventory "+e.Inventory.Path+": controllerManager.deployment"
	}
	if flag == "" {
		return nil, nil
	}
	o, err := ParseHosted(flag)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %v", from, flag, err)
	}
	return &o, nil
}

// Manifest returns the API server manifest kind for targets: the
// manifest at path ("": the inventory's apiserver.manifest, else
// kubeadm's), backups under backupDir ("": next to the manifests
// directory), each node's API server watched on the inventory's port.
func (e *Env) Manifest(targets []nodeops.Target, path, backupDir string) *Manifest {
	if path == "" && e.Inventory != nil {
		path = e.Inventory.APIServer.Manifest
	}
	if path == "" {
		path = manifest.DefaultPath
	}
	return &Manifest{Runner: e.Runner, Watch: &NodeAPIServer{Runner: e.Runner, Probe: apiprobe.Options{Port: e.ShedPort(0)}},
		Targets: targets, Path: path, BackupDir: backupDir, CallTimeout: e.Fanout.Timeout, Concurrency: e.Fanout.Concurrency}
}

// APIServerMember returns the kind of apiserver add and remove: hosts
// are the control-plane and standby nodes (the API servers asked before
// one is taken away); the manifest at path and backups under backupDir as
// for Manifest; an added API server's etcd servers are the inventory's.
func (e *Env) APIServerMember(hosts []nodeops.Target, path, backupDir string) *APIServerMember {
	m := e.Manifest(hosts, path, backupDir)
	k := &APIServerMember{Runner: m.Runner, Watch: m.Watch, Hosts: hosts, Path: m.Path, BackupDir: backupDir,
		CallTimeout: m.CallTimeout, Now: e.Now}
	if e.Inventory != nil {
		k.Etcd = e.Inventory.Etcd.Endpoints
	}
	return k
}
