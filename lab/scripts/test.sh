#!/usr/bin/env bash
# The test command of README.md (make test). Unit tests always; as root on
# Linux, also the end-to-end tests against one shared lab:
#   1. a lab up killed midway must be cleaned up by lab down;
#   2. the shared lab comes up; every package's tests run against it;
#   3. the incidents run on their own (they change the whole cluster);
#   4. lab down, then a check that nothing is left behind.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin/breakglass}
LAB_DIR=${LAB_DIR:-$PWD/.lab}
GO=${GO:-go}
LOG_DIR=$(mktemp -d)
failed=0
passed=0 nfailed=0 nskipped=0

# run NAME ENV... -- go test ARGS: runs one phase verbosely into a log,
# prints the per-package lines, the skips with their reasons, and the whole
# log if the phase failed.
run() {
	local name=$1; shift
	local log="$LOG_DIR/$name.log"
	echo "== $name"
	env "$@" > "$log" 2>&1
	local rc=$?
	grep -E '^(ok|FAIL|---|panic:|\?)' "$log" | grep -v -E '^\s*--- (PASS|SKIP)' | grep -v '^?' || true
	local p f s
	p=$(grep -c -E '^\s*--- PASS' "$log"); f=$(grep -c -E '^\s*--- FAIL' "$log"); s=$(grep -c -E '^\s*--- SKIP' "$log")
	passed=$((passed + p)); nfailed=$((nfailed + f)); nskipped=$((nskipped + s))
	if [ "$s" -gt 0 ]; then
		echo "   skipped in this phase ($s):"
		awk '/^ *=== RUN/ {msg=""} /^ +[A-Za-z0-9_]+_test\.go:[0-9]+: / {msg=$0; sub(/^ +/, "", msg)}
			/^ *--- SKIP:/ {print "     " $3 ": " msg}' "$log"
	fi
	if [ $rc -ne 0 ]; then
		echo "-- $name failed; its full log:"
		cat "$log"
		failures "$name" "$log" >> "$LOG_DIR/failures"
		failed=1
	fi
	return $rc
}

# failures NAME LOG: for each failed test of the phase, the last lines it
# logged itself (file_test.go:N: ...) before it failed. make test prints
# these last, so the end of a long CI log says why without the daemons'
# noise in between.
failures() {
	awk -v phase="$1" '
		function flush(name,   i, n) {
			n = (cnt[name] < 12) ? cnt[name] : 12
			print "-- " phase ": " name " failed; its last lines:"
			for (i = cnt[name] - n + 1; i <= cnt[name]; i++) print "   " substr(buf[name, i % 12], 1, 400)
		}
		/^ *=== (RUN|CONT|NAME) / { cur = $3; next }
		/^ +[A-Za-z0-9_]+_test\.go:[0-9]+: / { cnt[cur]++; buf[cur, cnt[cur] % 12] = $0; inmsg = 1; next }
		inmsg && /^        / && cur != "" { cnt[cur]++; buf[cur, cnt[cur] % 12] = $0; next }
		{ inmsg = 0 }
		/^ *--- FAIL: / { flush($3) }
	' "$2"
}

lab_possible() {
	[ "$(uname -s)" = Linux ] || { echo "not Linux"; return 1; }
	[ "$(id -u)" = 0 ] || { echo "not root (the lab needs network and mount namespaces and cgroups)"; return 1; }
	for t in ip nsenter unshare /usr/sbin/sshd containerd runc ctr etcd etcdctl nft ssh; do
		command -v "$t" >/dev/null 2>&1 || { echo "missing $t (bash .ci/run installs it)"; return 1; }
	done
	return 0
}

why=""
if ! why=$(lab_possible); then
	echo "NOTE: the end-to-end lab tests are SKIPPED: $why."
	echo "      Run make test as root on Linux to run them against a real cluster."
	run unit "$GO" test -count=1 -v ./...
else
	why=""
	"$BIN" lab down --dir "$LAB_DIR" >/dev/null 2>&1 || true
	echo "== building the lab's Kubernetes binaries (cached after the first run)"
	if ! "$BIN" lab build >/dev/null; then
		echo "building the Kubernetes binaries failed"
		exit 1
	fi
	run crashed-lab-up BREAKGLASS_LAB_CRASH_TEST=1 BREAKGLASS_BIN="$BIN" \
		"$GO" test -count=1 -v -timeout 15m -run 'TestLabDownAfterCrashedUp' ./lab/
	"$BIN" lab down --dir "$LAB_DIR" >/dev/null 2>&1 || true

	echo "== lab up"
	if ! "$BIN" lab up --dir "$LAB_DIR"; then
		echo "lab up failed; logs:"
		tail -n 40 "$LAB_DIR"/logs/*.log 2>/dev/null
		"$BIN" lab down --dir "$LAB_DIR" || true
		exit 1
	fi
	trap '"$BIN" lab down --dir "$LAB_DIR" >/dev/null 2>&1' EXIT
	run all BREAKGLASS_LAB="$LAB_DIR/lab.json" BREAKGLASS_BIN="$BIN" \
		"$GO" test -count=1 -v -timeout 30m ./...
	run incidents BREAKGLASS_LAB="$LAB_DIR/lab.json" BREAKGLASS_LAB_INCIDENTS=1 BREAKGLASS_BIN="$BIN" \
		"$GO" test -count=1 -v -timeout 60m -run 'TestIncident|TestLabKubeletStopStart|TestLabAPIServerTune|TestLabAPIServerAddRemove' ./lab/
	# lab down removes the lab's logs: keep what a failure needs first.
	if [ "$failed" != 0 ]; then
		# cp-1's control plane runs as its static pods: their logs are
		# under the kubelet's pod logs.
		for f in "$LAB_DIR"/logs/cp-1-kubelet.log "$LAB_DIR"/hosts/cp-1/var/log/pods/kube-system_*/*/*.log; do
			[ -f "$f" ] || continue
			echo "-- last lines of $(basename "$f"):"
			tail -n 25 "$f"
		done
	fi

	echo "== lab down"
	"$BIN" lab down --dir "$LAB_DIR" || failed=1
	trap - EXIT
	run left-nothing BREAKGLASS_LAB_DOWN_CHECK="$LAB_DIR" \
		"$GO" test -count=1 -v -run 'TestLabDownLeftNothing' ./lab/
fi
echo
if [ -n "${why:-}" ]; then
	echo "NOTE: end-to-end lab tests were skipped: $why."
fi
if [ -s "$LOG_DIR/failures" ]; then
	echo
	cat "$LOG_DIR/failures"
fi
rm -rf "$LOG_DIR"
echo "$passed passed, $nfailed failed, $nskipped skipped"
exit $failed
