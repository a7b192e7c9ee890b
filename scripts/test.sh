#!/usr/bin/env bash
# Runs every check and every test, the way CI does (.ci/run calls exactly this):
#   formatting, clippy (warnings are errors), unit tests, database tests against
#   PostgreSQL, and the end-to-end suite: the real binaries against DynamoDB Local,
#   moto's server (SNS, SQS) and PostgreSQL, all started here and stopped at the end,
#   including the bad-input corpus, the configuration tests and a small chaos run;
#   before them, `scripts/audit.sh` checks Cargo.lock against the RustSec database.
# Everything is built once, in debug, into one target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

export TRIBUTARY_RUN_DIR="${TRIBUTARY_RUN_DIR:-$PWD/.run/test}"
started=$(date +%s)
step() { printf '\n==> [%4d s] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo audit: the dependency tree against the RustSec advisory database (offline)"
scripts/audit.sh

step "starting PostgreSQL (if down) and the emulators"
scripts/env-up.sh
trap 'scripts/env-down.sh' EXIT
# shellcheck disable=SC1091
. "$TRIBUTARY_RUN_DIR/env"
# sqlx::test creates a scratch database per test on this server.
export DATABASE_URL="${DATABASE_URL:-$TRIBUTARY_TEST_DATABASE_URL}"

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (binaries and tests)"
cargo build --workspace --all-targets --locked

step "tests"
export TRIBUTARY_BINARIES_BUILT=1
if cargo nextest --version >/dev/null 2>&1; then
  if [ $# -gt 0 ]; then
    cargo nextest run --workspace --locked --test-threads 4 --no-fail-fast "$@"
  else
    # Each test is its own process; the end-to-end tests wait on I/O, so run 4 at once.
    # The chaos run goes alone afterwards: it loads the emulators the others share.
    cargo nextest run --workspace --locked --test-threads 4 --no-fail-fast -E 'not test(chaos_run)'
    step "chaos run (tests/tests/chaos.rs; its report follows)"
    cargo nextest run --workspace --locked --no-capture -E 'test(chaos_run)' 2>&1 \
      | grep -E '^chaos:|PASS|FAIL|panicked|Summary|error' >&2
  fi
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
step "all checks passed in $(( $(date +%s) - started )) s"
