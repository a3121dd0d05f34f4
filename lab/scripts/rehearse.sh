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
echo "The oncall engineer's own kubectl, right now (it waits, and retries 429s by itself):"
set +e
start=$(date +%s.%N)
"$KUBECTL" --kubeconfig "$LAB_DIR/oncall.kubeconfig" --request-timeout=5s get pods -A -v=6 2>&1 \
	| grep -E 'Response Status|429|Throttl|Retry|error|timeout' | tail -n 6
end=$(date +%s.%N)
set -e
printf "kubectl took %.1fs\n" "$(echo "$end - $start" | bc 2>/dev/null || echo 0)"
cat <<EOT

The lab is in the middle of the December 2024 outage: the oncall user's kubectl
is locked out. Recover it around the API server:

  export BREAKGLASS_INVENTORY=$LAB_DIR/breakglass.yaml
  $BIN get daemonsets -A                      # read from etcd: which DaemonSet is new?
  $BIN count pods nodes configmaps            # how expensive is each LIST?
  $BIN shed flowschema --serviceaccount telemetry/telemetry-agent --reject --ttl 15m   # APF sheds the agents, through etcd
  $BIN pods list -n telemetry                 # where it runs, from each worker's containerd
  $BIN shed apply --ttl 15m --dry-run         # nft on cp-1: only you, the control plane, etcd
  $BIN shed apply --ttl 15m                   # the workers' LISTs are dropped; rules expire by themselves
  $BIN pods hold --daemonset telemetry/telemetry-agent --dry-run   # the plan: etcd diff + per-node images
  $BIN pods hold --daemonset telemetry/telemetry-agent             # stop it everywhere, keep it stopped
  $BIN shed lift                              # let the workers back in
  $KUBECTL --kubeconfig $LAB_DIR/oncall.kubeconfig get pods -A   # kubectl answers again
  $BIN pods hold lift CHANGE-ID --batch 1     # later: bring the agent back, a worker at a time

Also: $BIN lab status, $BIN nodes check, $BIN shed status, $BIN pods hold list,
$BIN daemonset pause telemetry/telemetry-agent (the owner alone), $BIN undo CHANGE-ID,
$BIN lab incident reset --dir $LAB_DIR (end the incident),
$BIN lab down --dir $LAB_DIR (remove the lab). See docs/user-guide.md and docs/lab.md.
EOT
