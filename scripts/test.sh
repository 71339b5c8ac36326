#!/usr/bin/env bash
# Runs every check and test of the workspace. On a fresh machine, run it as root: it installs what the
# tests need (apt-get and PyPI packages) and starts the services itself, on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\n==> %s\n' "$*" >&2; }

# Chart tests render the Helm chart with the real Helm library (PyPI helm-python-sdk) in a virtualenv.
if [ -x scripts/helm-venv.sh ] || [ -f scripts/helm-venv.sh ]; then
  log "Helm chart test environment"
  HELM_PYTHON=$(bash scripts/helm-venv.sh | tail -n 1)
  export HELM_PYTHON
fi

# The API tests validate the served OpenAPI document and drive a live server with a client generated
# from it (PyPI openapi-spec-validator and openapi-python-client, in a virtualenv).
log "OpenAPI test environment"
OPENAPI_PYTHON=$(bash scripts/openapi-venv.sh | tail -n 1)
export OPENAPI_PYTHON

# The installer test signs and verifies releases with minisign.
if ! command -v minisign >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install minisign"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq minisign
  else
    echo "minisign is missing: install it (apt install minisign, brew install minisign or apk add minisign)" >&2
    exit 1
  fi
fi

# The dashboard tests drive Debian's Chromium headless over WebDriver (ChromeDriver).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install chromium chromium-driver"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "chromium and chromedriver are missing: install them (apt install chromium chromium-driver)" >&2
    exit 1
  fi
fi

# PostgreSQL, redis-server, an S3 server (moto) and a Docker engine, on loopback; stopped on exit.
log "services"
# shellcheck source=scripts/services.sh
. scripts/services.sh
services_start

# Docker-mode tests need the runner and sidecar images: static binaries in the quick image-dev profile
# (no release build in CI), FROM scratch images tagged :test, and the agent image (a Debian userland
# made by mmdebstrap, cached under target/agent-image/ by package list, plus Bun from npm). Nothing is
# pulled from a registry of images.
if [ "${DOCKER_HOST_AVAILABLE:-}" = 1 ]; then
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "apt-get install mmdebstrap"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap
    else
      echo "mmdebstrap is missing: install it (apt install mmdebstrap)" >&2
      exit 1
    fi
  fi
  log "images for the Docker tests"
  tag=${APPSTRATE_TEST_IMAGE_TAG:-test}
  PROFILE=image-dev AGENT_IMAGE=appstrate-runner:$tag SIDECAR_IMAGE=appstrate-sidecar:$tag \
    AGENT_USERLAND_IMAGE=appstrate-agent:$tag bash images/build.sh runner sidecar agent
  export APPSTRATE_TEST_IMAGES_BUILT=1
fi

# A fresh toolchain may come without rustfmt and clippy.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  log "rustup component add rustfmt clippy"
  rustup component add rustfmt clippy
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests"
# The panic message, not a backtrace, is what a failing test shows last.
export RUST_BACKTRACE=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
