#!/usr/bin/env bash
# Runs every check and test of the workspace. On a fresh machine, run it as root: it installs what the
# tests need (apt-get and PyPI packages) and starts the services itself, on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\n==> %s\n' "$*" >&2; }

APT_UPDATED=0
apt_install() {
  # Installs the Debian packages given that are not installed yet.
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]} (run this script as root to install them)" >&2
    return 1
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Chart tests render the Helm chart with the real Helm library (PyPI helm-python-sdk) in a virtualenv.
if [ -x scripts/helm-venv.sh ] || [ -f scripts/helm-venv.sh ]; then
  log "Helm chart test environment"
  HELM_PYTHON=$(bash scripts/helm-venv.sh | tail -n 1)
  export HELM_PYTHON
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
