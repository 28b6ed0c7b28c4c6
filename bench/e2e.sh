#!/usr/bin/env bash
# End-to-end benchmark: our default configuration vs batching off, HTTP, c = 1, 4, 16, 64.
# Starts its own servers on free loopback ports; the logic is in bench/e2e.py (--help).
#   bench/e2e.sh --results bench/RESULTS.md --json /tmp/e2e.json
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m bench.e2e "$@"
