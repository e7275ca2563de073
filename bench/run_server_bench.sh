#!/usr/bin/env bash
# Load test of `cepe serve` on loopback, from a built tree, fully offline: writes a small corpus,
# trains a sentencepiece tokenizer on it (spm_train), makes a random `small` CEPE model (~20M
# parameters: decode is bound by reading the weights, so batching pays) and a BM25 index, then
# for batching on and off starts the server and runs bench_server at 32 concurrent connections
# (below the queue limit: no request may fail, no 429) and at 64 (above it: the excess must get
# clean 429s), several rounds each, checking that the server's RSS does not grow across rounds.
#
#   bench/run_server_bench.sh [BUILD_DIR]        (default: build)
#   MODE=openai bench/run_server_bench.sh [BUILD_DIR]
#
# MODE=openai instead drives the OpenAI endpoint (streamed POST /v1/chat/completions) at 1, 8, 32
# and 64 concurrent clients on a shared-passage and a distinct-passage workload and prints TTFT,
# TPOT, ITL and end-to-end latency p50/p90/p99 and goodput (SLO_TTFT_MS, SLO_TPOT_MS) per level,
# with the 1-client figures as the baseline of the ratios. OPENAI_REQUESTS (requests per level:
# default four per client, at least 16: the clients stay busy for several waves), PASSAGES (caller passages per request, 4).
#
# Environment knobs: THREADS (server compute threads, 2), MAX_BATCH (16), MAX_QUEUE (40),
# MAX_NEW_TOKENS (16), REQUESTS (answers per round, 64), ROUNDS (3 measured rounds), PRESET (small), DEVICE (cpu or
# cuda), OUT (results file).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
cepe=$build/cepe
bench=$build/bench/bench_server
for f in "$cepe" "$bench"; do
  [[ -x $f ]] || { echo "missing $f: build the cepe and bench_server targets first" >&2; exit 1; }
done
threads=${THREADS:-2}
max_batch=${MAX_BATCH:-16}
max_queue=${MAX_QUEUE:-40}
max_new=${MAX_NEW_TOKENS:-16}
requests=${REQUESTS:-64}
rounds=${ROUNDS:-3}
preset=${PRESET:-small}
device=${DEVICE:-cpu}
export OMP_WAIT_POLICY=passive

work=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n $server_pid ]] && kill -9 "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
out=${OUT:-$work/results.jsonl}
: >"$out"

# ---- data: corpus, tokenizer, model, index ----
awk 'BEGIN {
  split("Paris Rome Berlin Madrid Lisbon Vienna Prague Oslo Athens Dublin Warsaw Bern", city, " ");
  split("France Italy Germany Spain Portugal Austria Czechia Norway Greece Ireland Poland Switzerland", land, " ");
  split("Seine Tiber Spree Manzanares Tagus Danube Vltava Akerselva Kifisos Liffey Vistula Aare", river, " ");
  for (i = 1; i <= 12; i++) for (j = 1; j <= 25; j++) {
    t = city[i] " is the capital of " land[i] ". The river " river[i] " flows through " city[i] \
        ". It has " j " museums, old bridges and parks; the old town was founded in year " (900 + 7 * j) "."
    printf "{\"id\":\"p%d-%d\",\"title\":\"%s\",\"text\":\"%s\"}\n", i, j, land[i], t > "'"$work"'/passages.jsonl"
    print land[i] "\n" t > "'"$work"'/corpus.txt"
  }
}'
if command -v spm_train >/dev/null; then
  spm_train --input="$work/corpus.txt" --model_prefix="$work/spm" --vocab_size=400 \
    --hard_vocab_limit=false --model_type=bpe --byte_fallback=true --minloglevel=2 >/dev/null 2>&1
  tokenizer=$work/spm.model
else
  tokenizer=${CEPE_SHARED_DIR:-../shared}/models/llama2-tokenizer/tokenizer.model
  [[ -f $tokenizer ]] || { echo "need spm_train (package sentencepiece) or $tokenizer" >&2; exit 1; }
fi
"$cepe" random-model --preset "$preset" --tokenizer "$tokenizer" --out "$work/model" >/dev/null
"$cepe" index build --input "$work/passages.jsonl" --out "$work/index" >/dev/null 2>&1

start_server() {  # $1 = on|off
  "$cepe" serve --model "$work/model" --index "$work/index" --port 0 --device "$device" \
    --threads "$threads" \
    --io-threads 2 --retrieval-threads 1 --max-batch "$max_batch" --max-queue "$max_queue" \
    --batching "$1" --max-new-tokens 64 --log-requests off 2>"$work/serve-$1.log" &
  server_pid=$!
  for _ in $(seq 300); do
    grep -q '"event":"ready"' "$work/serve-$1.log" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve-$1.log" >&2; exit 1; }
    sleep 0.1
  done
  port=$(grep -o '"port":[0-9]*' "$work/serve-$1.log" | head -1 | cut -d: -f2)
}

stop_server() {
  kill -TERM "$server_pid"
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=
  [[ $rc == 0 ]] || { echo "cepe serve exited with $rc after SIGTERM" >&2; exit 1; }
}

if [[ ${MODE:-} == openai ]]; then
  max_queue=$((max_queue > 64 ? max_queue : 64))  # 64 clients fit: no 429s in these figures
  slo_ttft=${SLO_TTFT_MS:-2000}
  slo_tpot=${SLO_TPOT_MS:-250}
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "model: random $preset preset on $device; server --threads $threads --max-batch $max_batch" \
    "--max-queue $max_queue; $max_new new tokens per answer; ${PASSAGES:-4} caller passages" \
    "(1 in the prompt, the rest encoded); SLO TTFT <= $slo_ttft ms, TPOT <= $slo_tpot ms"
  start_server on
  status=0
  for workload in shared distinct; do
    for c in 1 8 32 64; do
      n=${OPENAI_REQUESTS:-$((4 * c > 16 ? 4 * c : 16))}
      "$bench" --openai --port "$port" --concurrency "$c" --requests "$n" --rounds 1 \
        --max-new-tokens "$max_new" --workload "$workload" --passages "${PASSAGES:-4}" \
        --slo-ttft-ms "$slo_ttft" --slo-tpot-ms "$slo_tpot" --label "openai-$workload-c$c" |
        tee -a "$out" || status=1
    done
  done
  stop_server
  echo
  echo "| workload | clients | answers/s | output tok/s | goodput/s | TTFT p50/p90/p99 ms | TPOT p50/p90/p99 ms | ITL p50/p90/p99 ms | E2E p50/p90/p99 ms | tok/s vs 1 client |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for workload in shared distinct; do
    base=
    for c in 1 8 32 64; do
      line=$(grep "\"openai-$workload-c$c\"" "$out" | tail -1)
      field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$line"; }
      arr() { sed -n "s/.*\"$1\":\[\([^]]*\)\].*/\1/p" <<<"$line" | sed 's|,| / |g'; }
      tps=$(field output_tokens_per_s)
      [[ -z $base ]] && base=$tps
      echo "| $workload | $c | $(field answers_per_s) | $tps | $(field goodput_per_s) | $(arr ttft_ms_p50_p90_p99) | $(arr tpot_ms_p50_p90_p99) | $(arr itl_ms_p50_p90_p99) | $(arr e2e_ms_p50_p90_p99) | $(awk "BEGIN{printf \"%.2fx\", $tps/$base}") |"
    done
  done
  exit $status
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "model: random $preset preset on $device; server --threads $threads --max-batch $max_batch" \
  "--max-queue $max_queue; $max_new new tokens per answer, k=3 (all passages encoded)"
status=0
for mode in on off; do
  start_server "$mode"
  # 32 clients: below max_batch + max_queue, so nothing may fail and nothing may be refused. The
  # first round warms the server up (allocator arenas reach their working size); RSS growth is
  # measured over the rounds after it, here and (server now warm) at 64 clients.
  "$bench" --port "$port" --pid "$server_pid" --concurrency 32 --requests "$requests" \
    --rounds $((rounds + 1)) --warmup-rounds 1 --max-new-tokens "$max_new" --expect-no-429 --max-rss-growth-kb 16384 \
    --label "batching-$mode-c32" | tee -a "$out" || status=1
  # 64 clients: above it; the excess must be clean 429s (checked by bench_server), retried after
  # 100 ms until every request is answered.
  "$bench" --port "$port" --pid "$server_pid" --concurrency 64 --requests "$requests" \
    --rounds "$rounds" --max-new-tokens "$max_new" --max-rss-growth-kb 16384 --backoff-ms 100 \
    --label "batching-$mode-c64" | tee -a "$out" || status=1
  grep "\"batching-$mode-c64\"" "$out" | grep -q '"rejected_429":[1-9]' ||
    { echo "no 429 at 64 clients with batching $mode" >&2; status=1; }
  stop_server
done

# Summary over the measured rounds of each run: answers/s and tokens/s from the totals, p50 and
# p99 as the mean of the rounds' values (the machine may be shared, so rounds differ).
summary() {  # $1 = label; prints "answers_per_s tokens_per_s p50 p99 answered 429 failed rss_first rss_last"
  grep "\"$1\"" "$out" | grep '"warmup":false' | sed 's/[{}"]//g; s/,/ /g; s/:/=/g' | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      ok += v["ok"]; wall += v["wall_s"]; tok += v["tokens_per_s"] * v["wall_s"];
      p50 += v["p50_ms"]; p99 += v["p99_ms"]; r429 += v["rejected_429"]; failed += v["failed"];
      if (n++ == 0) first = v["rss_kb"]; last = v["rss_kb"] }
    END { printf "%.2f %.1f %.0f %.0f %d %d %d %.1f %.1f\n", ok / wall, tok / wall, p50 / n, p99 / n,
          ok, r429, failed, first / 1024, last / 1024 }'
}
echo
echo "| run (measured rounds) | answers/s | tokens/s | p50 ms | p99 ms | answered | 429 | failed | server RSS MiB (first → last measured round) |"
echo "|---|---|---|---|---|---|---|---|---|"
for label in batching-on-c32 batching-off-c32 batching-on-c64 batching-off-c64; do
  read -r aps tps p50 p99 ok r429 failed rss0 rss1 <<<"$(summary "$label")"
  echo "| $label | $aps | $tps | $p50 | $p99 | $ok | $r429 | $failed | $rss0 → $rss1 |"
done
on=$(summary batching-on-c32 | cut -d' ' -f1)
off=$(summary batching-off-c32 | cut -d' ' -f1)
echo
echo "batching speed-up at 32 clients: $(awk "BEGIN{printf \"%.2f\", $on/$off}")x"
awk "BEGIN{exit !($on > 1.5 * $off)}" || { echo "batching did not win clearly" >&2; status=1; }
exit $status
