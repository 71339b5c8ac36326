#!/usr/bin/env bash
# Builds Appstrate's images without pulling anything: static glibc binaries first
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile $PROFILE --target x86_64-unknown-linux-gnu
# then one `FROM scratch` image per Dockerfile in images/, from a small build context holding only the
# binaries (never the whole repository).
#
# usage: images/build.sh [runner] [sidecar] [api-server] [operator]     (default: all four)
#
# Environment:
#   PROFILE       cargo profile: release (default) or image-dev (quick, for tests and CI)
#   TAG           image tag (default latest)
#   AGENT_IMAGE   full name of the runner image   (default appstrate-runner:$TAG)
#   SIDECAR_IMAGE full name of the sidecar image  (default appstrate-sidecar:$TAG)
#   API_IMAGE     full name of the API image      (default appstrate:$TAG)
#   OPERATOR_IMAGE full name of the operator image (default appstrate-operator:$TAG)
#   CARGO_TARGET_DIR  honoured as usual
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=${PROFILE:-release}
TAG=${TAG:-latest}
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
AGENT_IMAGE=${AGENT_IMAGE:-appstrate-runner:$TAG}
SIDECAR_IMAGE=${SIDECAR_IMAGE:-appstrate-sidecar:$TAG}
API_IMAGE=${API_IMAGE:-appstrate:$TAG}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-appstrate-operator:$TAG}

step() { printf '==> images: %s\n' "$*" >&2; }

images=("$@")
[ ${#images[@]} -eq 0 ] && images=(runner sidecar api-server operator)

bins=()
for img in "${images[@]}"; do
  case "$img" in
    runner) bins+=(runner:appstrate-runner) ;;
    sidecar) bins+=(sidecar:appstrate-sidecar) ;;
    api-server) bins+=(api-server:appstrate runner:appstrate-runner sidecar:appstrate-sidecar) ;;
    operator) bins+=(operator:appstrate-operator) ;;
    *) echo "images/build.sh: unknown image '$img' (runner, sidecar, api-server, operator)" >&2; exit 2 ;;
  esac
done
args=()
for b in $(printf '%s\n' "${bins[@]}" | sort -u); do
  args+=(-p "${b%%:*}" --bin "${b#*:}")
done

if ! command -v docker >/dev/null 2>&1; then
  echo "images/build.sh: the docker CLI is missing (apt-get install docker.io)" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "images/build.sh: no Docker daemon answers (start dockerd, or check DOCKER_HOST / socket permissions)" >&2
  exit 1
fi

step "static binaries (${bins[*]}), profile $PROFILE, target $TRIPLE"
start=$(date +%s)
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --locked --profile "$PROFILE" --target "$TRIPLE" "${args[@]}"
step "binaries built in $(($(date +%s) - start))s"

out="$TARGET_DIR/$TRIPLE/$PROFILE"
ctx_root=$(mktemp -d)
trap 'rm -rf "$ctx_root"' EXIT

build_image() {
  # build_image <dockerfile> <image name> <files...>
  local dockerfile=$1 name=$2
  shift 2
  local ctx="$ctx_root/$(basename "$dockerfile" .Dockerfile)"
  mkdir -p "$ctx"
  local f
  for f in "$@"; do
    cp -a "$f" "$ctx/"
  done
  mkdir -p "$ctx/data"
  step "building $name from $dockerfile"
  # The legacy builder needs no buildx plugin and never pulls for FROM scratch.
  if ! DOCKER_BUILDKIT=0 docker build --quiet --pull=false -f "$dockerfile" -t "$name" "$ctx" \
    >/dev/null 2>"$ctx_root/build.err"; then
    cat "$ctx_root/build.err" >&2
    exit 1
  fi
  local size
  size=$(docker image inspect -f '{{.Size}}' "$name")
  step "$name: $((size / 1024 / 1024)) MiB ($size bytes)"
}

for img in "${images[@]}"; do
  case "$img" in
    runner) build_image images/runner.Dockerfile "$AGENT_IMAGE" "$out/appstrate-runner" ;;
    sidecar) build_image images/sidecar.Dockerfile "$SIDECAR_IMAGE" "$out/appstrate-sidecar" ;;
    api-server)
      build_image images/api-server.Dockerfile "$API_IMAGE" \
        "$out/appstrate" "$out/appstrate-runner" "$out/appstrate-sidecar" "$ROOT/system-packages"
      ;;
    operator) build_image images/operator.Dockerfile "$OPERATOR_IMAGE" "$out/appstrate-operator" ;;
  esac
done
step "done"
