#!/usr/bin/env bash
# The long runs that do not fit make test, each on a fresh lab of its own
# (.lab-soak). Needs root.
#
#   make soak       (SOAK=incidents): each incident is started and reset
#                   SOAK_ROUNDS times in a row (default 10) through the real
#                   binary; every round must show the incident's evidence and
#                   leave no incident object in etcd and no incident container
#                   on any worker. About 40 minutes on 2 cores for 10 rounds.
#                   SOAK_ONLY=overload (or preemption) runs one incident only.
#   make soak-hold  (SOAK=hold): under the overload incident, the telemetry
#                   agent is held on every worker and watched for HOLD_WINDOW
#                   (default 10m) through kubelet's restarts of its
#                   containers, a kubelet restart and a containerd restart,
#                   with no agent process allowed on any worker; then the
#                   apiserver is healed (the DaemonSet must not come back)
#                   and the hold lifted (the agent runs again with its
#                   original image). make test runs it with a 60 s window.
#   make soak-inflight (SOAK=inflight): TestIncidentOverload whole, with its
#                   inflight subtest's second incident: the overload again at
#                   the same CPU cap with the inflight limits doubled, and who
#                   the API server refuses with the default limits and the
#                   doubled ones, side by side. About 20 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin/breakglass}
LAB_DIR=${LAB_DIR:-$PWD/.lab-soak}
GO=${GO:-go}
case "${SOAK:-incidents}" in
incidents)
	what="${SOAK_ROUNDS:-10} rounds of each incident and its reset"
	env=(BREAKGLASS_LAB_SOAK="${SOAK_ROUNDS:-10}" BREAKGLASS_LAB_SOAK_ONLY="${SOAK_ONLY:-}")
	run=TestIncidentSoak timeout=150m show='round [0-9]+'
	;;
hold)
	what="the overload incident, its agent held for ${HOLD_WINDOW:-10m}"
	env=(BREAKGLASS_LAB_INCIDENTS=1 BREAKGLASS_HOLD_WINDOW="${HOLD_WINDOW:-10m}")
	run=TestIncidentOverloadPodsHold timeout=60m show='watching|_test.go:[0-9]+: [^b]'
	;;
inflight)
	what="the overload incident, then again with the inflight limits doubled"
	env=(BREAKGLASS_LAB_INCIDENTS=1 BREAKGLASS_LAB_INFLIGHT=1)
	run=TestIncidentOverload timeout=60m show='^(overload|PHASE|before|saturated|after|scaleout|default|raised|APF)'
	;;
*)
	echo "SOAK=$SOAK: want incidents, hold or inflight" >&2
	exit 2
	;;
esac
if [ "$(id -u)" != 0 ]; then
	echo "make soak needs root: the lab uses network and mount namespaces." >&2
	exit 1
fi
"$BIN" lab down --dir "$LAB_DIR" >/dev/null 2>&1 || true
"$BIN" lab build >/dev/null || { echo "soak: building the Kubernetes binaries failed" >&2; exit 1; }
echo "== lab up (fresh)"
if ! "$BIN" lab up --dir "$LAB_DIR"; then
	tail -n 40 "$LAB_DIR"/logs/*.log 2>/dev/null
	"$BIN" lab down --dir "$LAB_DIR" || true
	exit 1
fi
trap '"$BIN" lab down --dir "$LAB_DIR" >/dev/null 2>&1' EXIT
echo "== $what"
env BREAKGLASS_LAB="$LAB_DIR/lab.json" BREAKGLASS_BIN="$BIN" "${env[@]}" \
	"$GO" test -count=1 -v -timeout "$timeout" -run "^$run\$" ./lab/ 2>&1 | tee "${SOAK_LOG:-/dev/null}" \
	| grep -E "^(=== RUN|--- |ok|FAIL|PASS|panic)|$show"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ]; then
	for f in "$LAB_DIR"/logs/cp-1-kube-{controller-manager,scheduler,apiserver}.log; do
		[ -f "$f" ] && { echo "-- last lines of $(basename "$f"):"; tail -n 25 "$f"; }
	done
fi
echo "== lab down"
"$BIN" lab down --dir "$LAB_DIR" || rc=1
trap - EXIT
exit "$rc"
