# Stages: deps -> builder -> runtime (the default, last stage: the gateway image);
#         deps -> tests (scripts/test with its own Redis and PostgreSQL; see docker-compose.yml).
ARG RUST_VERSION=1.88

# The toolchain and every dependency's source, from Cargo.toml/Cargo.lock alone: editing src/
# neither refetches nor rebuilds dependencies.
FROM rust:${RUST_VERSION}-bookworm AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# Empty stand-ins for the crate's lib and bin, so cargo can fetch and build dependencies only.
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo fetch --locked

FROM deps AS builder
RUN cargo build --release --locked
# The binary embeds migrations/ and lua/ (include_str!).
COPY src src
COPY migrations migrations
COPY lua lua
# COPY keeps mtimes, which may predate the stand-ins' build: touch so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# The test suite, run by scripts/test. It needs what scripts/services, scripts/redis-cluster and
# tests/api/helpers.rs run: redis-server and redis-cli, a Debian cluster (pg_ctlcluster,
# /etc/postgresql/15/main), initdb and pg_ctl under `pg_config --bindir` (as the postgres user,
# via runuser), psql, dropdb, python3 (free ports), HAProxy and k6 (the load-balanced load test),
# Prometheus (promtool and the alerting test), Chromium and Node.js (the live page's browser test);
# wrk only so that scripts/services finds nothing to install.
FROM deps AS tests
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql redis-server wrk haproxy prometheus chromium nodejs npm python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=grafana/k6:1.1.0 /usr/bin/k6 /usr/local/bin/k6
# Test dependencies (debug profile, dev-dependencies) in their own layer, as above.
RUN cargo test --locked --no-run
COPY . .
# Built into the image, so that running the container only runs the tests.
RUN touch src/main.rs src/lib.rs && cargo test --locked --no-run
CMD ["scripts/test"]

FROM debian:bookworm-slim AS runtime
# The binary needs only glibc (same Debian release as the builder); CA roots for any TLS peer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed unprivileged uid, so that volumes and policies can name it.
RUN groupadd --gid 10001 gateway \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway
COPY --from=builder /src/target/release/voucher-gateway /usr/local/bin/voucher-gateway
USER 10001:10001
# The default, 127.0.0.1:8080, is unreachable from outside the container.
ENV VG_LISTEN=0.0.0.0:8080
EXPOSE 8080
# No HEALTHCHECK: the image has no HTTP client. docker-compose.yml probes GET /ready with bash.
ENTRYPOINT ["voucher-gateway"]
CMD ["serve"]
