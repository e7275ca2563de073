#!/usr/bin/env bash
# The CUDA backend is a plugin (engine/cuda/cuda_plugin.h): `cepe` must not link libcudart or
# cuBLAS (they cost CPU users ~150-170 MB of resident memory), must find the plugin on its own when
# `--device cuda` asks for it, and must turn every way of not having one into one clear error.
set -uo pipefail
cepe=${CEPE_BINARY:?}
build=${CEPE_BUILD_DIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # check NAME OUTPUT-FILE PATTERN
  if grep -q -- "$3" "$2"; then echo "ok: $1"; else echo "FAIL: $1: expected '$3' in:"; cat "$2"; fail=1; fi
}

if ldd "$cepe" | grep -E 'libcudart|libcublas' > "$tmp/ldd"; then
  echo "FAIL: $cepe links the CUDA libraries:"; cat "$tmp/ldd"; fail=1
else
  echo "ok: cepe links no CUDA library"
fi

"$cepe" random-model --out "$tmp/model" --preset tiny > /dev/null || { echo "FAIL: random-model"; exit 1; }
# `score` (ids in, no tokenizer): the random model has none, and a model command checks the
# tokenizer before it sets up the device.
echo '{"input_ids": [1, 5, 7]}' > "$tmp/in.json"
run_cuda() { "$cepe" score --model "$tmp/model" --input "$tmp/in.json" --device cuda; }

CEPE_CUDA_PLUGIN="$tmp/missing.so" run_cuda > "$tmp/out" 2>&1
rc=$?
[[ $rc == 1 ]] || { echo "FAIL: missing plugin: exit $rc, expected 1"; fail=1; }
check "missing plugin is named" "$tmp/out" "plugin libcepe_cuda.so was not found (looked for $tmp/missing.so"

echo "not a shared object" > "$tmp/garbage.so"
CEPE_CUDA_PLUGIN="$tmp/garbage.so" run_cuda > "$tmp/out" 2>&1
rc=$?
[[ $rc == 1 ]] || { echo "FAIL: garbage plugin: exit $rc, expected 1"; fail=1; }
check "unloadable plugin is named" "$tmp/out" "cannot load the CUDA backend plugin $tmp/garbage.so"

plugin=$build/libcepe_cuda.so
if [[ -f $plugin ]]; then
  # Only the C entry points leave the plugin; its copy of the engine stays private (the standard
  # library's vague-linkage template symbols are exported by design and are not ours).
  nm -DC --defined-only "$plugin" | awk '$2 ~ /^[TDBRVWu]$/' | cut -d' ' -f3- \
    | grep -vE '^(cepe_cuda_(plugin_abi|device_available|make_backend|backend_memory)|_init|_fini)$' \
    | grep -vE '^(typeinfo (name )?for )?std::' > "$tmp/exports"
  if [[ -s $tmp/exports ]]; then
    echo "FAIL: the plugin exports more than its entry points:"; head "$tmp/exports"; fail=1
  else
    echo "ok: the plugin exports its four entry points only"
  fi
  # Found without help (build-tree path, then beside the binary): on a machine without a GPU the
  # runtime's reason comes back; with one the model runs.
  run_cuda > "$tmp/out" 2>&1
  rc=$?
  if [[ $rc == 0 ]]; then
    echo "ok: --device cuda ran on a GPU"
  else
    check "no GPU: one clear error" "$tmp/out" "error: no CUDA device: "
  fi
else
  echo "no $plugin (built without nvcc): the plugin's own checks are skipped"
fi
exit $fail
