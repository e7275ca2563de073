#!/usr/bin/env bash
# `cepe index build|search|info` end to end: plain progress lines off a terminal, bad input named
# by file and line with exit status 1, --skip-invalid counts, and a build killed with kill -9 from
# outside leaving the old index loadable and nothing else that loads.
set -uo pipefail
cepe=${CEPE_BINARY:?}
[[ -x "$cepe" ]] || { echo "FAIL: $cepe not built (our own binary: a failure, not a skip)"; exit 1; }
export OMP_WAIT_POLICY=passive
tmp=$(mktemp -d)
tcpsrv_pids=()
trap 'kill "${tcpsrv_pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok:   $1"; }
bad() { echo "FAIL: $1"; fail=1; }

# A corpus of n passages with a few distinctive words.
corpus() {
  local n=$1 tag=$2
  awk -v n="$n" -v tag="$tag" 'BEGIN { srand(7); split("river mountain castle poet ocean engine forest desert island bridge", w, " ");
    for (i = 0; i < n; i++) { t = tag; for (j = 0; j < 60; j++) t = t " " w[int(rand() * 10) + 1];
      printf "{\"id\": \"%s-%d\", \"title\": \"T%d\", \"text\": \"%s unique%d.\"}\n", tag, i, i % 97, t, i } }'
}

corpus 300 old >"$tmp/old.jsonl"
out=$("$cepe" index build --input "$tmp/old.jsonl" --out "$tmp/idx" 2>"$tmp/build.err")
rc=$?
if [[ $rc -eq 0 && "$out" == *"built $tmp/idx: 300 passages, retriever bm25"* ]] && grep -q "^index build: read: done" "$tmp/build.err" &&
  ! grep -q $'\r' "$tmp/build.err"; then ok "build (plain progress lines off a terminal)"; else
  bad "build: rc=$rc $out"; cat "$tmp/build.err"; fi
out=$("$cepe" index search --index "$tmp/idx" -k 2 "unique17 castle" 2>&1)
[[ "$out" == "1. ["*"] old-17 | T17"* ]] && ok "search" || bad "search: $out"
out=$("$cepe" index search --index "$tmp/idx" -k 3 --json "unique5" "unique6" 2>&1)
[[ $(grep -c '"hits"' <<<"$out") -eq 2 && "$out" == *'"id":"old-5"'* ]] && ok "search --json, two questions" ||
  bad "search --json: $out"
out=$("$cepe" index info "$tmp/idx" --verify 2>&1)
[[ "$out" == *"passages   300"* && "$out" == *"retriever  bm25"* && "$out" == *"verify     ok"* ]] &&
  ok "info --verify" || bad "info: $out"
# The dense side: a BERT-family embedder (the tiny random fixture) with FAISS; the embedder is
# checked at query time.
bert="${CEPE_SOURCE_DIR:?}/tests/fixtures/bert_tiny"
out=$("$cepe" index build --retriever dense --embedder "bert:$bert" --input "$tmp/old.jsonl" --out "$tmp/dense" 2>"$tmp/dense.err")
rc=$?
if [[ $rc -eq 0 && "$out" == *"built $tmp/dense: 300 passages, retriever dense"* ]] &&
  grep -q "^index build: embed: done" "$tmp/dense.err"; then ok "build --retriever dense"; else
  bad "build --retriever dense: rc=$rc $out"; cat "$tmp/dense.err"; fi
out=$("$cepe" index info "$tmp/dense" --verify 2>&1)
[[ "$out" == *"embedder   bert:$bert (dim 32, fingerprint "* && "$out" == *"verify     ok"* ]] &&
  ok "info --verify (dense)" || bad "info (dense): $out"

# Beyond one machine: the BM25 database split in two (`cepe index shard`), each half served by its
# own xapian-tcpsrv on loopback, searched as one database: the same ranked ids and scores as the
# whole database, for several questions.
start_tcpsrv() {  # $1 = database; sets port (a free one, found by trying)
  local try log=$tmp/tcpsrv-$RANDOM.log
  for try in $(seq 20); do
    port=$((20000 + RANDOM % 40000))
    # Its own session: on SIGTERM xapian-tcpsrv signals its whole process group (to stop its
    # forked connection handlers), which would otherwise be this script and ctest.
    setsid xapian-tcpsrv --port "$port" --interface 127.0.0.1 "$1" >"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do
      grep -q '^Listening' "$log" && { tcpsrv_pids+=("$pid"); return 0; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null
  done
  return 1
}
if ! command -v xapian-tcpsrv >/dev/null; then
  echo "skip: xapian-tcpsrv not installed (package xapian-tools): no remote-shard check"
elif ! "$cepe" index shard --index "$tmp/idx" --shards 2 --out "$tmp/shards" >"$tmp/shards.txt" 2>&1; then
  bad "index shard: $(cat "$tmp/shards.txt")"
elif ! start_tcpsrv "$tmp/shards/shard-0.xapian" || ! p0=$port || ! start_tcpsrv "$tmp/shards/shard-1.xapian"; then
  bad "xapian-tcpsrv did not start"
else
  p1=$port
  qs=("unique17 castle" "river mountain unique5" "poet ocean" "engine forest desert unique250")
  one=$("$cepe" index search --index "$tmp/idx" -k 10 --json "${qs[@]}" 2>&1)
  two=$("$cepe" index search --index "$tmp/idx" -k 10 --json --bm25-shard "tcp:127.0.0.1:$p0" \
    --bm25-shard "tcp:127.0.0.1:$p1" "${qs[@]}" 2>&1)
  [[ $(grep -o '"id":"old-[0-9]*"' <<<"$one" | wc -l) -eq 40 && "$one" == "$two" ]] &&
    ok "two shards behind xapian-tcpsrv = one database (4 questions, top 10, ids and scores)" ||
    bad "remote shards differ from one database: one=$one two=$two"
  err=$("$cepe" index search --index "$tmp/idx" --bm25-shard "tcp:127.0.0.1:$p0" "q" 2>&1)
  [[ $? -eq 1 && "$err" == *"shard"* ]] && ok "one remote shard alone is refused -> $err" ||
    bad "one shard of two accepted: $err"
  # serve, ask and qa take the same shards (serve from the config too); each opens the index
  # before loading the model, so one shard of two is refused before a model is needed.
  mkdir -p "$tmp/nomodel" && : >"$tmp/nomodel/tokenizer.model"
  printf '{"id": "q1", "question": "unique17 castle", "answers": ["x"]}\n' >"$tmp/q.jsonl"
  printf '{"model": "%s", "index": "%s", "bm25_shards": ["tcp:127.0.0.1:%s"]}\n' "$tmp/nomodel" \
    "$tmp/idx" "$p0" >"$tmp/serve.json"
  for cmd in "serve --model $tmp/nomodel --index $tmp/idx --port 0 --bm25-shard tcp:127.0.0.1:$p0" \
    "serve --config $tmp/serve.json --port 0" \
    "ask --model $tmp/nomodel --index $tmp/idx --bm25-shard tcp:127.0.0.1:$p0 question" \
    "qa --model $tmp/nomodel --index $tmp/idx --bm25-shard tcp:127.0.0.1:$p0 --questions $tmp/q.jsonl --out $tmp/qa.jsonl"; do
    # shellcheck disable=SC2086 # the words of $cmd are the arguments
    err=$(timeout 60 "$cepe" $cmd 2>&1)
    rc=$?
    [[ $rc -eq 1 && "$err" == *"the BM25 database shards hold 150 documents, manifest says 300"* ]] &&
      ok "cepe ${cmd%% *} takes --bm25-shard / bm25_shards (${cmd:0:40}...)" ||
      bad "cepe ${cmd%% *} with one shard of two (exit $rc): $err"
  done
  kill "${tcpsrv_pids[@]}" 2>/dev/null
  wait "${tcpsrv_pids[@]}" 2>/dev/null
fi

# expect_error name fragment args...: exit 1, one line, containing fragment.
expect_error() {
  local name=$1 fragment=$2
  shift 2
  local err rc
  err=$("$cepe" "$@" 2>&1 >/dev/null)
  rc=$?
  err=$(grep -v '^index build: ' <<<"$err")  # progress lines
  if [[ $rc -eq 1 && $(grep -c . <<<"$err") -eq 1 && "$err" == *"$fragment"* ]]; then ok "$name -> $err"; else
    bad "$name (exit $rc): expected '$fragment', got: $err"; fi
}
printf '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n' >"$tmp/dup.jsonl"
expect_error "duplicate id" "$tmp/dup.jsonl:2: duplicate id: 'a' (first seen at $tmp/dup.jsonl:1)" \
  index build --input "$tmp/dup.jsonl" --out "$tmp/x"
printf '{"id": "a", "text": "x"}\n\n{"id": "b", "text": ""}\n' >"$tmp/empty.jsonl"
expect_error "empty text" "$tmp/empty.jsonl:3: empty text" index build --input "$tmp/empty.jsonl" --out "$tmp/x"
printf '{"id": "a", "text": "x\xff"}\n' >"$tmp/utf8.jsonl"
expect_error "invalid UTF-8" "$tmp/utf8.jsonl:1: invalid UTF-8" index build --input "$tmp/utf8.jsonl" --out "$tmp/x"
printf 'id\ttext\ttitle\n1\tok\tT\n2\tno title column\n' >"$tmp/bad.tsv"
expect_error "malformed TSV" "$tmp/bad.tsv:3: malformed line: expected 3 tab-separated fields, got 2" \
  index build --input "$tmp/bad.tsv" --out "$tmp/x"
mkdir -p "$tmp/docs" && printf 'Good line.\nBad \xc3 line.\n' >"$tmp/docs/a.txt"
expect_error "invalid UTF-8 in .txt" "$tmp/docs/a.txt:2: invalid UTF-8" index build --input "$tmp/docs" --out "$tmp/x"
expect_error "bad factory string" "FAISS factory string 'IVFx,Flat' rejected" \
  index build --input "$tmp/old.jsonl" --out "$tmp/x" --faiss IVFx,Flat --embedder "bert:$bert"
expect_error "embedder mismatch" "refusing to query it with 'bert:/m'" index search --index "$tmp/dense" --embedder bert:/m "q"
expect_error "retired embedder" "'lexical' was retired: BM25 replaces it" \
  index build --input "$tmp/old.jsonl" --out "$tmp/x" --embedder lexical
expect_error "dense without an embedder" "--retriever hybrid needs --embedder bert:DIR" \
  index build --input "$tmp/old.jsonl" --out "$tmp/x" --retriever hybrid
expect_error "embedder on a bm25 index" "has no dense side (retriever bm25): it takes no embedder" \
  index search --index "$tmp/idx" --embedder bert:/m "q"
expect_error "bm25 shard on a dense index" "has no BM25 side (retriever dense)" \
  index search --index "$tmp/dense" --bm25-shard "$tmp/x.xapian" "q"
expect_error "not an index" "is not a CEPE index" index search --index "$tmp/docs" "q"
[[ -e "$tmp/x" ]] && bad "failed builds left $tmp/x" || ok "failed builds leave no index"

# --skip-invalid counts and reports.
cat "$tmp/dup.jsonl" "$tmp/empty.jsonl" >"$tmp/mixed.jsonl"
printf '{"id": "c", "text": "fine"}\n{broken\n' >>"$tmp/mixed.jsonl"
out=$("$cepe" index build --skip-invalid --input "$tmp/mixed.jsonl" --out "$tmp/skip" 2>/dev/null)
[[ "$out" == *"skipped 4 invalid record(s): 2 duplicate id, 1 empty text, 1 malformed line"* &&
  "$out" == *"$tmp/mixed.jsonl:7: malformed line"* && "$out" == *"2 passages"* ]] &&
  ok "--skip-invalid counts" || bad "--skip-invalid: $out"
"$cepe" index info "$tmp/skip" | grep -q "skipped    4 invalid records" && ok "info shows skipped" || bad "info skipped"

# kill -9 during a rebuild: the old index still loads; the leftover does not.
corpus 60000 new >"$tmp/new.jsonl"
"$cepe" index build --overwrite --input "$tmp/new.jsonl" --out "$tmp/idx" --faiss IVF64,Flat \
  --embedder "bert:$bert" >/dev/null 2>&1 &
pid=$!
partial="$tmp/.idx.partial-$pid"
for _ in $(seq 1 200); do [[ -d "$partial" ]] && break; sleep 0.05; done
sleep 0.5
if kill -0 "$pid" 2>/dev/null && [[ -d "$partial" ]]; then
  kill -9 "$pid"
  wait "$pid" 2>/dev/null
  out=$("$cepe" index search --index "$tmp/idx" -k 1 "unique17 castle" 2>&1)
  [[ "$out" == "1. ["*"] old-17"* ]] && ok "old index loads after kill -9" || bad "old index after kill -9: $out"
  err=$("$cepe" index search --index "$partial" "q" 2>&1)
  [[ $? -eq 1 && "$err" == *"not an index"* ]] && ok "killed build's directory does not load" ||
    bad "partial dir: $err"
  out=$("$cepe" index build --overwrite --input "$tmp/old.jsonl" --out "$tmp/idx" 2>&1)
  [[ "$out" == *"left by an interrupted build"* && ! -e "$partial" ]] && ok "next build removes the leftover" ||
    bad "leftover not removed: $out"
else
  bad "build finished before it could be killed (or never started)"
fi
exit $fail
