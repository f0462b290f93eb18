#!/usr/bin/env bash
# Try sellerbak on the built-in demo shop: install, create a local repository, take a snapshot,
# let the shop run for a night, take an incremental snapshot, restore the latest one and verify.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
# demo only: in real use the passphrase comes from a file, a command or systemd credentials
export SELLERBAK_PASSPHRASE="${SELLERBAK_PASSPHRASE:-demo passphrase, choose your own}"
sb() { .venv/bin/sellerbak -c config.example.yaml "$@"; }
[ -f demo-repo/config ] || sb init
sb snapshot
sb demo advance
sb snapshot
sb snapshots
sb restore latest --target demo-restore
sb check --read-data
echo "restored datasets are in $(pwd)/demo-restore"
