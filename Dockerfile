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
# Stub library sources so `cargo build` resolves the workspace and compiles only the
# dependencies. Binaries are auto-discovered from src/bin/, which the stubs leave out.
RUN for manifest in */Cargo.toml; do \
      member=$(dirname "$manifest"); mkdir -p "$member/src"; : > "$member/src/lib.rs"; \
    done \
 && mkdir -p migrations \
 && cargo build --release --locked --workspace --lib

FROM deps AS build
COPY . .
# COPY keeps the sources' modification times, which may be older than the stubs'.
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --workspace --bins
# The binaries the image ships. Adding one (say `replay`) is adding its name here.
ARG BINARIES="publisher subscriber bootstrap demo-writer replay"
RUN mkdir -p /out && for b in $BINARIES; do cp "target/release/$b" /out/; done

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
