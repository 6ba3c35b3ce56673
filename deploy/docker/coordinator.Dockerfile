# syntax=docker/dockerfile:1
# outpost-coordinator image: the coordinator and the operator CLI `outpostctl` (the runtime has
# no shell, so `kubectl exec`/`docker exec` work through outpostctl). Build from the repository
# root (see deploy/docker/README.md):
#   docker build -f deploy/docker/coordinator.Dockerfile \
#       --build-arg VERSION=0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t outpost-coordinator .

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
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --locked --profile dist -p outpost-coordinator \
 && mkdir -p /out/var/lib/outpost-coordinator \
 && chown 65532:65532 /out/var/lib/outpost-coordinator \
 && chmod 0700 /out/var/lib/outpost-coordinator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/dist/outpost-coordinator /usr/local/bin/outpost-coordinator
COPY --from=builder /src/target/dist/outpostctl /usr/local/bin/outpostctl
# The data directory (store, CA and release key, admin token, artifacts, audit log) exists in
# the image owned by nonroot, so a named volume mounted here starts with that ownership. The CA,
# keys and token are created there at first start, never baked in.
COPY --from=builder --chown=65532:65532 /out/var/lib/outpost-coordinator /var/lib/outpost-coordinator

# The data directory beats `data_dir` in a mounted config (environment wins); change it with
# `docker run -e`. The listen addresses and advertised URLs belong in the mounted config
# (/etc/outpost/coordinator.toml). outpostctl inside the container talks to this coordinator.
ENV OUTPOST_COORDINATOR_DATA_DIR=/var/lib/outpost-coordinator \
    OUTPOSTCTL_URL=https://127.0.0.1:7400 \
    OUTPOSTCTL_CA_FILE=/var/lib/outpost-coordinator/pki/ca.pem

USER 65532:65532
WORKDIR /var/lib/outpost-coordinator
VOLUME ["/var/lib/outpost-coordinator"]
# 7400: the API (HTTPS off loopback); 8883: the embedded MQTT broker (mTLS).
EXPOSE 7400 8883

# Off loopback the API speaks HTTPS with a certificate from the coordinator's own CA, which
# also names 127.0.0.1. With `api.cert_file` from your own PKI, override this check
# (`docker run --health-cmd`) with your CA.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/outpost-coordinator", "probe", "--url", "https://127.0.0.1:7400/healthz", "--ca-file", "/var/lib/outpost-coordinator/pki/ca.pem"]

ENTRYPOINT ["/usr/local/bin/outpost-coordinator"]
CMD ["serve", "--config", "/etc/outpost/coordinator.toml"]

ARG VERSION=0.0.0-dev
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="outpost-coordinator" \
      org.opencontainers.image.description="Outpost coordinator: fleet enrolment, telemetry ingest, model registry and deployments" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="https://example.invalid/outpost" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
