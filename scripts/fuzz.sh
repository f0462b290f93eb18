#!/usr/bin/env bash
# Long fuzz run: the hostile-input properties (tests/test_hostile_*.py) with many more examples
# each (SELLERBAK_FUZZ_EXAMPLES, default 20000 here; CI runs a few hundred).
# Usage: scripts/fuzz.sh [pytest args], e.g. SELLERBAK_FUZZ_EXAMPLES=100000 scripts/fuzz.sh -k keyfile
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export SELLERBAK_FUZZ_EXAMPLES="${SELLERBAK_FUZZ_EXAMPLES:-20000}"
# a slow example is a finding too, but under load give each one more room than in CI
export SELLERBAK_FUZZ_DEADLINE_MS="${SELLERBAK_FUZZ_DEADLINE_MS:-20000}"
exec "$PY" -m pytest -n "${FUZZ_WORKERS:-2}" -p no:cacheprovider tests/test_hostile_*.py "$@"
