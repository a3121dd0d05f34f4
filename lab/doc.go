// Package lab brings up the rehearsal lab: a small but real Kubernetes cluster
// on one Linux machine, with one network namespace per host, a real etcd and
// kube-apiserver, and worker hosts that each run OpenSSH sshd, containerd and
// a kubelet. It also starts the incidents breakglass is built to recover.
package lab
