#!/usr/bin/env bash
# Creates (once) a Python virtual environment holding helm-python-sdk, which embeds the real
# Helm library (no `helm` binary needed), and prints the path of its python interpreter.
# The operator's chart tests run that interpreter:
#   HELM_PYTHON="$(bash scripts/helm-venv.sh)" cargo test -p operator chart
#
# HELM_VENV overrides the location (default: <repo>/.venv-helm). Idempotent: an existing
# environment that already imports helm_python is reused as is. Only the path goes to stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HELM_VENV:-$repo_root/.venv-helm}"
py="$venv/bin/python"

if [ -x "$py" ] && "$py" -c 'import helm_python' >/dev/null 2>&1; then
    echo "$py"
    exit 0
fi

if ! python3 -m venv --clear "$venv" >&2 2>/dev/null; then
    # Debian ships venv/ensurepip separately.
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "helm-venv: installing python3-venv" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        python3 -m venv --clear "$venv" >&2
    else
        echo "helm-venv: python3 -m venv failed; install python3-venv and retry" >&2
        exit 1
    fi
fi

"$py" -m pip install --quiet --disable-pip-version-check 'helm-python-sdk>=0.2,<0.3' >&2
"$py" -c 'import helm_python' >&2
echo "$py"
