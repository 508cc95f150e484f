# Multi-stage build: compile with the Rust toolchain, run on a slim Debian with OpenSSL.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bin keyward \
 && strip target/release/keyward

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin keyward \
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
