# syntax=docker/dockerfile:1
# One small runtime image holding every tributary binary; docker-compose.yml picks the
# command per service. Build: `docker build -t tributary .`
#
# Stages:
#   manifests — the workspace's Cargo.toml files, Cargo.lock and build scripts only;
#   deps      — compiles every dependency against stub sources: this layer is rebuilt
#               only when a manifest or the lock file changes, not when code does;
#   build     — the real sources, then the release binaries;
#   runtime   — Debian slim, CA certificates, the binaries, a non-root user; no compiler.

ARG RUST_IMAGE=rust:1.94.1-slim-trixie
ARG RUNTIME_IMAGE=debian:trixie-slim
# The packages whose binaries the image ships (only they, and what they depend on, are
# compiled), and the binaries. Adding one (say `bench`'s) is adding its package and name.
ARG PACKAGES="tributary-publisher tributary-subscriber tributary-replay tributary-stack"
ARG BINARIES="publisher subscriber bootstrap demo-writer replay"

FROM ${RUST_IMAGE} AS manifests
WORKDIR /src
COPY . .
# Keep only what decides the dependency graph. A new workspace member needs no change
# here: its Cargo.toml is kept like the others.
RUN find . -type f ! -name Cargo.toml ! -name Cargo.lock ! -name build.rs -delete \
 && find . -type d -empty -delete

FROM ${RUST_IMAGE} AS deps
WORKDIR /src
COPY --from=manifests /src ./
ARG PACKAGES
# Stub sources so `cargo build` resolves the workspace and compiles only the
# dependencies: a lib.rs per member and an empty main for every target a manifest names
# by path ([[bin]] path = …). Binaries under src/bin/ are auto-discovered, so the stubs
# leave them out. /stubs lists the stubs for the next stage to remove.
# The registry is a cache mount: a changed lock file downloads only what is new.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    : > /stubs && for manifest in */Cargo.toml; do \
      member=$(dirname "$manifest"); mkdir -p "$member/src"; \
      [ -e "$member/src/lib.rs" ] || { : > "$member/src/lib.rs"; echo "$member/src/lib.rs" >> /stubs; }; \
      for target in $(sed -n 's/^path *= *"\(.*\)"/\1/p' "$manifest"); do \
        mkdir -p "$member/$(dirname "$target")"; \
        [ -e "$member/$target" ] || { echo 'fn main() {}' > "$member/$target"; echo "$member/$target" >> /stubs; }; \
      done; \
    done \
 && mkdir -p migrations \
 && cargo build --release --locked $(printf -- '-p %s ' $PACKAGES) --lib

FROM deps AS build
ARG PACKAGES
ARG BINARIES
RUN xargs -r rm -f < /stubs
COPY . .
# COPY keeps the sources' modification times, which may be older than the stubs'.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
 && cargo build --release --locked $(printf -- '-p %s ' $PACKAGES) $(printf -- '--bin %s ' $BINARIES) \
 && mkdir -p /out && for b in $BINARIES; do cp "target/release/$b" /out/; done

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home tributary \
 && install -d -o tributary -g tributary /var/lib/tributary /var/lib/tributary/env
COPY --from=build /out/ /usr/local/bin/
USER tributary
WORKDIR /var/lib/tributary
ENV TRIBUTARY_LOG_FORMAT=json
# /metrics, /healthz, /readyz when TRIBUTARY_METRICS_ADDR is set (compose sets it).
EXPOSE 9464
CMD ["subscriber", "--help"]
