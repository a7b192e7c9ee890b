#!/usr/bin/env bash
# Fuzzes the two decoders that read bytes from outside, with cargo-fuzz (libFuzzer):
#   subscriber_body    SQS body (raw or SNS-wrapped) → event   (fuzz/fuzz_targets/)
#   publisher_record   stream record → event → body the subscriber decodes
#
#   scripts/fuzz.sh [SECONDS per target, default 600] [TARGET...]
#
# Stable toolchain: cargo-fuzz asks rustc for nightly-only flags, which
# RUSTC_BOOTSTRAP=1 allows. No sanitizer (`-s none`): the decoders and everything
# they call are safe Rust (`unsafe_code = "forbid"`), so AddressSanitizer would only
# slow the runs; a panic or failed assertion is the crash libFuzzer reports.
# Seeds: the contract's fixtures and tests/corpus/. The growing corpus stays in
# fuzz/corpus/<target>, crash inputs in fuzz/artifacts/<target> (both git-ignored):
# a crash input found belongs in tests/corpus/ (named for the reason it must get) so
# the normal suite keeps it fixed.
# cargo-fuzz is installed into $TRIBUTARY_CACHE/tools (default ~/.cache/tributary)
# when missing. fuzz/ is its own workspace with its own target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
tools="$cache/tools"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(subscriber_body publisher_record)
log() { printf '[fuzz] %s\n' "$*" >&2; }

export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz into $tools (once)"
  CARGO_TARGET_DIR="$tools/target" cargo install --locked --quiet --root "$tools" cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

seed() { # target files...
  local dir="fuzz/corpus/$1"; shift
  mkdir -p "$dir"
  for f in "$@"; do cp "$f" "$dir/seed-$(basename "$(dirname "$f")")-$(basename "$f")"; done
}
seed subscriber_body contracts/fixtures/*/*.json tests/corpus/subscriber/*/*.body
seed publisher_record tests/corpus/publisher/record/*/*.json

log "building the fuzz targets (release, instrumented; the first build takes minutes)"
cargo fuzz build -s none
for t in "${targets[@]}"; do
  log "$t for ${seconds}s"
  cargo fuzz run -s none "$t" -- -max_total_time="$seconds" -print_final_stats=1 \
    -max_len=65536 -timeout=10
done
