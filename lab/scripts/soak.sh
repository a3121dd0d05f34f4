#!/usr/bin/env bash
# make soak: the long runs that do not fit make test. On a fresh lab, each
# incident is started and reset SOAK_ROUNDS times in a row (default 10)
# through the real binary; every round must show the incident's evidence and
# leave no incident object in etcd and no incident container on any worker.
# About 40 minutes on 2 cores for 10 rounds. Needs root.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin/breakglass}
LAB_DIR=${LAB_DIR:-$PWD/.lab-soak}
GO=${GO:-go}
ROUNDS=${SOAK_ROUNDS:-10}
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
echo "== $ROUNDS rounds of each incident and its reset"
BREAKGLASS_LAB="$LAB_DIR/lab.json" BREAKGLASS_BIN="$BIN" BREAKGLASS_LAB_SOAK="$ROUNDS" \
	"$GO" test -count=1 -v -timeout 150m -run 'TestIncidentSoak' ./lab/ 2>&1 | tee "${SOAK_LOG:-/dev/null}" \
	| grep -E '^(=== RUN|--- |ok|FAIL|PASS|panic)|round [0-9]+'
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
