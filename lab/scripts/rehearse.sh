#!/usr/bin/env bash
# make rehearse: the rehearsal an on-call engineer runs before the real
# incident. Brings the lab up (unless it is up), starts the overload
# incident, shows its evidence and what to try next.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin/breakglass}
LAB_DIR=${LAB_DIR:-$PWD/.lab}
if [ "$(id -u)" != 0 ]; then
	echo "make rehearse needs root: the lab uses network and mount namespaces." >&2
	exit 1
fi
if [ ! -f "$LAB_DIR/lab.json" ]; then
	"$BIN" lab up --dir "$LAB_DIR"
else
	echo "lab: already up in $LAB_DIR (breakglass lab down --dir $LAB_DIR to start over)" >&2
	"$BIN" lab incident reset --dir "$LAB_DIR"
fi
echo
"$BIN" lab incident overload --dir "$LAB_DIR"
KUBECTL=$(sed -n 's/.*"kubectl": "\(.*\)".*/\1/p' "$LAB_DIR/lab.json")
echo
echo "The oncall engineer's own kubectl, right now (it retries 429s by itself):"
set +e
start=$(date +%s.%N)
"$KUBECTL" --kubeconfig "$LAB_DIR/oncall.kubeconfig" --request-timeout=5s get pods -A -v=6 2>&1 \
	| grep -E 'Response Status|429|Throttl|Retry|error|timeout' | tail -n 6
end=$(date +%s.%N)
set -e
printf "kubectl took %.1fs\n" "$(echo "$end - $start" | bc 2>/dev/null || echo 0)"
cat <<EOT

The lab is in the middle of the December 2024 outage. Try next:
  $BIN --inventory $LAB_DIR/breakglass.yaml lab status
  $KUBECTL --kubeconfig $LAB_DIR/oncall.kubeconfig get pods -A      # the locked-out operator
  $KUBECTL --kubeconfig $LAB_DIR/admin.kubeconfig -n telemetry get ds   # system:masters is exempt
  $BIN lab incident reset --dir $LAB_DIR     # end the incident
  $BIN lab down --dir $LAB_DIR               # remove the lab
See docs/lab.md and docs/user-guide.md.
EOT
