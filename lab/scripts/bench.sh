#!/usr/bin/env bash
# make bench: every benchmark table of breakglass, one after another, each
# side by side with its peers in the same run. Traffic goes only to loopback
# and to processes the benchmarks start themselves. Needs root (sshd).
#
# Every client of a table runs ROUNDS times (default 5), the clients taking
# turns, and the tables print medians. Each peer runs with its own defaults
# (Ansible with ControlPersist as it ships). It takes longer than the 10
# minutes it used to on 2 cores (not measured yet): the API server rows of
# the etcd bench, which took about 70 s a round, now run every round and
# start a kube-apiserver for each LIST (4 per round). ROUNDS=1 for a quick
# look.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin/breakglass}
GO=${GO:-go}
ROUNDS=${ROUNDS:-5}
if [ "$(id -u)" != 0 ]; then
	echo "make bench needs root: it starts sshd and etcd servers of its own." >&2
	exit 1
fi
# The peers compared against: parallel-ssh (pssh) and Ansible.
need=()
command -v parallel-ssh >/dev/null 2>&1 || need+=(pssh)
command -v ansible >/dev/null 2>&1 || need+=(ansible-core)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v /usr/sbin/sshd >/dev/null 2>&1 || need+=(openssh-server)
if [ ${#need[@]} -gt 0 ]; then
	echo "bench: installing ${need[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || {
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	}
fi
# kube-apiserver for the etcd bench's LIST comparison (built by the lab).
KUBE_APISERVER=$("$BIN" lab build --print kube-apiserver) || { echo "bench: could not build kube-apiserver" >&2; exit 1; }

rc=0
echo "== etcd: reading 150,000 pods straight from etcd (issue 3)"
"$GO" run ./etcd/bench -rounds "$ROUNDS" -breakglass "$BIN" ${KUBE_APISERVER:+-kube-apiserver "$KUBE_APISERVER"} || rc=1
echo
echo "== nodeops: SSH fan-out, real sshd and 5,000 simulated nodes (issue 4)"
# The real sshd nodes are 50 sshd-only lab hosts, each in its own network
# namespace on the lab bridge. If a lab cannot come up here (another one is
# already up), the bench starts 50 sshd of its own on loopback instead. The
# lab goes down before the simulated runs, which measure the machine's
# ceiling and must not share it with a control plane.
labdir=$(mktemp -d /tmp/breakglass-bench-lab.XXXXXX)
labinv=()
if "$BIN" lab up --workers 1 --ssh-hosts 50 --dir "$labdir" >"$labdir/up.log" 2>&1; then
	labinv=(-lab-inventory "$labdir/breakglass.yaml")
	trap '"$BIN" lab down --dir "$labdir" >/dev/null 2>&1; rm -rf "$labdir"' EXIT
else
	echo "bench: no lab (see below); using sshd on loopback for the real nodes" >&2
	tail -3 "$labdir/up.log" >&2
	rm -rf "$labdir"
fi
"$GO" run ./nodeops/bench -rounds "$ROUNDS" -real 50 "${labinv[@]}" -sim 0 || rc=1
if [ ${#labinv[@]} -gt 0 ]; then
	echo
	echo "== pods: stopping pods through containerd on the lab's real kubelet (issue 9)"
	"$GO" run ./nodeops/pods/bench -lab "$labdir/lab.json" -breakglass "$BIN" -rounds "$ROUNDS" -pods 30 || rc=1
	"$BIN" lab down --dir "$labdir" >/dev/null 2>&1 || rc=1
	rm -rf "$labdir"
	trap - EXIT
fi
"$GO" run ./nodeops/bench -rounds "$ROUNDS" -real 0 -sim 5000 -inflight 512 || rc=1
echo
echo "== pods: the stop path on 5,000 and 65,000 simulated nodes (issue 9)"
# 65,000 nodes take about 9 minutes a round on 2 cores: ROUNDS_65K rounds
# (default 1) rather than ROUNDS.
"$GO" run ./nodeops/bench -rounds "$ROUNDS" -real 0 -sim 0 -pods-sim 5000 -inflight 512 || rc=1
"$GO" run ./nodeops/bench -rounds "${ROUNDS_65K:-1}" -real 0 -sim 0 -pods-sim 65000 -inflight 512 || rc=1
exit $rc
