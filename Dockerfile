# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# The whole build context (see .dockerignore): Cargo.toml, Cargo.lock, src/, config/ (embedded
# defaults) and any bench/test targets the manifest declares. The cache mounts keep the crate registry
# and compiled dependencies between builds, so a source change does not rebuild every dependency.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin switchboard \
 && install -m 0755 target/release/switchboard /usr/local/bin/switchboard

# ---- runtime ----------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: HTTPS to Django. curl: HEALTHCHECK only.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid switchboard --home-dir /app --shell /usr/sbin/nologin switchboard \
 && mkdir -p /data /etc/switchboard \
 && chown switchboard:switchboard /data

WORKDIR /app
COPY --from=builder /usr/local/bin/switchboard /usr/local/bin/switchboard
COPY --from=builder /build/config /app/config

# Listeners on all interfaces and the SQLite database on the volume. RUST_LOG is deliberately not set:
# the log filter comes from [log] level in the configuration (RUST_LOG, when given, overrides it).
ENV SWITCHBOARD__STORAGE__DATA_DIR=/data \
    SWITCHBOARD__API__BIND=0.0.0.0:4000 \
    SWITCHBOARD__CHAT__BIND=0.0.0.0:4001

# Switchboard refuses to listen on a non-loopback address unless API keys are configured, so the
# container expects a configuration file with [[auth.api_keys]] mounted at
# /etc/switchboard/switchboard.toml (template: config/production.example.toml, whose key is read from
# the SWITCHBOARD_API_KEY environment variable). Django settings can come from the same file or from
# SWITCHBOARD__DJANGO__BASE_URL / SWITCHBOARD__DJANGO__TOKEN.
USER switchboard
VOLUME ["/data"]
EXPOSE 4000 4001

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:4000/healthz || exit 1

ENTRYPOINT ["switchboard"]
CMD ["--config", "/etc/switchboard/switchboard.toml"]
