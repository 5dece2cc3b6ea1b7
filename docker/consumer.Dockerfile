# syntax=docker/dockerfile:1.7
# The consumer (urna-consumer): Kafka → Redis counters + MongoDB logs; health and metrics
# on URNA_LISTEN (0.0.0.0:9101 here).
#
#   docker build -f docker/consumer.Dockerfile -t urna/urna-consumer .
#
# Build context: the repository root (the workspace). Kept here, beside the chart's image
# list (scripts/images.sh), while consumer/ is being reworked; it belongs in
# consumer/Dockerfile like host/ and grpc/ have theirs. Not built on the development
# machine (no Docker engine there): written to match `cargo build --release -p
# urna-consumer`, which is what is tested.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka is built from source (rdkafka's cmake-build); protoc is vendored.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p urna-consumer --bin urna-consumer \
 && mkdir -p /out \
 && cp target/release/urna-consumer /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin urna
COPY --from=build /out/urna-consumer /usr/local/bin/urna-consumer
USER 10001:10001
ENV RUST_LOG=info URNA_LOG_JSON=1 \
    URNA_LISTEN=0.0.0.0:9101
EXPOSE 9101
ENTRYPOINT ["/usr/local/bin/urna-consumer"]
