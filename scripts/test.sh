#!/usr/bin/env bash
# The whole test suite: lint, type check, and pytest against real components.
# Each test starts (and stops) the Temporal dev server and processes it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A lab left up by the demo holds the host's one libvirtd and the lab's fixed ports, which
# the tests need: stop it (and remove what its cutovers made) first.
.venv/bin/cutover lab down
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest -p no:cacheprovider "$@"
