# sealpost container image. Build: `docker build -t sealpost .` (docker-compose.yml does it for you).
# Not built by the test suite (it only validates docker-compose.yml): build it yourself before relying on it.

# Build stage: the release binary from the locked dependencies.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sealpost

# Runtime: slim Debian, the binary, the system's CA certificates (for Web Push, S3 and stores over TLS),
# and an unprivileged user that owns only the data directory.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/sealpost --create-home sealpost \
    && chmod 0700 /var/lib/sealpost
COPY --from=build /src/target/release/sealpost /usr/local/bin/sealpost
USER sealpost:sealpost
ENV SEALPOST_LISTEN=0.0.0.0:8080 \
    SEALPOST_METRICS_LISTEN=0.0.0.0:9464 \
    SEALPOST_DATA_DIR=/var/lib/sealpost \
    SEALPOST_LOG_FORMAT=json
VOLUME ["/var/lib/sealpost"]
EXPOSE 8080 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["sealpost", "healthcheck"]
ENTRYPOINT ["sealpost"]
CMD ["serve"]
