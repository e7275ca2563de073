#!/usr/bin/env bash
# Builds everything and runs every test (unit, reference, CLI, sanitizer). Tests that need
# ../shared skip with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
export OMP_WAIT_POLICY=passive
ctest --test-dir build --output-on-failure --timeout 1800 "$@"
