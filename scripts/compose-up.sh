#!/usr/bin/env bash
# Runs docker-compose.yml for real on a machine without Docker or a container registry:
# podman as the engine, Docker Compose v2 as the client, stand-in images for the
# third-party services.
#
#   scripts/compose-up.sh up [SERVICE…]  build what is missing, start the stack, wait on
#                                        its health checks (prints the endpoints)
#   scripts/compose-up.sh down           stop and remove the project's containers,
#                                        network and volumes, and the podman API service
#   scripts/compose-up.sh images         only build the bases, stand-ins and image
#   scripts/compose-up.sh compose ARGS…  run `docker compose ARGS…` on the project
#   scripts/compose-up.sh states         service|status|health|exit code, one line each
#
# What it does, and why:
#   - engine: Debian's podman (installed when missing, as root) under a project-local
#     containers.conf (deploy/compose/containers.conf: runc, ulimits this sandbox
#     accepts), serving the Docker API on a socket under $TRIBUTARY_COMPOSE_RUN_DIR;
#   - client: Docker Compose v2 (Debian trixie's docker-compose package, checksummed,
#     unpacked into ~/.cache/tributary, nothing installed machine-wide): the compose
#     implementation users run, so depends_on conditions, profiles, stop_grace_period
#     and the merge of override files behave as on a laptop;
#   - images: a Debian trixie base made by debootstrap, a Rust build image holding this
#     machine's toolchain, the stand-ins in deploy/compose/standin/ (built from the same
#     software as the upstream images), then the project's image from the Dockerfile as
#     it is, with RUST_IMAGE/RUNTIME_IMAGE pointing at the local bases. podman's layer
#     cache and the Dockerfile's cache mounts make repeat builds cheap;
#   - the stack: docker-compose.yml with docker-compose.standin.yml, which swaps in the
#     stand-in images and changes nothing else;
#   - health: podman hands health checks to systemd timers and there is no systemd
#     here, so a driver process runs every container's check (`podman healthcheck
#     run`) every TRIBUTARY_COMPOSE_HEALTH_EVERY seconds (default 2) while the stack
#     is up; compose itself honours `depends_on: condition: service_healthy`.
#
# Environment: COMPOSE_PROFILES (default localstack), TRIBUTARY_COMPOSE_PROJECT
# (default tributary-stack), TRIBUTARY_COMPOSE_RUN_DIR (default .run/compose),
# TRIBUTARY_COMPOSE_WAIT_SECS (how long `up` waits for health, default 300).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

project="${TRIBUTARY_COMPOSE_PROJECT:-tributary-stack}"
run="${TRIBUTARY_COMPOSE_RUN_DIR:-$root/.run/compose}"
cache="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
health_every="${TRIBUTARY_COMPOSE_HEALTH_EVERY:-2}"
wait_secs="${TRIBUTARY_COMPOSE_WAIT_SECS:-300}"
export COMPOSE_PROFILES="${COMPOSE_PROFILES:-localstack}"
export CONTAINERS_CONF="$root/deploy/compose/containers.conf"

# Pinned inputs. The compose client: Debian trixie's docker-compose package.
compose_version=2.26.1-4
compose_deb_sha256=47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
debian_mirror="${TRIBUTARY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Image names. Stand-ins say so in their names; the project's image is the one
# docker-compose.yml names.
base_image=localhost/tributary-base/debian:trixie-slim
build_base_image=localhost/tributary-base/debian:trixie-slim-machine-ca
rust_version=$(rustc --version | awk '{print $2}')
rust_image=localhost/tributary-base/rust:$rust_version-slim-trixie
app_image=tributary:dev
standins=(postgres localstack dynamodb-local moto)

log() { printf '[compose-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

compose_bin="$cache/docker-compose-$compose_version/docker-compose"
sock="$run/podman.sock"
export DOCKER_HOST="unix://$sock"
compose() {
  "$compose_bin" --project-name "$project" --project-directory "$root" \
    -f "$root/docker-compose.yml" -f "$root/docker-compose.standin.yml" "$@"
}

# --- tools ----------------------------------------------------------------------
ensure_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: apt-get install ${missing[*]}"
    log "installing ${missing[*]} (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -x "$compose_bin" ]; then
    log "fetching Docker Compose $compose_version (Debian trixie's docker-compose package)"
    local tmp
    tmp=$(mktemp -d)
    curl -fsS -o "$tmp/c.deb" \
      "$debian_mirror/pool/main/d/docker-compose/docker-compose_${compose_version}_amd64.deb"
    echo "$compose_deb_sha256  $tmp/c.deb" | sha256sum -c --quiet - \
      || die "docker-compose_${compose_version}_amd64.deb does not match its pinned sha256"
    dpkg-deb -x "$tmp/c.deb" "$tmp/x"
    mkdir -p "$(dirname "$compose_bin")"
    install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$compose_bin"
    rm -rf "$tmp"
  fi
}

# The Docker-compatible API, for the compose client. One per run directory.
start_api() {
  mkdir -p "$run"
  if [ -f "$run/podman-api.pid" ] && kill -0 "$(cat "$run/podman-api.pid")" 2>/dev/null \
      && [ -S "$sock" ]; then
    return
  fi
  rm -f "$sock"
  podman system service --time=0 "unix://$sock" > "$run/podman-api.log" 2>&1 &
  echo $! > "$run/podman-api.pid"
  for _ in $(seq 1 100); do
    [ -S "$sock" ] && curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  die "podman's API service did not answer on $sock (see $run/podman-api.log)"
}

stop_pidfile() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# --- images -----------------------------------------------------------------------
label_of() { podman image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true; }

# debian:trixie-slim, made here: debootstrap's minbase, without documentation, man
# pages, locales and apt lists (what the official slim image leaves out). Remade when
# this recipe changes.
build_base() {
  local recipe=trixie-minbase-slim-1
  [ "$(label_of "$base_image" org.tributary.recipe)" = "$recipe" ] && return
  log "making $base_image with debootstrap (about 30 s)"
  local dir
  dir=$(mktemp -d)
  debootstrap --variant=minbase trixie "$dir/root" "$debian_mirror" > "$run/debootstrap.log" 2>&1 \
    || die "debootstrap failed (see $run/debootstrap.log)"
  rm -rf "$dir"/root/var/cache/apt/*.bin "$dir"/root/var/cache/apt/archives/*.deb \
    "$dir"/root/var/lib/apt/lists/* "$dir"/root/usr/share/doc/* "$dir"/root/usr/share/man/* \
    "$dir"/root/usr/share/info/* "$dir"/root/usr/share/locale/*
  tar -C "$dir/root" -c . | podman import --quiet \
    --change "LABEL org.tributary.recipe=$recipe" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$base_image" >/dev/null
  rm -rf "$dir"
}

# The base plus this machine's own certificate authorities, for images that download
# while they build (the runtime image never sees them).
build_machine_ca() {
  local ctx
  ctx=$(mktemp -d)
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cp deploy/compose/bases/machine-ca.Containerfile "$ctx/Containerfile"
  podman build --quiet --build-arg "BASE=$base_image" -t "$build_base_image" "$ctx" \
    > "$run/build-base.log" 2>&1 || { cat "$run/build-base.log" >&2; die "building $build_base_image failed"; }
  rm -rf "$ctx"
}

# rust:<version>-slim-trixie, made here: the base, gcc, and this machine's toolchain
# (no toolchain can be downloaded). Remade when the toolchain changes.
build_rust() {
  local sysroot
  sysroot=$(rustc --print sysroot)
  local recipe
  recipe="$(rustc -vV | sha256sum | cut -c1-16)-$(sha256sum deploy/compose/bases/rust.Containerfile | cut -c1-16)"
  [ "$(label_of "$rust_image" org.tributary.recipe)" = "$recipe" ] \
    && [ "$(label_of "$rust_image" org.tributary.base)" = "$(podman image inspect --format '{{.Id}}' "$build_base_image")" ] \
    && return
  log "making $rust_image from $sysroot"
  local ctx
  ctx=$(mktemp -d)
  mkdir -p "$ctx/toolchain"
  # Only what compiles: rustc, cargo, the standard library; no documentation.
  cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/toolchain/"
  cp deploy/compose/bases/rust.Containerfile "$ctx/Containerfile"
  podman build --quiet --build-arg "BASE=$build_base_image" \
    --label "org.tributary.recipe=$recipe" \
    --label "org.tributary.base=$(podman image inspect --format '{{.Id}}' "$build_base_image")" \
    -t "$rust_image" "$ctx" > "$run/build-rust.log" 2>&1 \
    || { tail -n 30 "$run/build-rust.log" >&2; die "building $rust_image failed (see $run/build-rust.log)"; }
  rm -rf "$ctx"
}

build_standins() {
  local name
  for name in "${standins[@]}"; do
    log "stand-in image localhost/tributary-standin/$name (cached after the first build)"
    podman build --quiet --build-arg "BASE=$build_base_image" \
      -t "localhost/tributary-standin/$name:latest" "deploy/compose/standin/$name" \
      > "$run/build-$name.log" 2>&1 \
      || { tail -n 30 "$run/build-$name.log" >&2; die "building the $name stand-in failed (see $run/build-$name.log)"; }
  done
}

# The project's image, from the Dockerfile unchanged but for its two base arguments.
build_app() {
  log "building $app_image from the Dockerfile (release; the first build compiles every dependency)"
  local started=$SECONDS
  podman build --build-arg "RUST_IMAGE=$rust_image" --build-arg "RUNTIME_IMAGE=$base_image" \
    -t "$app_image" -f Dockerfile . > "$run/image-build.log" 2>&1 \
    || { tail -n 40 "$run/image-build.log" >&2; die "image build failed (see $run/image-build.log)"; }
  log "built $app_image in $(( SECONDS - started )) s ($(podman image inspect --format '{{.Size}}' "$app_image" | numfmt --to=iec) )"
}

images() {
  mkdir -p "$run"
  build_base
  build_machine_ca
  build_rust
  build_standins
  build_app
}

# --- health ---------------------------------------------------------------------------
# Runs each running container's health check, as Docker's daemon would on its own.
health_driver() {
  while :; do
    local id
    for id in $(podman ps -q --filter "label=com.docker.compose.project=$project" 2>/dev/null); do
      podman healthcheck run "$id" >/dev/null 2>&1 || true
    done
    sleep "$health_every"
  done
}

start_health_driver() {
  if [ -f "$run/health-driver.pid" ] && kill -0 "$(cat "$run/health-driver.pid")" 2>/dev/null; then
    return
  fi
  health_driver > "$run/health-driver.log" 2>&1 &
  echo $! > "$run/health-driver.pid"
}

# service|status|health|exit code of each of the project's containers (podman 4.3's
# `ps` has no health field; `inspect` has Docker's).
container_states() {
  local ids
  ids=$(podman ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null || true)
  [ -n "$ids" ] || return 0
  # shellcheck disable=SC2086
  podman inspect --format \
    '{{index .Config.Labels "com.docker.compose.service"}}|{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.State.ExitCode}}' \
    $ids
}

# Waits until every service is healthy, or exited 0 if it has no health check
# (one-shots), or running without one. Fails on an unhealthy service, a non-zero exit,
# or no containers at all.
wait_healthy() {
  local deadline=$(( SECONDS + wait_secs )) pending seen name state health code
  while :; do
    pending="" seen=0
    while IFS='|' read -r name state health code; do
      [ -n "$name" ] || continue
      seen=$(( seen + 1 ))
      case "$state/$health" in
        running/healthy | running/) ;;
        exited/*)
          [ "$code" = 0 ] || { compose logs --no-color --tail 30 "$name" >&2 || true
                               die "$name exited with status $code"; } ;;
        */unhealthy) compose logs --no-color --tail 30 "$name" >&2 || true; die "$name is unhealthy" ;;
        *) pending="$pending $name($state${health:+, $health})" ;;
      esac
    done < <(container_states)
    [ "$seen" -gt 0 ] || die "project $project has no containers"
    [ -z "$pending" ] && return
    [ $SECONDS -lt $deadline ] || die "still not healthy after ${wait_secs}s:$pending"
    sleep 1
  done
}

up() {
  ensure_tools
  start_api
  images
  start_health_driver
  log "starting project $project (profiles: $COMPOSE_PROFILES)"
  local started=$SECONDS
  date +%s.%N > "$run/up-started"
  compose up --detach --no-build --pull never "$@"
  wait_healthy
  log "healthy after $(( SECONDS - started )) s: subscriber http://127.0.0.1:9464, publisher http://127.0.0.1:9465, PostgreSQL 127.0.0.1:5433"
}

down() {
  if [ -x "$compose_bin" ] && [ -S "$sock" ]; then
    # Every profile, so nothing a profile started is left behind.
    COMPOSE_PROFILES=localstack,moto,demo compose down --volumes --remove-orphans --timeout 60 \
      >&2 2>"$run/down.log" || log "compose down failed (see $run/down.log); removing by label"
  fi
  if command -v podman >/dev/null; then
    local ids
    ids=$(podman ps -aq --filter "label=com.docker.compose.project=$project" 2>/dev/null || true)
    [ -z "$ids" ] || podman rm --force --time 10 $ids >/dev/null 2>&1 || true
    podman volume ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null \
      | xargs -r podman volume rm --force >/dev/null 2>&1 || true
    podman network ls -q --filter "label=com.docker.compose.project=$project" 2>/dev/null \
      | xargs -r podman network rm --force >/dev/null 2>&1 || true
  fi
  stop_pidfile "$run/health-driver.pid"
  stop_pidfile "$run/podman-api.pid"
  rm -f "$sock"
}

cmd="${1:-up}"
[ $# -eq 0 ] || shift
case "$cmd" in
  up) up "$@" ;;
  states) container_states ;;
  down) mkdir -p "$run"; down ;;
  images) ensure_tools; images ;;
  compose) ensure_tools; start_api; compose "$@" ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command '$cmd' (expected up, down, images, compose, states or --help)" ;;
esac
