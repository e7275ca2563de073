"""Table of bench_engine results, cached vs absorbed cross-attention (run_cross_attention_bench.sh).
stdin: one line per run, "CHUNKS MODE JSON"."""
import json
import sys

rows = {}
for line in sys.stdin:
    chunks, mode, js = line.split(" ", 2)
    rows.setdefault(int(chunks), {})[mode] = json.loads(js)
print(f"{'encoder tokens':>14} {'figure':22} {'cached':>9} {'absorbed':>9} {'ratio':>7}")
for chunks, r in sorted(rows.items()):
    c, a = r["cached"], r["absorbed"]
    n = c["encode"]["tokens"]
    for name, x, y in [
            ("prefill tokens/s", c["prefill"]["tokens_per_s"], a["prefill"]["tokens_per_s"]),
            ("decode tokens/s", c["decode"]["tokens_per_s"], a["decode"]["tokens_per_s"]),
            ("per-request cache MB", c["kv_and_cross_cache_mb"], a["kv_and_cross_cache_mb"]),
            ("peak RSS MB", c["peak_rss_mb"], a["peak_rss_mb"])]:
        print(f"{n:14d} {name:22} {x:9.1f} {y:9.1f} {y / x:6.2f}x")
