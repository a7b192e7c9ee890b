#!/usr/bin/env bash
# Runs the chaos test (tests/tests/chaos.rs) at a chosen scale and prints the checker's
# report: drift, lost, history duplicates, parked (with reasons) and every fault
# injected. Exit status is the test's: non-zero if drift, loss or duplicates are not 0.
#
#   scripts/chaos.sh                       # CI's small run: 400 mutations over 40 keys
#   scripts/chaos.sh 10000 1000            # the large run: 10k mutations over 1k keys
#
# Arguments: MUTATIONS KEYS [RATE per second]. SNS/SQS on moto, or on LocalStack above
# 2 000 mutations (TRIBUTARY_EMULATOR=moto|localstack overrides). Everything else by environment:
# TRIBUTARY_CHAOS_WORKERS, _SUBSCRIBER_KILLS, _PUBLISHER_KILLS, _DUPLICATE_PERCENT,
# _LATE_PERCENT, _SEED (see the test's doc comment). The emulators are started for the
# run and stopped after it; PostgreSQL is a private cluster the test creates (initdb)
# on a free loopback port and deletes, so the machine's server is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

export TRIBUTARY_CHAOS_MUTATIONS="${1:-${TRIBUTARY_CHAOS_MUTATIONS:-400}}"
export TRIBUTARY_CHAOS_KEYS="${2:-${TRIBUTARY_CHAOS_KEYS:-40}}"
# The large run writes faster, so that it takes minutes, not hours.
default_rate=20
[ "$TRIBUTARY_CHAOS_MUTATIONS" -gt 2000 ] && default_rate=60
export TRIBUTARY_CHAOS_RATE="${3:-${TRIBUTARY_CHAOS_RATE:-$default_rate}}"

# moto's SQS slows as its queues grow (the test's tap queue holds every published
# message): at 10k mutations it served 3 requests/s and the run would take hours. The
# large run uses LocalStack unless TRIBUTARY_EMULATOR says otherwise.
if [ -z "${TRIBUTARY_EMULATOR:-}" ] && [ "$TRIBUTARY_CHAOS_MUTATIONS" -gt 2000 ]; then
  export TRIBUTARY_EMULATOR=localstack
fi

export TRIBUTARY_RUN_DIR="${TRIBUTARY_RUN_DIR:-$PWD/.run/chaos}"
scripts/env-up.sh
trap 'scripts/env-down.sh' EXIT
# shellcheck disable=SC1091
. "$TRIBUTARY_RUN_DIR/env"

cargo build --workspace --all-targets --locked --features tributary-e2e/e2e
export TRIBUTARY_BINARIES_BUILT=1
cargo nextest run --workspace --locked --features tributary-e2e/e2e --no-capture -E 'test(chaos_run)'
