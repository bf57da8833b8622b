"""Packed vs padded SFT steps on sequences whose lengths vary as reasoning traces do.

W1's model shape (Qwen2-like, d_model 256, 4 layers, 4 heads / 2 KV heads of 64, ffn 704, QKV bias, untied
embeddings, a 512-token vocabulary), random init, the real SFT step (``make_sft_step``, AdamW). Each step takes
``--batch`` sequences: a prompt of 24-64 tokens and a solution whose length is drawn from a log-normal (median
``--median`` tokens, a long tail up to the row length ``--seq-len``), as cold-start and rejection-sampling
traces are. ``padded``: one row per sequence, ``--seq-len`` wide (what an SFT stage without ``pack`` runs: its
row length fits the longest sequence); ``packed``: the same sequences first-fit into as few rows as hold them
(``pack: true``: batch, batch/2, ... rows). Seconds per step are medians over the steps after ``--warmup``
(compiling excluded, every row count compiled before timing); ``loss_gap`` is the largest difference between
the two runs' losses on the same steps from the same init (float sums only).
The last line of stdout is JSON with ``padded.s_per_step``, ``packed.s_per_step`` and ``speedup``.
Usage: python tools/bench_packing.py [--steps 12] [--warmup 2] [--batch 32] [--seq-len 1024] [--median 160]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sequences(rng, n: int, seq_len: int, median: int, vocab: int) -> list[tuple[list[int], list[bool]]]:
    import numpy as np

    out = []
    for _ in range(n):
        p = int(rng.integers(24, 65))
        c = int(min(max(np.exp(rng.normal(np.log(median), 0.8)), 8), seq_len - p))
        ids = [int(x) for x in rng.integers(3, vocab, p + c)]
        out.append((ids, [False] * p + [True] * c))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--median", type=int, default=160)
    args = ap.parse_args()

    import jax
    import numpy as np

    from reasoning_rl.algorithms.steps import init_state, make_optimizer, make_sft_step
    from reasoning_rl.config import OptimizerConfig
    from reasoning_rl.data.batching import pack, packed_sft_batch
    from reasoning_rl.models import TransformerConfig, create

    vocab = 512
    cfg = TransformerConfig(vocab_size=vocab, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64,
                            ffn_dim=704, qkv_bias=True, tie_embeddings=False, max_seq_len=args.seq_len)
    mdef, params = create(cfg, 0)
    ocfg = OptimizerConfig(lr=1e-4)
    tx = make_optimizer(ocfg, args.steps)
    step = jax.jit(make_sft_step(mdef, ocfg, tx), donate_argnums=0)
    fresh = lambda: init_state(jax.tree.map(lambda a: a.copy(), params), tx, 0)  # noqa: E731 (steps donate it)
    rng = np.random.default_rng(0)
    batches = [sequences(rng, args.batch, args.seq_len, args.median, vocab) for _ in range(args.steps)]

    def padded(seqs):
        return packed_sft_batch(seqs, [[i] for i in range(len(seqs))], args.seq_len, len(seqs), 0)

    def packed(seqs):
        layout = pack([len(s) for s, _ in seqs], args.seq_len)
        rows = args.batch
        while rows % 2 == 0 and rows // 2 >= len(layout):
            rows //= 2
        return packed_sft_batch(seqs, layout, args.seq_len, rows, 0)

    out: dict = {"device": jax.devices()[0].device_kind, "batch": args.batch, "seq_len": args.seq_len,
                 "median_solution": args.median, "steps": args.steps}
    losses = {}
    for name, make in (("padded", padded), ("packed", packed)):
        made = [make(s) for s in batches]
        if name == "padded":  # one row per sequence: positions/segments are the padded batch's own
            made = [{k: b[k] for k in ("tokens", "valid", "loss_mask")} for b in made]
        for rows in sorted({b["tokens"].shape[0] for b in made}):  # compile every row count first
            b = next(x for x in made if x["tokens"].shape[0] == rows)
            jax.block_until_ready(step(fresh(), b))
        state, times, ls = fresh(), [], []
        for b in made:
            t0 = time.perf_counter()
            state, m = step(state, b)
            ls.append(float(jax.device_get(m["loss"])))
            times.append(time.perf_counter() - t0)
        rows = [b["tokens"].shape[0] for b in made]
        fill = [float(b["valid"].sum()) / b["valid"].size for b in made]
        losses[name] = ls
        out[name] = {"s_per_step": statistics.median(times[args.warmup:]), "rows_mean": float(np.mean(rows)),
                     "fill_mean": float(np.mean(fill))}
        print(f"{name}: {out[name]}", file=sys.stderr)
    out["speedup"] = out["padded"]["s_per_step"] / out["packed"]["s_per_step"]
    out["loss_gap"] = max(abs(a - b) for a, b in zip(losses["padded"], losses["packed"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
