#!/usr/bin/env bash
# Stops the emulators scripts/env-up.sh started, by the process ids it recorded.
# PostgreSQL is the machine's and is left running.
set -uo pipefail
run="${TRIBUTARY_RUN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.run}"
[ -f "$run/env" ] || exit 0
# shellcheck disable=SC1091
. "$run/env"
for pid in "${TRIBUTARY_DDB_PID:-}" "${TRIBUTARY_SNS_SQS_PID:-}" "${TRIBUTARY_MOTO_PID:-}"; do
  [ -n "$pid" ] || continue
  kill "$pid" 2>/dev/null || true
done
for pid in "${TRIBUTARY_DDB_PID:-}" "${TRIBUTARY_SNS_SQS_PID:-}" "${TRIBUTARY_MOTO_PID:-}"; do
  [ -n "$pid" ] || continue
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
rm -f "$run/env"
echo "[env-down] stopped the emulators" >&2
