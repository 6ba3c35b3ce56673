#!/usr/bin/env bash
# Builds the outpost-agent image without a Docker engine: a statically linked agent (glibc,
# `-C target-feature=+crt-static`) and the CA bundle in an empty (`FROM scratch`) image,
# assembled with buildah. The image keeps the contract of agent.Dockerfile (user 65532, data
# volume, environment, port, HEALTHCHECK, entrypoint, labels); see deploy/docker/README.md.
#
#   deploy/docker/build-agent-image.sh [--bin PATH] [--tag TAG] [--archive FILE]
#
#   --bin PATH      use this static agent binary instead of building one
#                   (default: cargo build --profile dist for x86_64-unknown-linux-gnu)
#   --tag TAG       image name (default: localhost/outpost-agent:<crate version>)
#   --archive FILE  also write the image to FILE as a docker-archive (`podman load` or
#                   `docker load` on a machine with no registry)
#
# Needs buildah and podman (Debian packages); runs as root or rootless. Prints the image size.
# Exit codes: 0 built, 1 a step failed, 2 bad usage.
set -euo pipefail
# HEALTHCHECK exists only in the docker image format (OCI has no field for it).
export BUILDAH_FORMAT=docker
cd "$(dirname "$0")/../.."

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

bin="" tag="" archive=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) [ $# -ge 2 ] || usage; bin="$2"; shift 2 ;;
        --tag) [ $# -ge 2 ] || usage; tag="$2"; shift 2 ;;
        --archive) [ $# -ge 2 ] || usage; archive="$2"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "error: unknown argument '$1'" >&2; usage ;;
    esac
done

for tool in buildah podman; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is not installed (Debian: apt-get install buildah podman)" >&2
        exit 1
    fi
done
ca_bundle=/etc/ssl/certs/ca-certificates.crt
if ! [ -s "$ca_bundle" ]; then
    echo "error: no CA bundle at $ca_bundle (Debian: apt-get install ca-certificates)" >&2
    exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
version=${version:-0.0.0-dev}
tag=${tag:-localhost/outpost-agent:$version}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

if [ -z "$bin" ]; then
    target_dir=${CARGO_TARGET_DIR:-target}
    echo "==> building a static agent (profile dist, x86_64-unknown-linux-gnu, +crt-static) in $target_dir"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --locked --profile dist -p outpost-agent --target x86_64-unknown-linux-gnu
    bin="$target_dir/x86_64-unknown-linux-gnu/dist/outpost-agent"
fi
if ! [ -x "$bin" ]; then
    echo "error: agent binary $bin does not exist or is not executable" >&2
    exit 1
fi
# A FROM-scratch image has no dynamic loader: the binary must not need one.
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
    echo "error: $bin is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' and --target" >&2
    exit 1
fi
echo "==> agent binary $bin: $(stat -c %s "$bin") bytes"

echo "==> assembling $tag from scratch"
staging=$(mktemp -d)
container=""
cleanup() {
    [ -n "$container" ] && buildah rm "$container" >/dev/null 2>&1 || true
    rm -rf "$staging"
}
trap cleanup EXIT
install -d -m 0700 "$staging/var/lib/outpost-agent"
install -D -m 0644 "$ca_bundle" "$staging/etc/ssl/certs/ca-certificates.crt"
install -D -m 0755 "$bin" "$staging/usr/local/bin/outpost-agent"

container=$(buildah from scratch)
buildah copy --quiet "$container" "$staging/usr" /usr
buildah copy --quiet "$container" "$staging/etc" /etc
# The data directory is owned by the unprivileged user, so a named volume mounted there
# starts with that ownership.
buildah copy --quiet --chown 65532:65532 "$container" "$staging/var/lib/outpost-agent" /var/lib/outpost-agent
buildah config \
    --user 65532:65532 \
    --workingdir /var/lib/outpost-agent \
    --env OUTPOST_DATA_DIR=/var/lib/outpost-agent \
    --env OUTPOST_LISTEN=0.0.0.0:8080 \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --port 8080 \
    --volume /var/lib/outpost-agent \
    --healthcheck 'CMD /usr/local/bin/outpost-agent probe --url http://127.0.0.1:8080/v2/health/ready' \
    --healthcheck-interval 15s --healthcheck-timeout 5s --healthcheck-start-period 60s --healthcheck-retries 3 \
    --entrypoint '["/usr/local/bin/outpost-agent"]' \
    --cmd 'serve --config /etc/outpost/agent.toml' \
    --stop-signal SIGTERM \
    --label org.opencontainers.image.title=outpost-agent \
    --label "org.opencontainers.image.description=Outpost edge agent: ONNX models over the KServe Open Inference Protocol (V2)" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    --label org.opencontainers.image.source=https://example.invalid/outpost \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label org.opencontainers.image.base.name=scratch \
    "$container"
buildah commit --quiet --format docker --rm "$container" "$tag" >/dev/null
container=""

if [ -n "$archive" ]; then
    rm -f "$archive"
    podman save --quiet --format docker-archive -o "$archive" "$tag"
    echo "==> wrote $archive ($(stat -c %s "$archive") bytes)"
fi
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "==> image $tag: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB)"
