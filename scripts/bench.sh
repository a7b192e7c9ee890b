#!/usr/bin/env bash
# Runs every benchmark and prints its tables (markdown, on stdout; progress on stderr):
#   1. apply rate: PostgreSQL's own ceiling, a one-transaction-per-event peer and
#      tributary's apply path, the same 100k events, in one run;
#   2. the real binaries on the emulators at 50 and 200 writes/s: AWS requests per
#      event, end-to-end latency, CPU per event and RSS, beside the emulator's own
#      raw SQS figures.
# Release build (what ships). Not part of scripts/test.sh: speed is measured here,
# never asserted in a test. Uses its own emulators (.run/bench) and scratch databases.
#
#   scripts/bench.sh            # everything
#   scripts/bench.sh apply      # only the apply rate
#   scripts/bench.sh pipeline   # only the pipeline
# Extra flags after the name go to the benchmark (`target/release/tributary-bench
# apply --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
[ $# -gt 0 ] && shift

log() { printf '[bench] %s\n' "$*" >&2; }

log "building (release)"
cargo build --release --workspace --bins --locked >&2
bench="${CARGO_TARGET_DIR:-target}/release/tributary-bench"

echo "# tributary benchmarks"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GB RAM"
echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- PostgreSQL: $(psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -Atc 'show server_version' 2>/dev/null || echo unknown), synchronous_commit=$(psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -Atc 'show synchronous_commit' 2>/dev/null || echo unknown)"
echo

if [ "$which" = all ] || [ "$which" = apply ]; then
  log "apply rate"
  "$bench" apply "$@"
  echo
fi

if [ "$which" = all ] || [ "$which" = pipeline ]; then
  export TRIBUTARY_RUN_DIR="$PWD/.run/bench"
  scripts/env-up.sh
  trap 'scripts/env-down.sh' EXIT
  # shellcheck disable=SC1091
  . "$TRIBUTARY_RUN_DIR/env"
  log "pipeline on the emulators"
  "$bench" pipeline "$@"
fi
echo
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
