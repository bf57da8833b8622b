#!/usr/bin/env python
"""Attention kernels against the XLA path at Qwen2.5-1.5B's attention shape (12 query heads, 2 KV heads,
head dim 128), bf16, random inputs: per path the largest difference from XLA and both times (training:
forward and forward+backward of attention alone; decode: bytes of KV cache read per second). Prints one
JSON line (``models/layers/kernels.py: self_check``) and the route of every attention kind.

Usage: python tools/bench_attention_kernels.py [--quick] (``--quick``: a tiny shape, runs anywhere; on a
CPU the kernels run emulated, which checks the call sites, not their speed).
"""

from __future__ import annotations

import argparse
import json

import jax

from reasoning_rl.models import TransformerConfig
from reasoning_rl.models.layers import kernels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--impl", default="auto", choices=kernels.IMPLS)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--decode-batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--decode-len", type=int, default=2048)
    args = ap.parse_args()
    cfg = TransformerConfig(vocab_size=151936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                            ffn_dim=8960, qkv_bias=True, dtype="bfloat16", param_dtype="bfloat16",
                            attention_impl=args.impl)
    out = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "jax": jax.__version__}
    if args.quick:
        cfg = TransformerConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16,
                                ffn_dim=64, dtype="bfloat16", attention_impl=args.impl)
        out["checks"] = [kernels.self_check(cfg, batch=2, seq=16, decode_batch=2, decode_len=40, reps=1)]
    else:
        out["checks"] = [kernels.self_check(cfg, batch=args.batch, seq=args.seq, decode_batch=b,
                                            decode_len=args.decode_len,
                                            paths=("train", "prefix", "decode") if i == 0 else ("decode",))
                         for i, b in enumerate(args.decode_batch)]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
