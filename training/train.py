#!/usr/bin/env python3
"""Trains the small CEPE reader, one stage per call (see training/README.md for the recipe):

  pretrain   a decoder-only LLaMA on the training articles' passages (+ their Q/A pairs)
  warmup     CEPE's first stage: encoder + cross-attention on top of the frozen decoder, the same
             text on both sides (the decoder's window, cut into encoder chunks)
  qa         question -> answer, the gold passage among BM25 distractors in the encoder chunks

  train.py STAGE --work W [--run DIR] [--init MODEL_DIR] [--steps N] [--batch-size B] [--lr X]
                 [--device cpu|cuda] [--resume] [--time-limit SEC] ...

Outputs in --run (default W/runs/STAGE): log.jsonl (one line per --log-every steps), ckpt.pt
(written atomically every --ckpt-every steps, at --stop-at / --time-limit, and at the end), and
final/ (the exported model, the next stage's --init) once all --steps are done.

--resume continues from RUN/ckpt.pt when there is one (and starts afresh otherwise), exactly: the
batch of step s is a pure function of (seed, s), so no data cursor or RNG state is needed; the
saved run's hyperparameters win over the command line's. Exit status 0 when the stage is done,
75 when it stopped early (time limit or --stop-at) with a checkpoint to resume from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
from common import BOS_ID, IGNORE  # noqa: E402
import cepe_reference as ref  # noqa: E402
import export  # noqa: E402
from model import CepeLM, stack_dict  # noqa: E402

EXIT_INCOMPLETE = 75

# Per-stage defaults: the sizes and schedule of the shipped model (README.md). Tests override
# them with tiny values.
DEFAULTS = {
    "pretrain": dict(steps=1200, batch_size=64, lr=1.5e-3, warmup=100, weight_decay=0.1,
                     seq_len=512, dropout=0.1),
    "warmup": dict(steps=1500, batch_size=64, lr=1e-3, warmup=100, weight_decay=0.0,
                   seq_len=256, dropout=0.0),
    "qa": dict(steps=3000, batch_size=32, lr=5e-4, warmup=100, weight_decay=0.0,
               seq_len=0, dropout=0.0),
}
# Hyperparameters that define a run; on --resume the checkpoint's values are used.
RUN_KEYS = ("steps", "batch_size", "lr", "warmup", "min_lr_ratio", "weight_decay", "seq_len",
            "dropout", "seed", "grad_clip", "n_chunks", "min_ctx", "max_ctx", "chunk_len")


# --------------------------------------------------------------------------------------------------
# Data: every batch is a function of (seed, step)
# --------------------------------------------------------------------------------------------------

class Data:
    def __init__(self, work: str):
        self.work = work
        z = np.load(os.path.join(work, "data.npz"))
        self.a = {k: z[k] for k in z.files}  # decompress once
        with open(os.path.join(work, "tokenizer.model"), "rb") as f:
            self.tokenizer = f.read()
        a = self.a
        self.train_q = np.flatnonzero(a["q_split"] == 0)
        self.heldout_q = np.flatnonzero(a["q_split"] == 1)

    def passage(self, i: int, max_len: int) -> np.ndarray:
        o = self.a["psg_off"]
        return self.a["psg_tok"][o[i]:o[i + 1]][:max_len]

    def question(self, i: int):
        a = self.a
        p = a["q_prompt"][a["q_prompt_off"][i]:a["q_prompt_off"][i + 1]]
        t = a["q_target"][a["q_target_off"][i]:a["q_target_off"][i + 1]]
        return p, t


class EpochOrder:
    """Sample k of the whole run is item perm_e[k % n] of epoch e = k // n; each epoch's
    permutation comes from its own seeded generator, so any step can be rebuilt on resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.cache = n, seed, {}

    def item(self, k: int) -> int:
        e = k // self.n
        if e not in self.cache:
            self.cache = {e: np.random.default_rng([self.seed, e]).permutation(self.n)}
        return int(self.cache[e][k % self.n])


def lm_windows(stream: np.ndarray, length: int, seed: int):
    """Non-overlapping windows of length+1 tokens (inputs and shifted labels)."""
    n = (len(stream) - 1) // length
    if n < 1:
        raise ValueError(f"token stream of {len(stream)} tokens is shorter than one window")
    order = EpochOrder(n, seed)

    def window(k: int) -> np.ndarray:
        s = order.item(k) * length
        return stream[s:s + length + 1].astype(np.int64)
    return window


def pad_chunks(chunk_lists):
    """list (per example) of lists of 1-D arrays -> chunks [B, C, L], mask [B, C, L]."""
    B = len(chunk_lists)
    C = max(len(c) for c in chunk_lists)
    L = max(len(x) for c in chunk_lists for x in c)
    chunks = torch.zeros(B, C, L, dtype=torch.long)
    mask = torch.zeros(B, C, L, dtype=torch.bool)
    for b, cl in enumerate(chunk_lists):
        for c, x in enumerate(cl):
            chunks[b, c, :len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
            mask[b, c, :len(x)] = True
    return chunks, mask


class Batcher:
    """Builds the batch for a step of a stage (train) or the fixed evaluation batches (heldout)."""

    def __init__(self, stage: str, data: Data, hp: dict, split: str):
        self.stage, self.d, self.hp, self.split = stage, data, hp, split
        seed = hp["seed"] + (0 if split == "train" else 1000)
        if stage in ("pretrain", "warmup"):
            stream = data.a["pt_train" if split == "train" else "pt_heldout"]
            self.window = lm_windows(stream, hp["seq_len"], seed)
        else:
            qs = data.train_q if split == "train" else data.heldout_q
            if len(qs) == 0:
                raise ValueError(f"no {split} questions")
            self.qs = qs
            self.order = EpochOrder(len(qs), seed)
            self.seed = seed

    def get(self, step: int, B: int):
        ks = range(step * B, (step + 1) * B)
        if self.stage == "pretrain":
            w = torch.from_numpy(np.stack([self.window(k) for k in ks]))
            return dict(ids=w[:, :-1], labels=w[:, 1:])
        if self.stage == "warmup":
            # CEPE's "duplicate" warmup: the encoder reads the decoder's own input, cut into
            # n_chunks chunks, so cross-attention first learns the easy job of copying.
            w = torch.from_numpy(np.stack([self.window(k) for k in ks]))
            ids = w[:, :-1]
            n = self.hp["n_chunks"]
            chunks = ids.reshape(B, n, -1)
            return dict(ids=ids, labels=w[:, 1:], chunks=chunks,
                        chunk_mask=torch.ones_like(chunks, dtype=torch.bool))
        return self._qa(ks)

    def _qa(self, ks):
        hp, d = self.hp, self.d
        ids_l, lab_l, ctx = [], [], []
        for k in ks:
            qi = int(self.qs[self.order.item(k)])
            rng = np.random.default_rng([self.seed, k, 7])
            # Training sees every context size in [min_ctx, max_ctx] so that 10 and 20 are both
            # familiar; evaluation batches use the 10-passage setting.
            n_ctx = (int(rng.integers(hp["min_ctx"], hp["max_ctx"] + 1)) if self.split == "train"
                     else 10)
            gold = int(d.a["q_gold"][qi])
            dis = [int(x) for x in d.a["q_distractors"][qi][:n_ctx - 1]]
            pids = [gold] + dis
            rng.shuffle(pids)  # order is invisible to cross-attention; shuffled all the same
            ctx.append([d.passage(p, hp["chunk_len"]) for p in pids])
            p, t = d.question(qi)
            seq = np.concatenate([[BOS_ID], p, t]).astype(np.int64)
            lab = np.full(len(seq), IGNORE, dtype=np.int64)
            lab[len(p):len(seq) - 1] = seq[len(p) + 1:]  # predict the target tokens only
            ids_l.append(seq[:-1])
            lab_l.append(lab[:-1])
        T = max(len(x) for x in ids_l)
        ids = torch.zeros(len(ids_l), T, dtype=torch.long)
        labels = torch.full((len(ids_l), T), IGNORE, dtype=torch.long)
        for b, (x, y) in enumerate(zip(ids_l, lab_l)):
            ids[b, :len(x)] = torch.from_numpy(x)
            labels[b, :len(y)] = torch.from_numpy(y)
        chunks, mask = pad_chunks(ctx)
        return dict(ids=ids, labels=labels, chunks=chunks, chunk_mask=mask)


# --------------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------------

def build_model(args, hp, data: Data) -> CepeLM:
    vocab = _vocab_from_tokenizer(data)
    if args.stage == "pretrain":
        cfg = stack_dict(vocab, args.dec_hidden, args.dec_layers, args.dec_heads, args.dec_kv_heads,
                         args.dec_ffn, args.max_pos)
        model = CepeLM(cfg)
        model.init_weights(hp["seed"])
        return model
    if not args.init:
        sys.exit(f"error: stage {args.stage} needs --init (the previous stage's final/ directory)")
    if args.stage == "qa":
        model = CepeLM.from_pretrained(args.init)
        if not model.is_cepe:
            sys.exit(f"error: --init {args.init} is not a CEPE model (run the warmup stage first)")
        return model
    # warmup: the pretrained decoder + a new encoder and cross-attention.
    with open(os.path.join(args.init, "config.json")) as f:
        dec = json.load(f)
    if dec.get("do_cross_attention"):
        sys.exit(f"error: --init {args.init} already has an encoder (give the pretrain output)")
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "max_position_embeddings", "rms_norm_eps",
            "rope_theta")
    cfg = {k: dec[k] for k in keys}
    cfg.update(rope_scaling=None, hidden_act="silu", do_cross_attention=True,
               num_cross_attn_layers=args.cross_layers or cfg["num_hidden_layers"],
               encoder_config=stack_dict(
                   cfg["vocab_size"], args.enc_hidden or cfg["hidden_size"], args.enc_layers,
                   args.enc_heads or cfg["num_attention_heads"],
                   args.enc_kv_heads or args.enc_heads or cfg["num_key_value_heads"],
                   args.enc_ffn or cfg["intermediate_size"], args.enc_max_pos,
                   eps=cfg["rms_norm_eps"], theta=cfg["rope_theta"]))
    model = CepeLM(cfg)
    model.init_weights(hp["seed"])
    weights = ref.load_weights(args.init)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) & set(model.decoder_param_names()):
        sys.exit(f"error: {args.init} does not match the decoder: missing "
                 f"{sorted(set(missing) & set(model.decoder_param_names()))[:3]}, "
                 f"unexpected {unexpected[:3]}")
    if args.enc_init == "copy":
        model.init_encoder_from_decoder()
    model.init_cross_attention(hp["seed"] + 1)
    return model


def _vocab_from_tokenizer(data: Data) -> int:
    with open(os.path.join(data.work, "meta.json")) as f:
        return int(json.load(f)["tokenizer_vocab"])


def trainable(model: CepeLM, stage: str):
    """Pretrain trains everything; the CEPE stages freeze the decoder (the paper's recipe)."""
    frozen = set(model.decoder_param_names()) if stage != "pretrain" else set()
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def make_optimizer(params, hp, device):
    decay = [p for n, p in params if p.ndim >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embed_tokens" not in n)]
    groups = [{"params": decay, "weight_decay": hp["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=hp["lr"], betas=(0.9, 0.95), eps=1e-8)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (TypeError, RuntimeError):
            pass
    return torch.optim.AdamW(groups, **kw)


def lr_at(step: int, hp) -> float:
    """Linear warmup, then cosine down to min_lr_ratio * lr at the last step."""
    if step < hp["warmup"]:
        return hp["lr"] * (step + 1) / hp["warmup"]
    span = max(1, hp["steps"] - hp["warmup"])
    t = min(1.0, (step - hp["warmup"]) / span)
    return hp["lr"] * (hp["min_lr_ratio"] + (1 - hp["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * t)))


def loss_of(model, batch, device, amp, dropout):
    ids = batch["ids"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    chunks = batch.get("chunks")
    mask = batch.get("chunk_mask")
    if chunks is not None:
        chunks, mask = chunks.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    with amp():
        logits = model(ids, chunks, mask, dropout=dropout)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE)
    return loss, int((labels != IGNORE).sum())


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

def save_checkpoint(path, model, opt, stage, step, hp, args, data, elapsed):
    state = {
        "version": 1, "stage": stage, "step": step, "hp": hp, "config": model.config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(), "tokenizer": data.tokenizer,
        "init": args.init, "elapsed": elapsed,
    }
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def trim_log(path, step):
    """After a resume, drop log lines past the checkpoint (they will be redone)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(lines)


# --------------------------------------------------------------------------------------------------
# Main loop
# --------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=sorted(DEFAULTS))
    ap.add_argument("--work", required=True, help="data.py's output (data.npz, tokenizer.model)")
    ap.add_argument("--run", help="output directory (default WORK/runs/STAGE)")
    ap.add_argument("--init", help="previous stage's final/ directory (warmup, qa)")
    for k in ("steps", "batch_size", "seq_len", "warmup"):
        ap.add_argument("--" + k.replace("_", "-"), type=int)
    for k in ("lr", "weight_decay", "dropout"):
        ap.add_argument("--" + k.replace("_", "-"), type=float)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--no-amp", action="store_true", help="fp32 on cuda (bf16 autocast otherwise)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (torch >= 2)")
    ap.add_argument("--resume", action="store_true", help="continue from RUN/ckpt.pt if present")
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=0, help="held-out loss every N steps")
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=0,
                    help="seconds: checkpoint and exit 75 before running past this")
    ap.add_argument("--stop-at", type=int, default=0, help="checkpoint and exit 75 at this step")
    ap.add_argument("--export-dtype", choices=sorted(export.DTYPES), default="f16")
    ap.add_argument("--max-shard-mb", type=float, default=15)
    # Sizes (pretrain: decoder; warmup: encoder and cross-attention).
    ap.add_argument("--dec-layers", type=int, default=6)
    ap.add_argument("--dec-hidden", type=int, default=384)
    ap.add_argument("--dec-heads", type=int, default=6)
    ap.add_argument("--dec-kv-heads", type=int, default=2)
    ap.add_argument("--dec-ffn", type=int, default=1024)
    ap.add_argument("--max-pos", type=int, default=1024)
    ap.add_argument("--enc-layers", type=int, default=4)
    # Encoder sizes: 0 = the decoder's (needed by --enc-init copy).
    ap.add_argument("--enc-hidden", type=int, default=0)
    ap.add_argument("--enc-heads", type=int, default=0)
    ap.add_argument("--enc-kv-heads", type=int, default=0)
    ap.add_argument("--enc-ffn", type=int, default=0)
    ap.add_argument("--enc-max-pos", type=int, default=256)
    ap.add_argument("--enc-init", choices=("copy", "random"), default="copy",
                    help="warmup: encoder from the decoder's first layers, or random")
    ap.add_argument("--cross-layers", type=int, default=0, help="0: every decoder layer")
    ap.add_argument("--n-chunks", type=int, default=4, help="warmup: encoder chunks per window")
    ap.add_argument("--min-ctx", type=int, default=5, help="qa: fewest passages per question")
    ap.add_argument("--max-ctx", type=int, default=20, help="qa: most passages per question")
    ap.add_argument("--chunk-len", type=int, default=256, help="qa: passage tokens per chunk")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = args.run or os.path.join(args.work, "runs", args.stage)
    os.makedirs(run, exist_ok=True)
    ckpt_path = os.path.join(run, "ckpt.pt")
    log_path = os.path.join(run, "log.jsonl")

    hp = dict(DEFAULTS[args.stage])
    for k in RUN_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            hp[k] = v
    data = Data(args.work)

    ck = None
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location="cpu")
        if ck["stage"] != args.stage:
            sys.exit(f"error: {ckpt_path} is a {ck['stage']} checkpoint, not {args.stage}")
        changed = {k: (hp.get(k), ck["hp"].get(k)) for k in RUN_KEYS if hp.get(k) != ck["hp"].get(k)}
        if changed:
            print(f"resume: keeping the checkpoint's values for {changed}", file=sys.stderr)
        hp = ck["hp"]
        model = CepeLM(ck["config"])
        model.load_state_dict(ck["model"])
        start = ck["step"]
        elapsed0 = ck.get("elapsed", 0.0)
        trim_log(log_path, start)
        print(f"resume: {args.stage} from step {start} of {hp['steps']}", flush=True)
    else:
        torch.manual_seed(hp["seed"])
        model = build_model(args, hp, data)
        start, elapsed0 = 0, 0.0
        if os.path.exists(log_path):
            os.remove(log_path)
    if args.stage == "warmup" and hp["seq_len"] % hp["n_chunks"]:
        sys.exit("error: --seq-len must be a multiple of --n-chunks")

    params = trainable(model, args.stage)
    model.to(device)
    opt = make_optimizer(params, hp, device)
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
        del ck
    n_train = sum(p.numel() for _, p in params)
    n_all = sum(p.numel() for p in model.parameters())
    print(f"{args.stage}: {n_all / 1e6:.2f}M parameters, {n_train / 1e6:.2f}M trained, "
          f"device {device}, steps {start}..{hp['steps']}, batch {hp['batch_size']}", flush=True)

    use_amp = device.type == "cuda" and not args.no_amp
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else \
        (lambda: torch.autocast("cpu", enabled=False))
    fwd = model
    if args.compile and hasattr(torch, "compile"):
        fwd = torch.compile(model)

    train_b = Batcher(args.stage, data, hp, "train")
    eval_b = Batcher(args.stage, data, hp, "heldout") if args.eval_every else None

    def evaluate():
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for i in range(args.eval_batches):
                loss, cnt = loss_of(fwd, eval_b.get(i, hp["batch_size"]), device, amp, 0.0)
                tot += float(loss) * cnt
                n += cnt
        model.train()
        return tot / max(1, n)

    model.train()
    t_start = time.time()
    t_last, acc, acc_n, acc_tok, gains = time.time(), 0.0, 0, 0, []
    step_times = []
    status = "done"
    step = start
    with open(log_path, "a") as log:
        while step < hp["steps"]:
            t0 = time.time()
            for g in opt.param_groups:
                g["lr"] = lr_at(step, hp)
            batch = train_b.get(step, hp["batch_size"])
            loss, ntok = loss_of(fwd, batch, device, amp, hp["dropout"])
            if args.stage != "pretrain" and (step + 1) % args.log_every == 0:
                # What the passages are worth: the same batch's loss with the encoder left out
                # (the frozen decoder alone). Zero at the start of warmup, since cross-attention
                # starts as a no-op; a noise-free measure of progress, unlike the loss itself.
                with torch.no_grad():
                    plain = dict(ids=batch["ids"], labels=batch["labels"])
                    gains.append(float(loss_of(fwd, plain, device, amp, 0.0)[0]) - float(loss))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp["grad_clip"]:
                torch.nn.utils.clip_grad_norm_([p for _, p in params], hp["grad_clip"])
            opt.step()
            step += 1
            acc += float(loss)
            acc_n += 1
            acc_tok += ntok
            step_times.append(time.time() - t0)
            if step % args.log_every == 0 or step == hp["steps"]:
                dt = time.time() - t_last
                rec = {"step": step, "loss": round(acc / acc_n, 5), "lr": lr_at(step - 1, hp),
                       "sec_per_step": round(dt / acc_n, 4),
                       "target_tokens_per_sec": round(acc_tok / dt, 1)}
                if gains:
                    rec["context_gain"] = round(sum(gains) / len(gains), 5)
                if eval_b is not None and (step % args.eval_every == 0 or step == hp["steps"]):
                    rec["heldout_loss"] = round(evaluate(), 5)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
                t_last, acc, acc_n, acc_tok, gains = time.time(), 0.0, 0, 0, []
            elapsed = elapsed0 + time.time() - t_start
            if step == hp["steps"]:
                break
            if step % args.ckpt_every == 0:
                save_checkpoint(ckpt_path, model, opt, args.stage, step, hp, args, data, elapsed)
            # Stop while a checkpoint still fits in the budget (last step's time + margin).
            over_time = args.time_limit and (time.time() - t_start) + 3 * max(step_times[-5:]) + 30 \
                > args.time_limit
            if (args.stop_at and step >= args.stop_at) or over_time:
                status = "incomplete"
                break

    elapsed = elapsed0 + time.time() - t_start
    save_checkpoint(ckpt_path, model, opt, args.stage, step, hp, args, data, elapsed)
    if status == "done":
        info = {"stage": args.stage, "steps": step, "hp": hp, "train_seconds": round(elapsed, 1),
                "init": args.init, "device": str(device),
                "torch": torch.__version__}
        final = export.export_model(model.config, model.state_dict(), data.tokenizer,
                                    os.path.join(run, "final"), args.export_dtype,
                                    args.max_shard_mb, info)
        print(f"STATUS: done, {args.stage} {step}/{hp['steps']} steps in {elapsed:.0f} s; "
              f"model in {final}", flush=True)
        return 0
    print(f"STATUS: incomplete, {args.stage} stopped at step {step}/{hp['steps']} "
          f"({elapsed:.0f} s so far); run the same command with --resume", flush=True)
    return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
