#!/usr/bin/env bash
# Builds Appstrate's images without pulling anything: static glibc binaries first
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile $PROFILE --target x86_64-unknown-linux-gnu
# then one `FROM scratch` image per Dockerfile in images/, from a small build context holding only the
# binaries (never the whole repository).
#
# usage: images/build.sh [runner] [sidecar] [api-server] [operator] [agent]   (default: the first four)
#
# `agent` is the runner with a userland for the workspace tools (bash, coreutils, git,
# ca-certificates, Bun as `bun` and `node`): a Debian root filesystem made by mmdebstrap from Debian
# packages (cached under $TARGET_DIR/agent-image/, keyed by the suite and package list), Bun's binary
# from its npm package, and the static runner and sidecar, joined into one tar and loaded with
# `docker import`. Its entry point is the runner; the server starts the sidecar of runs with stdio MCP
# servers from it too (`SIDECAR_MCP_IMAGE`, entry point /appstrate-sidecar).
#
# Environment:
#   PROFILE       cargo profile: release (default) or image-dev (quick, for tests and CI)
#   TAG           image tag (default latest)
#   AGENT_IMAGE   full name of the runner image   (default appstrate-runner:$TAG)
#   SIDECAR_IMAGE full name of the sidecar image  (default appstrate-sidecar:$TAG)
#   API_IMAGE     full name of the API image      (default appstrate:$TAG)
#   OPERATOR_IMAGE full name of the operator image (default appstrate-operator:$TAG)
#   AGENT_USERLAND_IMAGE full name of the agent image (default appstrate-agent:$TAG); point AGENT_IMAGE
#                 of the server at it to give agents a shell
#   DEBIAN_SUITE / DEBIAN_MIRROR  for the agent image (default bookworm / mmdebstrap's default mirror)
#   BUN_VERSION   Bun for the agent image (default 1.4.5, npm package @oven/bun-linux-x64)
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
AGENT_USERLAND_IMAGE=${AGENT_USERLAND_IMAGE:-appstrate-agent:$TAG}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-}
BUN_VERSION=${BUN_VERSION:-1.4.5}
# The agent image's Debian packages (with the `essential` set: dash, coreutils, tar, grep, sed, …).
AGENT_PACKAGES=bash,coreutils,git,ca-certificates,procps

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
    agent) bins+=(runner:appstrate-runner sidecar:appstrate-sidecar) ;;
    *) echo "images/build.sh: unknown image '$img' (runner, sidecar, api-server, operator, agent)" >&2; exit 2 ;;
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

# The agent image's root filesystem: built once per suite + package list, then reused.
agent_rootfs() {
  local cache="$TARGET_DIR/agent-image"
  local key
  key=$(printf '%s\n' "v1" "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$AGENT_PACKAGES" | sha256sum | cut -c1-16)
  local tarball="$cache/rootfs-$DEBIAN_SUITE-$key.tar"
  if [ -f "$tarball" ]; then
    step "agent root filesystem: cached $tarball" 
  else
    if ! command -v mmdebstrap >/dev/null 2>&1; then
      echo "images/build.sh: mmdebstrap is missing (apt-get install mmdebstrap)" >&2
      exit 1
    fi
    mkdir -p "$cache"
    rm -f "$cache"/rootfs-*.tar
    step "agent root filesystem: mmdebstrap $DEBIAN_SUITE essential + $AGENT_PACKAGES"
    local t0
    t0=$(date +%s)
    # Documentation, man pages and translations are left out; nothing else is changed.
    mmdebstrap --quiet --format=tar --variant=essential --include="$AGENT_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
      "$DEBIAN_SUITE" "$tarball.tmp" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >&2
    mv "$tarball.tmp" "$tarball"
    step "agent root filesystem built in $(($(date +%s) - t0))s"
  fi
  AGENT_ROOTFS=$tarball
}

# Bun's binary from its npm package (registry.npmjs.org), cached next to the root filesystem.
agent_bun() {
  local cache="$TARGET_DIR/agent-image"
  local tgz="$cache/bun-linux-x64-$BUN_VERSION.tgz"
  if [ ! -f "$tgz" ]; then
    mkdir -p "$cache"
    step "Bun $BUN_VERSION: @oven/bun-linux-x64 from registry.npmjs.org"
    local dl
    dl=$(mktemp -d)
    if command -v npm >/dev/null 2>&1; then
      (cd "$dl" && npm pack --silent "@oven/bun-linux-x64@$BUN_VERSION" >/dev/null)
      mv "$dl"/oven-bun-linux-x64-"$BUN_VERSION".tgz "$tgz"
    else
      curl -fsSL -o "$tgz" \
        "https://registry.npmjs.org/@oven/bun-linux-x64/-/bun-linux-x64-$BUN_VERSION.tgz"
    fi
    rm -rf "$dl"
  fi
  AGENT_BUN=$tgz
}

build_agent_image() {
  local name=$1 runner=$2 sidecar=$3
  agent_rootfs
  agent_bun
  local extra="$ctx_root/agent-extra"
  mkdir -p "$extra/usr/local/bin"
  cp "$runner" "$extra/appstrate-runner"
  cp "$sidecar" "$extra/appstrate-sidecar"
  tar -xzf "$AGENT_BUN" -C "$ctx_root" package/bin/bun
  install -m 0755 "$ctx_root/package/bin/bun" "$extra/usr/local/bin/bun"
  # Bun runs `node`-type scripts when called as node.
  ln -s bun "$extra/usr/local/bin/node"
  local tarball="$ctx_root/agent.tar"
  cp "$AGENT_ROOTFS" "$tarball"
  tar --append -f "$tarball" --owner=0 --group=0 -C "$extra" ./appstrate-runner ./appstrate-sidecar ./usr/local/bin/bun ./usr/local/bin/node
  step "importing $name"
  docker import \
    --change 'ENTRYPOINT ["/appstrate-runner"]' \
    --change 'USER 65534:65534' \
    --change 'WORKDIR /workspace' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'LABEL org.opencontainers.image.title=appstrate-agent' \
    "$tarball" "$name" >/dev/null
  rm -f "$tarball"
  local size
  size=$(docker image inspect -f '{{.Size}}' "$name")
  step "$name: $((size / 1024 / 1024)) MiB ($size bytes)"
}

for img in "${images[@]}"; do
  case "$img" in
    agent) build_agent_image "$AGENT_USERLAND_IMAGE" "$out/appstrate-runner" "$out/appstrate-sidecar" ;;
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
