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

# PostgreSQL, redis-server, an S3 server (moto) and a Docker engine, on loopback; stopped on exit.
log "services"
# shellcheck source=scripts/services.sh
. scripts/services.sh
services_start

# Docker-mode tests need the runner and sidecar images: static binaries in the quick image-dev profile
# (no release build in CI), FROM scratch images tagged :test. Nothing is pulled.
if [ "${DOCKER_HOST_AVAILABLE:-}" = 1 ]; then
  log "images for the Docker tests"
  PROFILE=image-dev AGENT_IMAGE=appstrate-runner:${APPSTRATE_TEST_IMAGE_TAG:-test} SIDECAR_IMAGE=appstrate-sidecar:${APPSTRATE_TEST_IMAGE_TAG:-test} \
    bash images/build.sh runner sidecar
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
