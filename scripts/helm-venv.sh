#!/usr/bin/env bash
# Creates (once) a Python virtual environment holding helm-python-sdk, which embeds
# the real Helm library, and prints the path of its python interpreter on stdout.
# The operator's chart tests run that interpreter: HELM_PYTHON="$(bash scripts/helm-venv.sh)".
#
# HELM_VENV overrides the location (default: <repo>/.venv-helm). Idempotent: an
# existing environment that already imports helm_python is reused as is.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HELM_VENV:-$repo_root/.venv-helm}"
py="$venv/bin/python"

if [ -x "$py" ] && "$py" -c 'import helm_python' >/dev/null 2>&1; then
    echo "$py"
    exit 0
fi

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    echo "helm-venv: python3-venv is missing; installing it" >&2
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
    else
        echo "helm-venv: install python3-venv (Debian) and retry" >&2
        exit 1
    fi
fi

python3 -m venv "$venv" >&2
"$py" -m pip install --quiet --disable-pip-version-check 'helm-python-sdk>=0.2,<0.3' >&2
"$py" -c 'import helm_python' >&2
echo "$py"
