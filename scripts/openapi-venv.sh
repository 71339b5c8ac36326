#!/usr/bin/env bash
# Creates (once) a Python virtual environment holding the OpenAPI tools the API tests run against the
# served document: openapi-spec-validator (validation) and openapi-python-client (client generation).
# Prints the path of its python interpreter:
#   OPENAPI_PYTHON="$(bash scripts/openapi-venv.sh)" cargo nextest run -p api-server -E 'test(/openapi/)'
#
# OPENAPI_VENV overrides the location (default: <repo>/.venv-openapi). Idempotent: an environment that
# already imports both tools is reused as is. Only the path goes to stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${OPENAPI_VENV:-$repo_root/.venv-openapi}"
py="$venv/bin/python"

ready() {
    [ -x "$py" ] && "$py" -c 'import openapi_spec_validator, openapi_python_client' >/dev/null 2>&1
}

if ready; then
    echo "$py"
    exit 0
fi

if ! python3 -m venv --clear "$venv" >&2 2>/dev/null; then
    # Debian ships venv/ensurepip separately.
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "openapi-venv: installing python3-venv" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        python3 -m venv --clear "$venv" >&2
    else
        echo "openapi-venv: python3 -m venv failed; install python3-venv and retry" >&2
        exit 1
    fi
fi

"$py" -m pip install --quiet --disable-pip-version-check \
    'openapi-spec-validator==0.9.0' 'openapi-python-client==0.29.1' >&2
ready
echo "$py"
