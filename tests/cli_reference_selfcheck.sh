#!/usr/bin/env bash
# The PyTorch reference's own checks (tests/reference/test_reference_selfcheck.py): against its
# incremental path, a naive float64 re-implementation, and the committed fixtures.
# Needs Debian's python3-torch (/usr/bin/python3); exit 77 = skipped.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${CEPE_PYTHON:-/usr/bin/python3}"
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "skip: $py has no torch (scripts/install-deps.sh --with-torch installs python3-torch)"
  exit 77
fi
export PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1
exec "$py" "$here/reference/test_reference_selfcheck.py"
