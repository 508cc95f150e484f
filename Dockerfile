# Multi-stage build: compile with the Rust toolchain, run on a slim Debian with OpenSSL.
# BASE_IMAGE is the runtime stage's base: any Debian bookworm (deploy/image-test.sh gives one
# made from Debian's archive with mmdebstrap, for machines that cannot reach a registry).
ARG BASE_IMAGE=debian:bookworm-slim

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
# keys.example is compiled in as the built-in defaults.
COPY Cargo.toml Cargo.lock build.rs keys.example ./
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bin keyward \
 && strip target/release/keyward

FROM ${BASE_IMAGE}
# The group is made first with a fixed gid: useradd --user-group would take the next free
# system gid (999), not 10001.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keyward \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin keyward \
 && mkdir -p /data /etc/keyward \
 && chown keyward:keyward /data \
 && chmod 700 /data
COPY --from=build /src/target/release/keyward /usr/local/bin/keyward
COPY keys.example /etc/keyward/keys.example

# Listen on all interfaces inside the container; publish 8081 on a private network only.
# Mount your configuration as /etc/keyward/keys.toml (the working directory). The master key
# is never generated here (KEYWARD_DEV=0): give it as KEYWARD_MASTER_KEY from your secrets
# manager, or mount a file made with `openssl rand -base64 32` at /data/master.key, readable
# by uid 10001. `-e KEYWARD_DEV=1` allows a throwaway development key.
ENV KEYWARD_PUBLIC_ADDR=0.0.0.0:8080 \
    KEYWARD_INTERNAL_ADDR=0.0.0.0:8081 \
    KEYWARD_DATABASE_URL=sqlite:///data/keyward.db \
    KEYWARD_MASTER_KEY_FILE=/data/master.key \
    KEYWARD_DEV=0
WORKDIR /etc/keyward
USER keyward
VOLUME ["/data"]
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["keyward", "healthcheck"]
ENTRYPOINT ["keyward"]
CMD ["serve"]
