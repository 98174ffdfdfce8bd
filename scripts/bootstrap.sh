#!/usr/bin/env bash
# Create the virtualenv .venv and install fabwatch with its dev extras (idempotent, no apt).
# Reinstalls when pyproject.toml is newer than the stamp left by the last install.
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
venv=${VENV:-.venv}
stamp="$venv/.fabwatch-installed"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    echo "bootstrap: creating $venv with $("$python" --version 2>&1)"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        echo "bootstrap: '$python -m venv' failed; on Debian run scripts/ensure-deps.sh" \
             "(it installs python3-venv)" >&2
        exit 1
    fi
fi

if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    echo "bootstrap: pip install -e '.[dev]' into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
