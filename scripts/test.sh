#!/usr/bin/env bash
# Runs every check and every test, the way CI does (.ci/run calls exactly this):
#   formatting, clippy (warnings are errors), unit tests, database tests against
#   PostgreSQL, the end-to-end suite (the real binaries against DynamoDB Local, moto's
#   server for SNS and SQS, and PostgreSQL) including the bad-input corpus, the
#   configuration tests and the replay tool, a small chaos run on its own, then the
#   end-to-end suite again with LocalStack as the SNS/SQS emulator, and the
#   docker-compose file's checks, and the container stack itself (scripts/compose-test.sh:
#   the image built from the Dockerfile, docker-compose.yml started on podman with
#   stand-ins for the third-party images, the demo replicated and checked); the Lambda handlers, also under cargo-lambda's
#   runtime emulator; and the SAM template (cfn-lint, IAM without wildcards). Before them, `scripts/audit.sh` checks Cargo.lock
#   against the RustSec database. Emulators are started here and stopped at the end.
# Everything is built once, in debug, into one target directory.
# TRIBUTARY_E2E_EMULATORS (default "moto localstack") picks the second run's emulators.
set -euo pipefail
cd "$(dirname "$0")/.."

export TRIBUTARY_RUN_DIR="${TRIBUTARY_RUN_DIR:-$PWD/.run/test}"
started=$(date +%s)
step() { printf '\n==> [%4d s] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "deploy template: cfn-lint, and no IAM wildcard (the check must refuse every bad sample)"
# cargo-lambda (for the Lambda end-to-end test) and cfn-lint, installed only when missing.
eval "$(scripts/lambda-tools.sh)"
export CARGO_LAMBDA
"$CFN_LINT" deploy/template.yaml
"$CFN_PYTHON" deploy/check_iam.py deploy/template.yaml
for bad in deploy/iam-samples/bad-*.yaml; do
  if "$CFN_PYTHON" deploy/check_iam.py "$bad" >/dev/null; then
    echo "deploy/check_iam.py accepted $bad, which grants by wildcard" >&2
    exit 1
  fi
done

step "cargo audit: the dependency tree against the RustSec advisory database (offline)"
scripts/audit.sh

step "starting PostgreSQL (if down) and the emulators (SNS/SQS: moto)"
TRIBUTARY_EMULATOR=moto scripts/env-up.sh
ls_run="$TRIBUTARY_RUN_DIR-localstack"
trap 'scripts/env-down.sh; TRIBUTARY_RUN_DIR="$ls_run" scripts/env-down.sh' EXIT
# shellcheck disable=SC1091
. "$TRIBUTARY_RUN_DIR/env"
# sqlx::test creates a scratch database per test on this server.
export DATABASE_URL="${DATABASE_URL:-$TRIBUTARY_TEST_DATABASE_URL}"

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked --features tributary-e2e/e2e -- -D warnings

step "cargo build (binaries and tests)"
cargo build --workspace --all-targets --locked --features tributary-e2e/e2e

step "docker-compose.yml: schema, health waits, environment names"
scripts/check-compose.sh

nextest() {
  if cargo nextest --version >/dev/null 2>&1; then
    # Each test is its own process; the end-to-end tests wait on I/O, so run 4 at once.
    cargo nextest run --workspace --locked --features tributary-e2e/e2e --test-threads 4 --no-fail-fast "$@"
  else
    cargo test --workspace --locked --features tributary-e2e/e2e --no-fail-fast "$@"
  fi
}

step "tests (end-to-end against DynamoDB Local + moto)"
export TRIBUTARY_BINARIES_BUILT=1
if [ $# -gt 0 ]; then
  nextest "$@"
else
  # Two tests go alone afterwards: the chaos run loads the emulators the others
  # share, and the publisher-kill test's bound on publishing 360 events is about the
  # publisher, not about moto's throughput under three other suites at once.
  nextest -E 'not test(chaos_run) & not test(a_publisher_killed_mid_stream)'
  step "the publisher-kill test on its own"
  nextest -E 'test(a_publisher_killed_mid_stream)'
  step "chaos run (tests/tests/chaos.rs; its report follows)"
  cargo nextest run --workspace --locked --features tributary-e2e/e2e --no-capture -E 'test(chaos_run)' 2>&1 \
    | grep -E '^chaos:|^Error|PASS|FAIL|panicked|Summary|error' >&2
fi

step "end-to-end tests again, SNS/SQS on LocalStack"
TRIBUTARY_RUN_DIR="$ls_run" TRIBUTARY_EMULATOR=localstack scripts/env-up.sh
(
  # shellcheck disable=SC1091
  . "$ls_run/env"
  if cargo nextest --version >/dev/null 2>&1; then
    nextest -E 'package(tributary-e2e) & !binary(compose) & !binary(chaos) & !binary(config)' "$@"
  else
    nextest "$@" # cargo test cannot filter by package without re-resolving features
  fi
)
step "the container stack: the Dockerfile's image and docker-compose.yml, run on podman (scripts/compose-test.sh)"
scripts/compose-test.sh

step "all checks passed in $(( $(date +%s) - started )) s"
