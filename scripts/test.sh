#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pytest exits 5 when it collects nothing: that must fail, and it does under set -e.
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
