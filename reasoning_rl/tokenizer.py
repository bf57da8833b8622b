"""Tokenizers: a SentencePiece model trained on the task corpus on first use, or a Hugging Face tokenizer.

The reasoning tags ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` are single pieces, so the format
reward and the sampler's stop on ``</answer>`` work on token ids, and digits are split one per piece, which
keeps arithmetic learnable for small models.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Protocol

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_id(self, piece: str) -> int | None: ...


class SentencePieceTokenizer:
    def __init__(self, model_path: str | Path):
        import sentencepiece as spm

        self.path = str(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = int(self.sp.get_piece_size())
        self.pad_id = int(self.sp.pad_id())
        self.eos_id = int(self.sp.eos_id())
        self.bos_id = int(self.sp.bos_id())

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        keep = [int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id, self.bos_id)]
        return self.sp.decode(keep)

    def token_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else int(i)


def train_sentencepiece(lines: Iterable[str], out_path: str | Path, vocab_size: int) -> SentencePieceTokenizer:
    """Train a small BPE model on ``lines`` and write it to ``out_path`` (``.model``), atomically."""
    import sentencepiece as spm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        user_defined_symbols=list(TAGS),
        split_digits=True,
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        num_threads=1,
        minloglevel=2,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
    )
    tmp = out_path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, out_path)
    return SentencePieceTokenizer(out_path)


def load_tokenizer(kind: str, path: str | Path) -> Tokenizer:
    if kind == "sentencepiece":
        if not Path(path).is_file():
            from reasoning_rl.config import ConfigError

            raise ConfigError(f"tokenizer.path: no sentencepiece model at {path}")
        return SentencePieceTokenizer(path)
    if kind == "hf":
        from reasoning_rl.models.hf_tokenizer import load_tokenizer as load_hf

        return load_hf(path)
    raise ValueError(f"tokenizer.kind: unknown kind {kind!r}")
