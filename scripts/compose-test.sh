#!/usr/bin/env bash
# The container stack, end to end: what docs/containers.md tells a user to
# look at, checked on the real stack that scripts/compose-up.sh starts (the project's
# image from the Dockerfile, docker-compose.yml with the stand-in override, podman).
#
#   1. `up` with the demo profile (the LocalStack profile unless COMPOSE_PROFILES says
#      otherwise): every health check passes, in depends_on order;
#   2. the time from `up` to the first replicated row;
#   3. the subscriber's /metrics: tributary_events_applied_total climbs while the demo
#      writes; the publisher's tributary_events_published_total too;
#   4. /readyz: 200; 503 while PostgreSQL is stopped; 200 again once it is started;
#   5. once the demo writer has finished: `replay status` says IN SYNC and
#      `replay verify` finds every DynamoDB item equal to its analytics row (so the rows
#      are what the demo wrote), and the history holds rows;
#   6. `docker compose stop subscriber` drains: exit status 0, not a SIGKILL (137);
#   7. teardown by project name (also on failure).
# Figures go to standard error and to $TRIBUTARY_COMPOSE_RUN_DIR/figures.
# Environment: COMPOSE_PROFILES (default localstack,demo), DEMO_COUNT (default 400),
# DEMO_RATE (default 20), DEMO_KEYS (default 100); the rest as scripts/compose-up.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export COMPOSE_PROFILES="${COMPOSE_PROFILES:-localstack,demo}"
export DEMO_COUNT="${DEMO_COUNT:-400}" DEMO_RATE="${DEMO_RATE:-20}" DEMO_KEYS="${DEMO_KEYS:-100}"
run="${TRIBUTARY_COMPOSE_RUN_DIR:-$root/.run/compose}"
export TRIBUTARY_COMPOSE_RUN_DIR="$run"
mkdir -p "$run"
: > "$run/figures"

stack() { scripts/compose-up.sh "$@"; }
compose() { stack compose "$@"; }
log() { printf '[compose-test] %s\n' "$*" >&2; }
figure() { printf '%s\n' "$*" | tee -a "$run/figures" >&2; }
fail() {
  log "FAILED: $*"
  compose ps -a >&2 || true
  compose logs --no-color --tail 40 >&2 || true
  exit 1
}
trap 'stack down' EXIT

# The first service that runs a binary (compose names differ between the profiles).
case ",$COMPOSE_PROFILES," in
  *,moto,*) sub=subscriber-moto ;;
  *) sub=subscriber ;;
esac

metric() { # URL NAME: the sum of a metric's samples, 0 when absent
  curl -fsS --max-time 5 "$1/metrics" 2>/dev/null \
    | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s + 0 }'
}
readyz() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:9464/readyz || true; }
psql_stack() { psql "postgres://tributary:tributary@127.0.0.1:5433/analytics" -qtAX -c "$1"; }
wait_for() { # SECONDS DESCRIPTION COMMAND…: until COMMAND succeeds (run anew each time)
  local deadline=$(( SECONDS + $1 )) what=$2
  shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what: not within the time allowed"
    sleep 1
  done
}

stack down 2>/dev/null || true
stack up || fail "the stack did not come up healthy"
# When `docker compose up` started (compose-up.sh writes it; the image build before
# it is not counted).
up_started=$(cat "$run/up-started")
figure "compose up → every service healthy: $(printf '%.0f' "$(echo "$(date +%s.%N) - $up_started" | bc)") s"

# 2. The first replicated row (the history's first insert), measured from `up`.
has_rows() { [ "$(psql_stack 'SELECT count(*) FROM analytics.profile_changes' 2>/dev/null || echo 0)" -gt 0 ]; }
wait_for 120 "a first replicated row" has_rows
first=$(psql_stack 'SELECT extract(epoch FROM min(applied_at)) FROM analytics.profile_changes')
figure "compose up → first replicated row: $(printf '%.1f' "$(echo "$first - $up_started" | bc)") s"

# 3. Counters climbing while the demo writes.
applied_1=$(metric http://127.0.0.1:9464 tributary_events_applied_total)
published_1=$(metric http://127.0.0.1:9465 tributary_events_published_total)
sleep 5
applied_2=$(metric http://127.0.0.1:9464 tributary_events_applied_total)
published_2=$(metric http://127.0.0.1:9465 tributary_events_published_total)
log "applied $applied_1 → $applied_2, published $published_1 → $published_2 over 5 s"
[ "$applied_2" -gt "$applied_1" ] || fail "tributary_events_applied_total did not climb ($applied_1 → $applied_2)"
[ "$published_2" -gt "$published_1" ] || fail "tributary_events_published_total did not climb ($published_1 → $published_2)"

# 4. Readiness follows the database.
[ "$(readyz)" = 200 ] || fail "/readyz is $(readyz) with everything up, expected 200"
compose stop postgres >&2
readyz_is() { [ "$(readyz)" = "$1" ]; }
wait_for 60 "/readyz turning 503 with PostgreSQL stopped" readyz_is 503
log "/readyz is 503 with PostgreSQL stopped: $(curl -s --max-time 5 http://127.0.0.1:9464/readyz | tr '\n' ' ')"
compose start postgres >&2
wait_for 90 "/readyz back to 200 after PostgreSQL started" readyz_is 200
log "/readyz is 200 again"

# 5. In sync once the writer is done: status, and every item equal to its row.
state_of() { stack states | awk -F'|' -v s="$1" '$1 == s { print $2 "|" $4 }'; }
writer_done() {
  local state
  state=$(state_of demo-writer)
  case "$state" in
    "exited|0") return 0 ;;
    exited*) fail "demo-writer exited with status ${state#*|}" ;;
    *) return 1 ;;
  esac
}
wait_for 300 "the demo writer finishing" writer_done
in_sync() {
  compose exec -T "$sub" bash -c '. env/aws.env && replay status' > "$run/status.txt" 2>&1 \
    && grep -q '^analytics *IN SYNC' "$run/status.txt"
}
wait_for 120 "replay status IN SYNC" in_sync
sed 's/^/  /' "$run/status.txt" >&2
compose exec -T "$sub" bash -c '. env/aws.env && replay verify --table profiles' > "$run/verify.txt" 2>&1 \
  || { cat "$run/verify.txt" >&2; fail "replay verify found drift"; }
sed 's/^/  /' "$run/verify.txt" >&2
# The writer's own summary line (stdout): what it left live and deleted.
# (compose prefixes each line with a terminal escape, even with --no-color.)
summary=$(compose logs --no-color --no-log-prefix demo-writer 2>/dev/null | grep -m1 -o 'prefix=.*' || true)
[ -n "$summary" ] || fail "the demo writer printed no summary line"
log "demo writer: $summary"
prefix=$(sed -n 's/^prefix=\([^ ]*\) .*/\1/p' <<<"$summary")
want_live=$(sed -n 's/.* live=\([0-9]*\).*/\1/p' <<<"$summary")
want_deleted=$(sed -n 's/.* deleted=\([0-9]*\).*/\1/p' <<<"$summary")
got_live=$(psql_stack "SELECT count(*) FROM analytics.user_profiles WHERE NOT deleted AND user_id LIKE '$prefix-%'")
got_deleted=$(psql_stack "SELECT count(*) FROM analytics.user_profiles WHERE deleted AND user_id LIKE '$prefix-%'")
changes=$(psql_stack 'SELECT count(*) FROM analytics.profile_changes')
figure "analytics: $got_live live rows and $got_deleted tombstones (the writer left $want_live live, $want_deleted deleted), $changes history rows"
[ "$got_live" = "$want_live" ] && [ "$got_deleted" = "$want_deleted" ] \
  || fail "the analytics rows do not match what the demo wrote"
[ "$got_live" -gt 0 ] && [ "$changes" -gt 0 ] || fail "the analytics store is empty"

# 6. A stop lets the subscriber drain.
stop_started=$SECONDS
compose stop "$sub" >&2
code=$(state_of "$sub" | cut -d'|' -f2)
figure "compose stop $sub: exit status $code after $(( SECONDS - stop_started )) s"
[ "$code" = 0 ] || fail "the subscriber exited $code on stop (137 is a SIGKILL mid-drain)"

log "passed"
