#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database, offline:
#   cargo audit --no-fetch --db <a clone of the database> --deny warnings
# so a vulnerability, an unmaintained crate or a yanked one fails, unless
# .cargo/audit.toml holds a written, dated exception for that advisory.
#
# The database: $TRIBUTARY_ADVISORY_DB, a git bundle or a clone of
# https://github.com/rustsec/advisory-db; by default ../shared/rustsec-advisory-db.bundle
# beside the repository when it is there. It is cloned into a temporary directory, so
# the source is never written to. Without one, the check is skipped, loudly.
# cargo-audit is installed into $TRIBUTARY_CACHE/tools (default ~/.cache/tributary) only
# when it is missing, with its own target directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
tools="$cache/tools"
audit_version="${TRIBUTARY_CARGO_AUDIT_VERSION:-0.22.2}"
log() { printf '[audit] %s\n' "$*" >&2; }

db_source="${TRIBUTARY_ADVISORY_DB:-}"
if [ -z "$db_source" ] && [ -e "$root/../shared/rustsec-advisory-db.bundle" ]; then
  db_source="$root/../shared/rustsec-advisory-db.bundle"
fi
if [ -z "$db_source" ] || [ ! -e "$db_source" ]; then
  log "############################################################################"
  log "SKIPPED: no RustSec advisory database (set TRIBUTARY_ADVISORY_DB to a git"
  log "bundle or clone of the advisory-db). The dependency tree was NOT audited."
  log "############################################################################"
  exit 0
fi

export PATH="$tools/bin:$PATH"
if ! cargo audit --version >/dev/null 2>&1; then
  log "installing cargo-audit $audit_version into $tools (once)"
  t0=$(date +%s)
  CARGO_TARGET_DIR="$tools/target" cargo install --locked --quiet \
    --root "$tools" --version "$audit_version" cargo-audit
  log "installed in $(( $(date +%s) - t0 )) s"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -c init.defaultBranch=main clone --quiet "$db_source" "$work/advisory-db"
log "advisory database: $db_source (last commit $(git -C "$work/advisory-db" log -1 --format=%cs))"
# --stale: the snapshot is as old as it is; offline, there is nothing newer to fetch.
cargo audit --no-fetch --stale --db "$work/advisory-db" --deny warnings "$@"

# An exception in .cargo/audit.toml that rests on "nothing builds this crate" holds
# only while it is true: fail when any of these enters the built graph.
never_built=(${TRIBUTARY_AUDIT_NEVER_BUILT:-rsa})
for crate in "${never_built[@]}"; do
  if ! users=$(cargo tree --locked --workspace -e normal,build -i "$crate" 2>/dev/null); then
    log "cargo tree -i $crate failed; cannot tell whether the exception holds"
    exit 1
  fi
  if [ -n "$users" ]; then
    log "$crate is now built by the workspace; its exception in .cargo/audit.toml no longer holds:"
    printf '%s\n' "$users" >&2
    exit 1
  fi
done
log "crates excepted as never built are still not built: ${never_built[*]}"
