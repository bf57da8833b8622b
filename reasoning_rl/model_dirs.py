"""Model directories a config names, checked before anything runs.

``model.path``, a distill stage's ``student_model.path``, a Hugging Face tokenizer directory and stage
references (``init``, ``sampler``, ``teacher``) that are Hugging Face directories are all checked from their
headers (``reasoning_rl.models.hf.check_model_dir``): a missing directory, an unreadable or unsupported
config.json, a missing tokenizer, or safetensors files that are truncated, corrupt or do not match config.json
stop the command with one line naming the file, before a run dir is written or anything is compiled.
"""

from __future__ import annotations

from pathlib import Path

from reasoning_rl.config import Config
from reasoning_rl.models.safetensors_io import ModelDirError

__all__ = ["ModelDirError", "check_model_dirs", "check_path"]


def check_path(path: str | Path, key: str, *, weights: bool | None = True, tokenizer: bool = True):
    """``check_model_dir`` with the config key appended to the error; returns the TransformerConfig."""
    from reasoning_rl.models.hf import check_model_dir

    try:
        return check_model_dir(path, weights=weights, tokenizer=tokenizer)
    except ModelDirError as e:
        raise type(e)(f"{e} ({key})") from None


def check_model_dirs(cfg: Config, *, weights: bool | None = True) -> None:
    """Every model directory ``cfg`` reads. ``weights``: also their safetensors (False when the parameters
    come from a run's own checkpoints, as for ``eval`` and ``export`` of a run)."""
    from reasoning_rl.models.hf_tokenizer import check_tokenizer_dir

    tc = cfg.tokenizer
    if cfg.model.path:
        check_path(cfg.model.path, "model.path", weights=weights, tokenizer=tc.path is None)
    if tc.path is not None and tc.kind == "hf":
        try:
            check_tokenizer_dir(tc.path)
        except ModelDirError as e:
            raise ModelDirError(f"{e} (tokenizer.path)") from None
    names = [s.name for s in cfg.stages]
    for i, st in enumerate(cfg.stages):
        if st.student_model is not None and st.student_model.path:
            check_path(st.student_model.path, f"stages[{i}].student_model.path", weights=weights, tokenizer=False)
        for attr in ("init", "sampler", "teacher"):
            ref = getattr(st, attr)
            if ref is None or ref in names[:i]:
                continue
            p = Path(ref)
            if p.is_dir() and (p / "config.json").is_file() and not (p / "manifest.json").is_file():
                check_path(p, f"stages[{i}].{attr}", weights=True, tokenizer=False)
