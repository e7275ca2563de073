#!/usr/bin/env bash
# Installs the Debian bookworm packages CEPE-QA builds and tests with (run as root).
# The CUDA toolkit is not installed here: when /usr/local/cuda/bin/nvcc exists it is used.
set -euo pipefail
packages=(
  build-essential cmake pkg-config git
  libboost-all-dev libfaiss-dev libsentencepiece-dev sentencepiece rapidjson-dev libopenblas-dev
  libxapian-dev xapian-tools
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 curl
)
# Optional: python3-torch python3-numpy (the PyTorch reference, the training pipeline test and
# the benchmark baseline; the test command installs them),
# installed with `scripts/install-deps.sh --with-torch`.
if [[ "${1:-}" == "--with-torch" ]]; then packages+=(python3-torch python3-numpy); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "all build dependencies are installed"
fi
