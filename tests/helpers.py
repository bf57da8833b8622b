"""Tiny models and batches shared by tests."""

import numpy as np

from reasoning_rl.models import TransformerConfig, create


def tiny_model(seed=0, vocab=40, **kw):
    cfg = TransformerConfig(**{"vocab_size": vocab, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                               "head_dim": 8, "ffn_dim": 64, **kw})
    return create(cfg, seed)


def prompts(n, lo=3, hi=9, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(4, vocab, size=int(rng.integers(lo, hi)))) for _ in range(n)]
