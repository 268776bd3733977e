#!/usr/bin/env bash
# Installs the pinned requirements into .venv (created if missing) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
exec .venv/bin/python -m pytest -q "$@"
