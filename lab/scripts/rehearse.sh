#!/usr/bin/env bash
# make rehearse: the rehearsal an on-call engineer runs before the real
# incident. breakglass rehearse brings the lab up (unless it is up), ends
# any incident in it, starts the incident the runbook recovers and runs the
# runbook against the lab: in the TUI in a terminal, unattended (--yes)
# otherwise. RUNBOOK picks another built-in (default apiserver-overload).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin/breakglass}
LAB_DIR=${LAB_DIR:-$PWD/.lab}
RUNBOOK=${RUNBOOK:-apiserver-overload}
if [ "$(id -u)" != 0 ]; then
	echo "make rehearse needs root: the lab uses network and mount namespaces." >&2
	exit 1
fi
args=(rehearse "$RUNBOOK" --dir "$LAB_DIR")
if [ ! -t 0 ]; then
	# Nobody can answer the runbook's questions: breakglass rehearse
	# refuses to run without --yes then (exit 2).
	echo "make rehearse: stdin is not a terminal, so the runbook runs unattended (--yes) with plain progress lines; run it in a terminal for the TUI" >&2
	args+=(--yes)
fi
exec "$BIN" "${args[@]}"
