#!/usr/bin/env bash
# Installs, only when missing, the tools the Lambda checks need, each into its own
# virtualenv under $TRIBUTARY_CACHE (default ~/.cache/tributary):
#   - cargo-lambda (PyPI ships it as a prebuilt binary: no 19-minute cargo install);
#   - cfn-lint, which validates deploy/template.yaml.
# Prints, on stdout, export lines for CARGO_LAMBDA, CFN_LINT and CFN_PYTHON (its venv): eval "$(scripts/lambda-tools.sh)".
set -euo pipefail

cache="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
cargo_lambda_version="${TRIBUTARY_CARGO_LAMBDA_VERSION:-1.9.2}"
cfn_lint_version="${TRIBUTARY_CFN_LINT_VERSION:-1.41.0}"
mkdir -p "$cache"

log() { printf '[lambda-tools] %s\n' "$*" >&2; }

install() { # dir package==version executable
  if [ ! -x "$1/bin/$3" ]; then
    log "installing $2 into $1"
    rm -rf "$1"
    python3 -m venv "$1"
    "$1/bin/pip" install --quiet --disable-pip-version-check "$2" >&2
  fi
}

install "$cache/cargo-lambda-$cargo_lambda_version" "cargo-lambda==$cargo_lambda_version" cargo-lambda
install "$cache/cfn-lint-$cfn_lint_version" "cfn-lint==$cfn_lint_version" cfn-lint

printf 'export CARGO_LAMBDA=%q\n' "$cache/cargo-lambda-$cargo_lambda_version/bin/cargo-lambda"
printf 'export CFN_LINT=%q\n' "$cache/cfn-lint-$cfn_lint_version/bin/cfn-lint"
printf 'export CFN_PYTHON=%q\n' "$cache/cfn-lint-$cfn_lint_version/bin/python"
