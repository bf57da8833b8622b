"""Tiny models and batches shared by tests."""

import os

import numpy as np

from reasoning_rl.models import TransformerConfig, create


def tiny_model(seed=0, vocab=40, **kw):
    cfg = TransformerConfig(**{"vocab_size": vocab, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                               "head_dim": 8, "ffn_dim": 64, **kw})
    return create(cfg, seed)


def prompts(n, lo=3, hi=9, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(4, vocab, size=int(rng.integers(lo, hi)))) for _ in range(n)]


# XLA flag for test subprocesses whose runs are compared only with runs made under the same flag (one device
# against a mesh, one host against two): LLVM's optimisation passes are most of a tiny model's compile time
# (a tiny R1 pipeline on 4 devices: 41 s -> 31 s) and change nothing about what a sharding computes.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def compared_env(n_devices: int | None = None, base: dict | None = None, **extra: str) -> dict:
    """Environment of a CPU test subprocess whose results are compared with another run made under it:
    ``n_devices`` host devices (None: the child picks), ``FAST_COMPILE``, no persistent compile cache
    (each run compiles what it runs)."""
    devices = f"--xla_force_host_platform_device_count={n_devices} " if n_devices else ""
    return {**(os.environ if base is None else base), "JAX_PLATFORMS": "cpu",
            "REASONING_RL_COMPILE_CACHE": "off", "XLA_FLAGS": devices + FAST_COMPILE, **extra}

