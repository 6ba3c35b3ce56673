# syntax=docker/dockerfile:1
# outpost-agent image: a glibc distroless runtime with the agent binary and nothing else.
# Build from the repository root (see deploy/docker/README.md):
#   docker build -f deploy/docker/agent.Dockerfile \
#       --build-arg VERSION=0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t outpost-agent .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Every workspace member: cargo reads all members' manifests even to build one package.
COPY Cargo.toml Cargo.lock ./
COPY shared shared
COPY agent agent
COPY client client
COPY coordinator coordinator
COPY tests tests
COPY demo demo
# `dist` is the workspace's shipping profile (fat LTO, stripped): ~22 MB instead of ~27 MB.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --locked --profile dist -p outpost-agent \
 && mkdir -p /out/var/lib/outpost-agent \
 && chown 65532:65532 /out/var/lib/outpost-agent \
 && chmod 0700 /out/var/lib/outpost-agent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/dist/outpost-agent /usr/local/bin/outpost-agent
# The data directory (prediction log, outbox, model store, identity) exists in the image owned by
# nonroot, so a named volume mounted here starts with that ownership.
COPY --from=builder --chown=65532:65532 /out/var/lib/outpost-agent /var/lib/outpost-agent

# Container defaults. The environment beats the config file, so `listen` and `data_dir` in a
# mounted config are overridden by these: change them with `docker run -e`. The config file
# and the device identity come in at run time; nothing in this image is a secret.
ENV OUTPOST_DATA_DIR=/var/lib/outpost-agent \
    OUTPOST_LISTEN=0.0.0.0:8080

USER 65532:65532
WORKDIR /var/lib/outpost-agent
VOLUME ["/var/lib/outpost-agent"]
EXPOSE 8080

# Healthy means ready: every configured model loaded and reproduced its reference outputs.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/outpost-agent", "probe", "--url", "http://127.0.0.1:8080/v2/health/ready"]

ENTRYPOINT ["/usr/local/bin/outpost-agent"]
CMD ["serve", "--config", "/etc/outpost/agent.toml"]

ARG VERSION=0.0.0-dev
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="outpost-agent" \
      org.opencontainers.image.description="Outpost edge agent: ONNX models over the KServe Open Inference Protocol (V2)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="https://example.invalid/outpost" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
