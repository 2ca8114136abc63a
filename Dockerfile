# syntax=docker/dockerfile:1
# Atlas: build the `atlas` binary, then run it as a non-root user on Debian slim.
#
#   docker build -t atlas .
#   docker run -d --name atlas -p 4444:4444 -v atlas-data:/var/lib/atlas atlas
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts. See
# docs/edge.md#docker. Not built by the test suite (the development machine has no
# container engine).

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS build
# cmake: pingora-core's zlib-ng; clang/libclang: rocksdb's bindgen.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the target directory between builds; the binary is
# copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p atlas-pingora \
 && install -m 0755 target/release/atlas /usr/local/bin/atlas

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim
# ca-certificates: trust roots for routes that connect to upstreams over TLS (tls_sni).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 atlas \
 && useradd --system --uid 10001 --gid atlas --home-dir /var/lib/atlas --shell /usr/sbin/nologin atlas \
 && mkdir -p /var/lib/atlas /etc/atlas \
 && chown atlas:atlas /var/lib/atlas \
 && chmod 0750 /var/lib/atlas
COPY --from=build /usr/local/bin/atlas /usr/local/bin/atlas
COPY conf/docker.yaml /etc/atlas/atlas.yaml
USER atlas
WORKDIR /var/lib/atlas
VOLUME /var/lib/atlas
EXPOSE 4444
ENTRYPOINT ["atlas", "serve", "-c", "/etc/atlas/atlas.yaml"]
