"""The issue's 7B-shape table from bench/run_gpu_checks.sh step 5's JSON files:
    python3 bench/gpu_summary.py OUT_DIR [--hbm-tbps 3.35]
Time to first token = encode + prefill; decode ms/token at each batch; the fraction of HBM
bandwidth a batch-1 decode step reaches (decoder weights + the request's caches read once per
token, over the step time); peak GPU memory per request against a full-attention LLaMA-2-7B that
holds the same passages and prompt in a bf16 KV cache (2 x layers x tokens x hidden x 2 bytes)."""
import argparse
import json
import os
import sys


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    start = text.find("{")  # tee'd logs may carry lines before the JSON object
    return json.loads(text[start:]) if start >= 0 else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--hbm-tbps", type=float, default=3.35, help="peak bandwidth (H100 SXM: 3.35)")
    a = ap.parse_args()
    runs = {"cached": load(os.path.join(a.out_dir, "bench7b-cached.json"))}
    for b in (1, 8, 32):
        runs[f"absorbed b{b}"] = load(os.path.join(a.out_dir, f"bench7b-absorbed-b{b}.json"))
    torch_run = load(os.path.join(a.out_dir, "bench7b-torch.json"))
    if not any(runs.values()):
        print(f"no bench7b-*.json in {a.out_dir}", file=sys.stderr)
        return 1
    print(f"{'run':14} {'encode ms':>10} {'prefill ms':>11} {'TTFT ms':>9} {'decode ms/tok':>14} "
          f"{'tok/s':>8} {'HBM %':>6} {'cache MB/req':>13} {'peak GPU MB':>12}")
    for name, r in runs.items():
        if not r:
            print(f"{name:14} (missing or failed)")
            continue
        enc = 1e3 * r["encode"]["seconds"]
        pre = 1e3 * r["prefill"]["seconds"]
        bd = r["batch_decode"]
        hbm = 100 * r["decode_bytes_per_s"] / (a.hbm_tbps * 1e12)
        print(f"{name:14} {enc:10.1f} {pre:11.1f} {enc + pre:9.1f} {bd['ms_per_step']:14.2f} "
              f"{bd['tokens_per_s']:8.1f} {hbm:6.1f} {bd['cache_mb_per_request']:13.1f} "
              f"{r['peak_device_mb']:12.1f}")
    if torch_run:
        print(f"pytorch = {torch_run['impl']} (decode with the cross K/V cached)")
        enc = 1e3 * torch_run["encode"]["seconds"]
        pre = 1e3 * torch_run["prefill"]["seconds"]
        dec = 1e3 / torch_run["decode_cached_cross_kv"]["tokens_per_s"]
        print(f"{'pytorch':14} {enc:10.1f} {pre:11.1f} {enc + pre:9.1f} {dec:14.2f} "
              f"{1e3 / dec:8.1f} {'':>6} {'':>13} {torch_run['peak_gpu_mb'] or 0:12.1f}")
        for name in ("cached", "absorbed b1"):
            r = runs.get(name)
            if not r:
                continue
            ours = 1e3 * (r["encode"]["seconds"] + r["prefill"]["seconds"])
            print(f"TTFT speed-up vs PyTorch ({name}): {(enc + pre) / ours:.2f}x; decode: "
                  f"{dec / r['batch_decode']['ms_per_step']:.2f}x")
    any_run = next(r for r in runs.values() if r)
    tokens = any_run["encode"]["tokens"] + any_run["prefill"]["tokens"]
    full_kv_mb = 2 * 32 * tokens * 4096 * 2 / 1048576.0
    print(f"full-attention LLaMA-2-7B bf16 KV cache for the same {tokens} tokens: {full_kv_mb:.0f} MB "
          f"per request")
    for name, r in runs.items():
        if r:
            print(f"  {name}: {r['batch_decode']['cache_mb_per_request'] / full_kv_mb:.3f} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
