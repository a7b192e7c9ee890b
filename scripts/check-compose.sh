#!/usr/bin/env bash
# Checks docker-compose.yml without a Docker engine:
#   1. `docker-compose config` (Debian's docker-compose 1.29.2, installed here when
#      missing) parses it and validates it against the Compose schema, for every
#      profile combination;
#   2. every `depends_on` waits on a health check or a successful exit, never on a bare
#      start;
#   3. every environment variable set for a tributary binary (a service labelled
#      `org.tributary.runs: <binary> [subcommand]`) is one that binary reads: its
#      `--help` lists it (`[env: NAME…]`), or it is one of the AWS SDK's standard
#      variables, or RUST_LOG where the help names it. A typo fails here, not silently
#      in a container;
#   4. every service running `publisher` or `subscriber run` has a stop_grace_period
#      longer than the subscriber's drain bound (its SUBSCRIBER_WAIT_TIME_SECS long
#      poll, default 20 s, plus DRAIN_APPLY_SECS for the batches in flight), so a
#      `docker compose stop` never SIGKILLs a drain;
#   5. docker-compose.standin.yml (the override scripts/compose-up.sh runs the stack
#      with) only swaps images: each of its services is one of docker-compose.yml's
#      third-party services, and it sets nothing but an image named as a stand-in
#      (localhost/tributary-standin/…) and pull_policy.
# Usage: scripts/check-compose.sh [COMPOSE_FILE]   (binaries from target/debug, or
# TRIBUTARY_BIN_DIR). Exit 1 with one line per problem.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
file=$(realpath "${1:-$root/docker-compose.yml}")
bins="${TRIBUTARY_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}"

log() { printf '[check-compose] %s\n' "$*" >&2; }

if ! command -v docker-compose >/dev/null; then
  [ "$(id -u)" = 0 ] || { log "docker-compose is missing: apt-get install docker-compose"; exit 1; }
  # The compose tests run this script several at once: one installs, the others wait
  # (apt's own lock makes a second apt-get fail instead of waiting).
  exec 9> /tmp/tributary-check-compose.install.lock
  flock 9
  if ! command -v docker-compose >/dev/null; then
    log "installing docker-compose (Debian package)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  fi
  flock -u 9
fi
# docker-compose's own interpreter has PyYAML (a dependency of the package).
py=$(head -n 1 "$(command -v docker-compose)" | sed 's/^#! *//; s/ .*$//')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# docker-compose 1.29 validates and prints every service whatever the active profiles.
if ! COMPOSE_PROFILES=localstack,moto,demo docker-compose --project-directory "$(dirname "$file")" \
    -f "$file" config > "$tmp/resolved.yml" 2> "$tmp/err"; then
  log "docker-compose config failed: $(tr '\n' ' ' < "$tmp/err")"
  exit 1
fi

STANDIN_FILE="$(dirname "$file")/docker-compose.standin.yml" COMPOSE_FILE_CHECKED="$file" \
  "$py" - "$bins" "$tmp"/*.yml <<'PY'
import os, re, subprocess, sys, yaml

bins, files = sys.argv[1], sys.argv[2:]
# Read by the AWS SDK itself (https://docs.aws.amazon.com/sdkref/latest/guide/settings-reference.html).
SDK = {"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
       "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB",
       "AWS_ENDPOINT_URL_DYNAMODB_STREAMS", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_SQS"}
helps = {}
problems = []
# What a drain may take beyond the long poll: committing and deleting the batches in
# flight (one transaction each, a DeleteMessageBatch, their retries).
DRAIN_APPLY_SECS = 30
LONG_RUNNING = ("publisher", "subscriber run")

def seconds(duration):
    """A compose duration ("60s", "1m30s", "1.5m", a bare number of seconds) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        return None
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}
    return sum(float(n) * unit[u] for n, u in parts)
services_seen = set()
for f in files:
    config = yaml.safe_load(open(f))
    services = config.get("services", {})
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            cond = how.get("condition") if isinstance(how, dict) else None
            if cond not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{name}: depends_on {dep} does not wait for its health or its end (condition {cond})")
            elif cond == "service_healthy" and "healthcheck" not in services.get(dep, {}):
                problems.append(f"{name}: waits on the health of {dep}, which has no healthcheck")
        runs = (svc.get("labels") or {}).get("org.tributary.runs")
        if svc.get("build") and not runs:
            problems.append(f"{name}: built from this repository but has no org.tributary.runs label")
        if not runs:
            continue
        services_seen.add(name)
        if runs in LONG_RUNNING:
            env = svc.get("environment") or {}
            bound = int(env.get("SUBSCRIBER_WAIT_TIME_SECS", 20)) + DRAIN_APPLY_SECS
            grace = svc.get("stop_grace_period")
            got = seconds(grace) if grace is not None else 10.0  # Docker's default
            if got is None:
                problems.append(f"{name}: stop_grace_period {grace!r} is not a duration")
            elif got <= bound:
                problems.append(f"{name}: stop_grace_period {grace or '10s (default)'} is not longer than the drain bound of {bound} s")
        if runs not in helps:
            argv = runs.split()
            exe = os.path.join(bins, argv[0])
            if not os.access(exe, os.X_OK):
                sys.exit(f"[check-compose] {exe} not found: build the workspace first")
            out = subprocess.run([exe, *argv[1:], "--help"], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"[check-compose] {runs} --help failed: {out.stderr.strip()}")
            helps[runs] = out.stdout
        text = helps[runs]
        listed = set(re.findall(r"\[env: ([A-Z0-9_]+)", text))
        for var in sorted((svc.get("environment") or {}).keys()):
            if var in listed or var in SDK or (var == "RUST_LOG" and "RUST_LOG" in text):
                continue
            problems.append(f"{name}: sets {var}, which `{runs}` does not read (not in its --help)")
standin = os.environ.get("STANDIN_FILE")
if standin and os.path.exists(standin):
    base = yaml.safe_load(open(os.environ["COMPOSE_FILE_CHECKED"])).get("services", {})
    for name, svc in (yaml.safe_load(open(standin)).get("services") or {}).items():
        where = f"{os.path.basename(standin)}: {name}"
        if name not in base:
            problems.append(f"{where}: no such service in the compose file")
            continue
        if base[name].get("build"):
            problems.append(f"{where}: replaces an image this repository builds")
        extra = set(svc) - {"image", "pull_policy"}
        if extra:
            problems.append(f"{where}: changes {', '.join(sorted(extra))} (a stand-in may change only image and pull_policy)")
        if not str(svc.get("image", "")).startswith("localhost/tributary-standin/"):
            problems.append(f"{where}: image {svc.get('image')!r} is not named localhost/tributary-standin/…")
for p in sorted(set(problems)):
    print(f"[check-compose] {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"[check-compose] ok: {len(services_seen)} tributary services checked", file=sys.stderr)
PY
