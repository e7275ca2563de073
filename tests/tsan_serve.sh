#!/usr/bin/env bash
# `cepe serve` under ThreadSanitizer, driven hard: 12 clients asking (plain, streamed, and
# hanging up mid-stream, which cancels generation), chat completions, searches, /metrics scrapes,
# HEAD and /v1/info, while the API key file is rotated and SIGHUP sent every 0.3 s and the index
# changes (cepe index add every 2 s, remove every 6 s, encode now and then; all taken up on the
# next SIGHUP);
# then SIGTERM with requests in flight. Fails when TSan reports anything (a data race, a
# lock-order inversion, a signal-unsafe call) or the server does not stop cleanly. Not part of ctest (it builds a TSan
# tree of its own, ~15 minutes on 2 cores the first time):
#   tests/tsan_serve.sh [seconds=60] [tsan build dir=build-tsan]
# The model and index are a random tiny model and a BM25 index over docs/, made with the TSan
# binary itself; --threads 1, as libgomp is not instrumented (its team would read as races).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
build=${2:-build-tsan}
if [[ ! -x $build/cepe ]]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCEPE_WITH_CUDA=OFF \
    -DCEPE_BUILD_TESTS=OFF -DCEPE_BUILD_BENCH=OFF -DCEPE_FUZZ_ENGINE=off \
    -DCMAKE_CXX_FLAGS="-fsanitize=thread -O1" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
    >"$build.log" 2>&1
  cmake --build "$build" -j"$(nproc)" --target cepe >>"$build.log" 2>&1 ||
    { tail -30 "$build.log"; exit 1; }
fi
cepe=$build/cepe
work=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill -9 $pid 2>/dev/null; rm -rf "$work"' EXIT
export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 log_path=$work/report"
export OMP_WAIT_POLICY=passive

tokenizer=${CEPE_SHARED_DIR:-../shared}/models/llama2-tokenizer/tokenizer.model
[[ -f $tokenizer ]] || { echo "skip: no tokenizer at $tokenizer"; exit 77; }
"$cepe" random-model --preset tiny --tokenizer "$tokenizer" --out "$work/model" >/dev/null
"$cepe" index build --input docs --out "$work/index" >/dev/null 2>&1
echo k1 >"$work/keys.txt"
"$cepe" serve --model "$work/model" --index "$work/index" --port 0 --threads 1 --io-threads 2 \
  --retrieval-threads 2 --api-key-file "$work/keys.txt" --max-batch 4 --max-queue 8 \
  >"$work/serve.log" 2>&1 &
pid=$!
port=
for _ in $(seq 1 600); do
  grep -q '"event":"ready"' "$work/serve.log" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.2
done
port=$(grep -o '"event":"listening"[^}]*"port":[0-9]*' "$work/serve.log" | grep -o '[0-9]*$')
# Meanwhile the index grows (cepe index add) and shrinks (cepe index remove), so the SIGHUPs also
# reopen it under load.
(
  for round in $(seq 1 1000); do
    sleep 2
    printf '{"id":"grown-%d","title":"Grown","text":"Passage %d added while the server runs."}\n' \
      "$round" "$round" >"$work/more.jsonl"
    "$cepe" index add --index "$work/index" --input "$work/more.jsonl" >/dev/null 2>&1 || true
    # Every third round the passage added two rounds before leaves again (cepe index remove).
    if ((round % 3 == 0)); then
      "$cepe" index remove --index "$work/index" "grown-$((round - 2))" >/dev/null 2>&1 || true
    fi
    # Now and then the grown index's encoder states too (taken up on a SIGHUP).
    if ((round % 4 == 1)); then
      "$cepe" index encode --index "$work/index" --model "$work/model" --threads 1 \
        >/dev/null 2>&1 || true
    fi
  done
) &
grower=$!
/usr/bin/python3 tests/tsan_load.py "$port" "$pid" "$work/keys.txt" "$secs"
kill $grower 2>/dev/null || true
wait $grower 2>/dev/null || true
kill -TERM $pid
status=0
wait $pid || status=$?
pid=
reloads=$(grep -c '"event":"keys_reloaded"' "$work/serve.log" || true)
index_reloads=$(grep -c '"event":"index_reloaded"' "$work/serve.log" || true)
store_reloads=$(grep -c '"event":"encoder_store_reloaded"' "$work/serve.log" || true)
echo "server exit status $status; $reloads key reloads, $index_reloads index reloads," \
  "$store_reloads encoder store reloads"
if ls "$work"/report.* >/dev/null 2>&1; then
  grep -h "SUMMARY" "$work"/report.* | sort | uniq -c | sort -rn
  head -60 "$(ls "$work"/report.* | head -1)"
  echo "FAIL: ThreadSanitizer reports"
  exit 1
fi
[[ $status == 0 ]] || { echo "FAIL: the server did not stop cleanly"; exit 1; }
[[ $index_reloads -gt 0 ]] || { echo "FAIL: the index was never reopened"; exit 1; }
[[ $store_reloads -gt 0 ]] || { echo "FAIL: no encoder store was taken up"; exit 1; }
echo "ok: no ThreadSanitizer report"
