#!/usr/bin/env bash
# The main job, live: profile service → DynamoDB stream → publisher → SNS → SQS →
# subscriber → PostgreSQL, on this machine.
#   1. starts PostgreSQL (if down), DynamoDB Local and moto's server;
#   2. bootstraps the table, topic, queues and subscription, and migrates the database;
#   3. runs the publisher and the subscriber in the background;
#   4. runs the demo writer (sign-ups, edits, deletions, re-creations) and, while it
#      writes, prints the analytics store catching up: rows, tombstones, history, lag;
#   5. waits until the analytics store matches what was written, shows a few rows and
#      the replication lag, then stops everything it started.
# Options (environment): DEMO_COUNT (mutations, default 600), DEMO_RATE (per second,
# default 50), DEMO_KEYS (profiles, default 150), DEMO_DATABASE (default tributary_demo).
set -euo pipefail
cd "$(dirname "$0")/.."

export TRIBUTARY_RUN_DIR="${TRIBUTARY_RUN_DIR:-$PWD/.run/demo}"
count="${DEMO_COUNT:-600}"; rate="${DEMO_RATE:-50}"; keys="${DEMO_KEYS:-150}"
db="${DEMO_DATABASE:-tributary_demo}"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

say "building (debug; the same build the tests use, so neither rebuilds the other's)"
cargo build --workspace --all-targets --locked --features tributary-e2e/e2e -q

say "starting PostgreSQL (if down), DynamoDB Local and moto"
scripts/env-up.sh
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/env-down.sh
}
trap cleanup EXIT
# shellcheck disable=SC1091
. "$TRIBUTARY_RUN_DIR/env"
bin="${CARGO_TARGET_DIR:-target}/debug"

admin_url="$TRIBUTARY_TEST_DATABASE_URL"
psql "$admin_url" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
  || psql "$admin_url" -qc "CREATE DATABASE $db"
export DATABASE_URL="${admin_url%/*}/$db"

say "bootstrapping AWS resources and migrating $db"
eval "$($bin/bootstrap)"
$bin/subscriber migrate
export TRIBUTARY_LOG_FORMAT=json

$bin/publisher >"$TRIBUTARY_RUN_DIR/publisher.log" 2>&1 & pids+=($!)
$bin/subscriber run >"$TRIBUTARY_RUN_DIR/subscriber.log" 2>&1 & pids+=($!)
say "publisher and subscriber running (logs: $TRIBUTARY_RUN_DIR/{publisher,subscriber}.log)"

q() { psql "$DATABASE_URL" -qtAc "$1"; }
status() {
  q "SELECT format('analytics: %s live rows, %s tombstones, %s history rows; lag p50 %s ms, max %s ms',
       (SELECT count(*) FROM analytics.user_profiles WHERE NOT deleted AND user_id LIKE '$1-%'),
       (SELECT count(*) FROM analytics.user_profiles WHERE deleted AND user_id LIKE '$1-%'),
       (SELECT count(*) FROM analytics.profile_changes WHERE key LIKE '$1-%'),
       coalesce((SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - occurred_at) * 1000)) FROM analytics.profile_changes WHERE key LIKE '$1-%'), 0),
       coalesce((SELECT round(max(extract(epoch FROM applied_at - occurred_at) * 1000)) FROM analytics.profile_changes WHERE key LIKE '$1-%'), 0))"
}

prefix="user-$(date +%s)"
say "writing $count profile changes over $keys profiles at $rate/s (keys $prefix-*)"
$bin/demo-writer --count "$count" --rate "$rate" --keys "$keys" --prefix "$prefix" \
  >"$TRIBUTARY_RUN_DIR/writer.out" 2>"$TRIBUTARY_RUN_DIR/writer.log" &
writer=$!
while kill -0 "$writer" 2>/dev/null; do sleep 2; echo "  writing…  $(status "$prefix")"; done
wait "$writer" || { cat "$TRIBUTARY_RUN_DIR/writer.log" >&2; exit 1; }
summary=$(tail -n 1 "$TRIBUTARY_RUN_DIR/writer.out")
say "writer done: $summary"
live=$(sed -E 's/.* live=([0-9]+).*/\1/' <<<"$summary")
deleted=$(sed -E 's/.* deleted=([0-9]+).*/\1/' <<<"$summary")
total=$(sed -E 's/.* total=([0-9]+).*/\1/' <<<"$summary")

for _ in $(seq 1 120); do
  have_live=$(q "SELECT count(*) FROM analytics.user_profiles WHERE NOT deleted AND user_id LIKE '$prefix-%'")
  have_dead=$(q "SELECT count(*) FROM analytics.user_profiles WHERE deleted AND user_id LIKE '$prefix-%'")
  have_hist=$(q "SELECT count(*) FROM analytics.profile_changes WHERE key LIKE '$prefix-%'")
  echo "  catching up… $(status "$prefix")"
  if [ "$have_live" = "$live" ] && [ "$have_dead" = "$deleted" ] && [ "$have_hist" = "$total" ]; then
    say "in sync: $live live profiles, $deleted deleted, $total changes each applied once"
    psql "$DATABASE_URL" -c "SELECT user_id, display_name, plan, country, marketing_email AS email_ok,
        lifetime_value_cents AS ltv_cents, version, deleted FROM analytics.user_profiles
        WHERE user_id LIKE '$prefix-%' ORDER BY updated_at DESC NULLS LAST LIMIT 8"
    psql "$DATABASE_URL" -c "SELECT count(*) AS changes,
        round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - occurred_at) * 1000)) AS lag_p50_ms,
        round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - occurred_at) * 1000)) AS lag_p95_ms,
        round(max(extract(epoch FROM applied_at - occurred_at) * 1000)) AS lag_max_ms
        FROM analytics.profile_changes WHERE key LIKE '$prefix-%'"
    exit 0
  fi
  sleep 1
done
say "not in sync after 120 s: expected $live live, $deleted deleted, $total history rows"
exit 1
