#!/usr/bin/env bash
# Runs every check and every test, the way CI does (.ci/run calls exactly this):
#   formatting, clippy (warnings are errors), unit tests, database tests against
#   PostgreSQL, and the end-to-end suite: the real binaries against DynamoDB Local,
#   moto's server (SNS, SQS) and PostgreSQL, all started here and stopped at the end;
#   the Lambda handlers, also under cargo-lambda's runtime emulator; and the SAM
#   template (cfn-lint, IAM without wildcards).
# Everything is built once, in debug, into one target directory.
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
  # Each test is its own process; the end-to-end tests wait on I/O, so run 4 at once.
  cargo nextest run --workspace --locked --test-threads 4 --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
step "all checks passed in $(( $(date +%s) - started )) s"
