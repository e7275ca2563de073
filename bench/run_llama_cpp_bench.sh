#!/usr/bin/env bash
# Engine benchmark side by side with real llama.cpp on the very same weights, for every load-time
# weights kind: our bench_engine, then llama.cpp's prebuilt libllama (from the npm package
# node-llama-cpp 3.22.1) driven from C (bench/llama_cpp/llama_bench.c), optionally the same
# libllama through node (bench/llama_cpp/bench.mjs), in alternation per kind so that drifts in
# machine load hit all of them alike. The C driver is the fair llama.cpp figure (a persistent threadpool, as
# llama.cpp's own tools run); node adds a JS round trip per decoded token.
#   bench/run_llama_cpp_bench.sh [threads] [kinds]
#     threads  default 2
#     kinds    default "stored bf16 f16 q8_0 q4_0" (stored = F32 for the F32 bench model)
# Model: the 134M plain LLaMA of issue 14 (as bench/run_engine_bench.sh plain), made if absent,
# converted to one GGUF per kind with bench/llama_cpp/make_gguf.py (needs the LLaMA-2 tokenizer
# in ${CEPE_SHARED_DIR:-../shared}/models/llama2-tokenizer; without it this skips).
# Needs a build (bench_engine), gcc, git, node and npm (the first run installs node-llama-cpp).
# Environment:
#   PROMPT_TOKENS, DECODE_TOKENS  default 512 and 128 (smaller for a smoke test)
#   REPEATS             runs of each engine per kind, alternating (default 3; the tables show
#                       medians)
#   KV_CACHE            our --kv-cache (default auto: F32 with F32 weights, F16 otherwise);
#                       llama.cpp's is F16, so f16 is the like-for-like setting for F32 weights
#   WITH_NODE=1         also time llama.cpp through node (bench.mjs)
#   LLAMA_CPP_BUILD     prebuilt (default: node-llama-cpp's binaries, built for every x86-64) or
#                       native: the same release's source built here with cmake, GGML_NATIVE=ON
#                       (-march=native, as a user building llama.cpp gets by default), once
#                       (~8 minutes on 2 cores) into the cache; needs cmake and g++
#                       or avx2: built the same way for an AVX2 machine (GGML_NATIVE=OFF: AVX2,
#                       FMA, F16C, BMI2, no AVX-512), and ours run with CEPE_KERNELS=avx2 from a
#                       generic build (CEPE_NATIVE=OFF, so that the compiler, too, has AVX2's 16
#                       vector registers; BUILD_DIR defaults to build-avx2, configured here
#                       when absent and rebuilt on every run) with OpenBLAS held to its Haswell
#                       kernels (OPENBLAS_CORETYPE=Haswell), so that an AVX-512 box also shows
#                       how both fare on an AVX2-only CPU
#   LLAMA_CPP_NPM_DIR   where node-llama-cpp is (or goes), default ~/.cache/cepe/node-llama-cpp
#   LLAMA_CPP_CACHE_DIR llama.cpp headers, the compiled driver and the GGUF files,
#                       default ~/.cache/cepe/llama-cpp-bench
#   BUILD_DIR, BENCH_MODEL_DIR, CEPE_SHARED_DIR as elsewhere in bench/; BENCH_MODEL_DIR may be
#                       any plain LLaMA directory, e.g. stories260K from `cepe convert llama2c`
#                       (its own tokenizer.model goes into the GGUF; PROMPT_TOKENS=256, as its
#                       context is 512; kinds "stored bf16 f16", as 172 columns do not fill
#                       32-value blocks)
# Prints one JSON line per run and a table per figure; figures on a shared machine are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
kinds=${2:-"stored bf16 f16 q8_0 q4_0"}
llama_build=${LLAMA_CPP_BUILD:-prebuilt}
if [[ $llama_build == avx2 ]]; then build=${BUILD_DIR:-build-avx2}; else build=${BUILD_DIR:-build}; fi
prompt_tokens=${PROMPT_TOKENS:-512}
decode_tokens=${DECODE_TOKENS:-128}
repeats=${REPEATS:-3}
kv_cache=${KV_CACHE:-auto}
with_node=${WITH_NODE:-0}
nlc_version=3.22.1
npm_dir=${LLAMA_CPP_NPM_DIR:-$HOME/.cache/cepe/node-llama-cpp}
cache=${LLAMA_CPP_CACHE_DIR:-$HOME/.cache/cepe/llama-cpp-bench}
model=${BENCH_MODEL_DIR:-/tmp/cepe-bench134m-plain}
# The model's own tokenizer where it has one (stories260K's 512 pieces), else LLaMA-2's.
tokenizer=$model/tokenizer.model
[[ -f $tokenizer ]] || tokenizer=${CEPE_SHARED_DIR:-../shared}/models/llama2-tokenizer/tokenizer.model

die() { echo "run_llama_cpp_bench: $*" >&2; exit 1; }

for tool in gcc git node npm; do
  command -v "$tool" >/dev/null || die "$tool not found (node and npm: apt-get install nodejs npm)"
done
# The generic build is this script's own: configured when absent and brought up to date on
# every run (incremental), so that it never times older sources than the checkout's.
if [[ $llama_build == avx2 && -z ${BUILD_DIR:-} ]]; then
  if [[ ! -f $build/CMakeCache.txt ]]; then
    echo "configuring ours for a generic x86-64 (CEPE_NATIVE=OFF) in $build" >&2
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCEPE_NATIVE=OFF -DCEPE_WITH_CUDA=OFF \
      -DCEPE_BUILD_TESTS=OFF >&2 || die "configuring $build failed"
  fi
  cmake --build "$build" -j"$(nproc)" --target bench_engine >&2 ||
    die "building bench_engine into $build failed"
fi
[[ -x $build/bench/bench_engine ]] ||
  die "no $build/bench/bench_engine: build the bench targets first"
case $(uname -m) in
  x86_64) platform=linux-x64 ;;
  aarch64) platform=linux-arm64 ;;
  *) die "node-llama-cpp ships no prebuilt CPU libllama for $(uname -m) that this script knows" ;;
esac
case $llama_build in
  prebuilt) ;;
  native | avx2)
    command -v cmake >/dev/null || die "cmake not found (LLAMA_CPP_BUILD=$llama_build builds llama.cpp)" ;;
  *) die "LLAMA_CPP_BUILD must be prebuilt, native or avx2, not '$llama_build'" ;;
esac
if [[ $llama_build == avx2 ]]; then
  # A -march=native build would give our AVX2 code AVX-512's 32 registers on this box.
  grep -q '^CEPE_NATIVE:BOOL=OFF$' "$build/CMakeCache.txt" 2>/dev/null ||
    die "LLAMA_CPP_BUILD=avx2 needs ours built with -DCEPE_NATIVE=OFF; $build is not"
  export CEPE_KERNELS=avx2 OPENBLAS_CORETYPE=Haswell
fi
[[ $with_node == 1 && $llama_build != prebuilt ]] &&
  die "WITH_NODE=1 times node-llama-cpp's own prebuilt binaries; use it with LLAMA_CPP_BUILD=prebuilt"
for kind in $kinds; do
  case $kind in stored | f32 | bf16 | f16 | q8_0 | q4_0) ;; *) die "unknown kind '$kind'" ;; esac
done

# (a) node-llama-cpp. --ignore-scripts: its install script would fetch or build llama.cpp, and the
# prebuilt CPU binaries we want come as a package of their own. --omit=optional, with that package
# named: the other optional packages are ~600 MB of CUDA, Vulkan and other platforms' binaries.
nlc=$npm_dir/node_modules/node-llama-cpp
libs=$npm_dir/node_modules/@node-llama-cpp/$platform/bins/$platform
installed=$(node -p "require('$nlc/package.json').version" 2>/dev/null || true)
if [[ $installed != "$nlc_version" || ! -d $libs ]]; then
  echo "installing node-llama-cpp@$nlc_version into $npm_dir" >&2
  mkdir -p "$npm_dir"
  npm install --prefix "$npm_dir" --ignore-scripts --omit=optional --no-audit --no-fund \
    --loglevel=error "node-llama-cpp@$nlc_version" "@node-llama-cpp/$platform@$nlc_version" >&2 ||
    die "npm install of node-llama-cpp@$nlc_version failed"
  [[ -d $libs ]] || die "no prebuilt libraries at $libs after npm install"
fi

# (b) llama.cpp's headers, from the source node-llama-cpp bundles: the release its libraries were
# built from, so the by-value parameter structs match.
src=$cache/llama.cpp-$nlc_version
if [[ ! -f $src/include/llama.h || ! -f $src/ggml/include/ggml.h ]]; then
  [[ -f $nlc/llama/gitRelease.bundle ]] ||
    die "no $nlc/llama/gitRelease.bundle to take headers from"
  mkdir -p "$cache"
  rm -rf "$src.tmp"
  git -c advice.detachedHead=false clone -q "$nlc/llama/gitRelease.bundle" "$src.tmp" ||
    die "git clone of $nlc/llama/gitRelease.bundle failed"
  rm -rf "$src"
  mv "$src.tmp" "$src"
fi

# (b') LLAMA_CPP_BUILD=native or avx2: that same source built for this CPU (or for AVX2), shared
# libraries (libllama, libggml with its one CPU backend linked in, libggml-base), nothing else.
if [[ $llama_build != prebuilt ]]; then
  native=$cache/$llama_build-build
  [[ $llama_build == native ]] && isa=(-DGGML_NATIVE=ON) || isa=(-DGGML_NATIVE=OFF -DGGML_AVX512=OFF)
  if [[ ! -f $native/bin/libllama.so ]]; then
    echo "building llama.cpp $nlc_version's release ($llama_build) into $native" >&2
    cmake -S "$src" -B "$native" -DCMAKE_BUILD_TYPE=Release "${isa[@]}" \
      -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TOOLS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2 &&
      cmake --build "$native" -j"$(nproc)" --target llama >&2 ||
      die "building llama.cpp from $src failed"
  fi
  libs=$native/bin
fi

# (c) the C driver, linked against the prebuilt libraries by their file names (libllama and
# libggml carry the release in theirs: libllama.v0.5.0.so), found again at run time by rpath.
lib_file() {  # lib_file NAME: libNAME.so or libNAME.v<release>.so in $libs
  local f
  for f in "$libs/lib$1.so" "$libs/lib$1".v*.so; do
    [[ -f $f ]] && { basename "$f"; return; }
  done
  die "no lib$1 in $libs"
}
link=()
for name in llama ggml ggml-base; do
  file=$(lib_file "$name")
  link+=(-l:"$file")
done
mkdir -p "$cache/bin"
driver=$cache/bin/llama_bench-$llama_build
gcc -O2 -std=c11 -Wall -Wextra -I"$src/include" -I"$src/ggml/include" \
  bench/llama_cpp/llama_bench.c -o "$driver" -L"$libs" "${link[@]}" -Wl,-rpath,"$libs" ||
  die "compiling bench/llama_cpp/llama_bench.c failed"

# (d) the bench model (as bench/run_engine_bench.sh makes it) and one GGUF per kind.
if [[ ! -f "$model/config.json" ]]; then
  /usr/bin/python3 bench/make_bench_model.py --out "$model" --plain --dec-layers 12 >&2
fi
gguf_type() { [[ $1 == stored ]] && echo f32 || echo "$1"; }  # the bench model is stored in F32
gguf_file() { echo "$cache/gguf/$(basename "$model")-$(gguf_type "$1").gguf"; }
mkdir -p "$cache/gguf"
for kind in $kinds; do
  gguf=$(gguf_file "$kind")
  [[ -f $gguf ]] && continue
  if [[ ! -f $tokenizer ]]; then
    echo "skip: no tokenizer at $tokenizer (set CEPE_SHARED_DIR) to make $gguf;" \
         "no llama.cpp comparison"
    exit 0
  fi
  /usr/bin/python3 bench/llama_cpp/make_gguf.py --model "$model" --type "$(gguf_type "$kind")" \
    --tokenizer "$tokenizer" --out "$gguf" >&2 || die "make_gguf.py failed for $kind"
done

# (e) the runs: for each kind, the engines in turn, REPEATS times (medians in the tables).
sizes=(--prompt-tokens "$prompt_tokens" --decode-tokens "$decode_tokens")
results=()
for kind in $kinds; do
  gguf=$(gguf_file "$kind")
  for ((rep = 1; rep <= repeats; ++rep)); do
    ours=$("$build/bench/bench_engine" --model "$model" --threads "$threads" --weights "$kind" \
           --kv-cache "$kv_cache" "${sizes[@]}" --json) || die "bench_engine failed for $kind"
    echo "cepe $kind: $ours"
    c=$("$driver" --model "$gguf" --libs "$libs" --threads "$threads" "${sizes[@]}" --json) ||
      die "llama_bench (C driver) failed for $kind"
    echo "llama.cpp C $kind: $c"
    node=null
    if [[ $with_node == 1 ]]; then
      # One libuv thread, as bench.mjs sets it when unset (see there); setting it here spares
      # bench.mjs its re-exec, and a value from the caller is kept as bench.mjs keeps it.
      node=$(UV_THREADPOOL_SIZE=${UV_THREADPOOL_SIZE:-1} NODE_PATH=$npm_dir/node_modules \
             node bench/llama_cpp/bench.mjs --model "$gguf" --threads "$threads" "${sizes[@]}" \
             --json) || die "bench.mjs (node-llama-cpp) failed for $kind"
      echo "llama.cpp node $kind: $node"
    fi
    results+=("$kind" "$ours" "$c" "$node")
  done
done

# (f) a table per figure, a row per kind: medians of the repeats (min-max beside them).
/usr/bin/python3 - "$prompt_tokens" "${results[@]}" <<'PY'
import json, statistics, sys
prompt = int(sys.argv[1])
a = sys.argv[2:]
runs = {}
for i in range(0, len(a), 4):
    runs.setdefault(a[i], []).append([json.loads(s) for s in a[i + 1:i + 4]])
with_node = any(r[2] is not None for rs in runs.values() for r in rs)
figures = [
    ("prefill tokens/s", lambda r: r["prefill"]["tokens_per_s"]),
    ("decode tokens/s after BOS", lambda r: r["decode_short"]["tokens_per_s"]),
    (f"decode tokens/s after a {prompt}-token prompt", lambda r: r["decode"]["tokens_per_s"]),
    ("peak RSS MB", lambda r: r["peak_rss_mb"]),
]
engines = ["ours", "llama.cpp C"] + (["llama.cpp node"] if with_node else [])
repeats = len(next(iter(runs.values())))
for name, get in figures:
    print(f"\n{name} (median of {repeats}, min-max)\n")
    print("| kind | " + " | ".join(engines) + " | ours / llama.cpp C |")
    print("|---" * (len(engines) + 2) + "|")
    for kind, rs in runs.items():
        cells, medians = [], []
        for e in range(len(engines)):
            vals = [get(r[e]) for r in rs]
            medians.append(statistics.median(vals))
            cells.append(f"{medians[-1]:.1f} ({min(vals):.1f}-{max(vals):.1f})")
        print(f"| {kind} | " + " | ".join(cells) + f" | {medians[0] / medians[1]:.2f}x |")
# The C and node runs use the same library and GGUF, so their greedy tokens must agree.
for kind, rs in runs.items():
    for r in rs:
        if r[2] is not None and r[1]["first_tokens"] != r[2]["first_tokens"]:
            print(f"\nnote: {kind}: llama.cpp C and node disagree on the first greedy tokens: "
                  f"{r[1]['first_tokens']} vs {r[2]['first_tokens']}")
c = next(iter(runs.values()))[0][1]
print(f"\nllama.cpp {c['llama_cpp_release']}, CPU backend {c['cpu_variant']}, {c['threads']} threads")
PY
