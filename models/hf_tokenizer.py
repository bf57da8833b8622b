"""Tokenizers shipped with Hugging Face checkpoints, without transformers at run time.

``tokenizer.json`` goes through the ``tokenizers`` library (the same Rust code transformers' fast
tokenizers use); a checkpoint with only a sentencepiece ``tokenizer.model`` goes through ``sentencepiece``; one with
only a tiktoken ``tiktoken.model`` (Kimi K2) is built as the same ``tokenizers`` BPE (``models.tiktoken_bpe``).
The chat template (``tokenizer_config.json``, ``chat_template.jinja`` or ``chat_template.json``) is rendered
the way transformers renders it: a sandboxed jinja2 environment with ``trim_blocks``/``lstrip_blocks``,
loop controls, ``raise_exception``, ``strftime_now`` and a non-escaping ``tojson``, with the special tokens
(``bos_token``, ``eos_token``, ...) in scope. jinja2 is only imported when a template is applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from . import tiktoken_bpe
from .safetensors_io import ModelDirError

SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _content(tok) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else f"not valid JSON: {e}"
        raise ModelDirError(f"{path}: cannot be read ({why})") from None
    if not isinstance(out, dict):
        raise ModelDirError(f"{path}: expected a JSON object, got {type(out).__name__}")
    return out


class HFTokenizer:
    """``encode``/``decode``/``apply_chat_template`` plus the ids a trainer needs (eos, pad, stop ids).

    ``encode`` does not add special tokens by default: prompts normally come from the chat template, which
    already writes the BOS token, and adding it again would double it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg = {**_read_json(self.path / "special_tokens_map.json"), **_read_json(self.path / "tokenizer_config.json")}
        self.config = cfg
        if not self.path.is_dir():
            raise ModelDirError(f"{self.path}: no such tokenizer directory")
        if (self.path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            file = self.path / "tokenizer.json"
            try:
                self._tok = Tokenizer.from_file(str(file))
            except Exception as e:  # noqa: BLE001 - the Rust library's own error type
                raise ModelDirError(f"{file}: not a readable tokenizer ({str(e).splitlines()[0][:200]})") from None
            self._sp = None
        elif (self.path / "tokenizer.model").is_file():
            import sentencepiece as spm

            file = self.path / "tokenizer.model"
            try:
                self._sp = spm.SentencePieceProcessor(model_file=str(file))
            except (OSError, RuntimeError) as e:
                raise ModelDirError(f"{file}: not a readable sentencepiece model ({str(e).splitlines()[0][:200]})"
                                    ) from None
            self._tok = None
        elif (self.path / tiktoken_bpe.FILE).is_file():  # Kimi K2's: ranks plus a pattern read from its Python class
            self._tok = tiktoken_bpe.load(self.path, cfg)
            self._sp = None
        else:
            raise ModelDirError(f"{self.path}: no tokenizer (tokenizer.json, tokenizer.model or tiktoken.model); set "
                                "tokenizer.path to a directory that has one")
        self.special_tokens = {k: _content(cfg[k]) for k in SPECIAL if _content(cfg.get(k)) is not None}
        extra = cfg.get("additional_special_tokens") or cfg.get("extra_special_tokens")
        if isinstance(extra, list):
            self.special_tokens["additional_special_tokens"] = [_content(t) for t in extra]
        self.bos_id = self._special_id("bos_token")
        self.eos_id = self._special_id("eos_token")
        if self.eos_id is None and self._sp is not None and self._sp.eos_id() >= 0:
            self.eos_id = int(self._sp.eos_id())
        pad = self._special_id("pad_token")
        if pad is None and self._sp is not None and self._sp.pad_id() >= 0:
            pad = int(self._sp.pad_id())
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        gen = _read_json(self.path / "generation_config.json").get("eos_token_id")
        gen_ids = gen if isinstance(gen, list) else ([] if gen is None else [gen])
        self.stop_ids = tuple(dict.fromkeys(([self.eos_id] if self.eos_id is not None else []) + gen_ids))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True) if self._tok else self._sp.get_piece_size()

    # ------------------------------------------------------------------ ids

    def _special_id(self, key: str) -> int | None:
        tok = self.special_tokens.get(key)
        return None if tok is None else self.token_id(tok)

    def token_id(self, piece: str) -> int | None:
        """The id of one token (e.g. ``"</answer>"``), or None if it is not a single token."""
        if self._tok is not None:
            i = self._tok.token_to_id(piece)
            return None if i is None else int(i)
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else int(i)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self._tok is not None:
            return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = list(self._sp.encode(text))
        add_bos = self.config.get("add_bos_token", True)
        return ([self.bos_id] if add_special_tokens and add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if self._tok is not None:
            return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            drop = {self.bos_id, self.eos_id, self.pad_id}
            ids = [i for i in ids if i not in drop and not self._sp.is_control(i)]
        return self._sp.decode(ids)

    # ------------------------------------------------------------------ chat template

    @cached_property
    def chat_template(self) -> str | None:
        tpl = self.config.get("chat_template")
        if tpl is None and (self.path / "chat_template.jinja").is_file():
            tpl = (self.path / "chat_template.jinja").read_text()
        if tpl is None:
            tpl = _read_json(self.path / "chat_template.json").get("chat_template")
        if isinstance(tpl, list):  # named templates: the default one
            named = {t["name"]: t["template"] for t in tpl}
            tpl = named.get("default", next(iter(named.values()), None))
        return tpl

    @cached_property
    def _compiled(self):
        if self.chat_template is None:
            raise ValueError(f"{self.path}: the tokenizer has no chat template")
        return _compile(self.chat_template)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs) -> str:
        """The prompt string transformers' ``apply_chat_template(..., tokenize=False)`` renders; extra keyword
        arguments (``tools``, ``enable_thinking``, ...) reach the template as they do there."""
        chat = []
        for m in messages:
            m = {k: v for k, v in dict(m).items() if v is not None}
            reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        variables = {**self.special_tokens, **kwargs}
        variables.setdefault("tools", None)
        variables.setdefault("documents", None)
        return self._compiled.render(messages=chat, add_generation_prompt=add_generation_prompt, **variables)


def _compile(template: str):
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # a run-time dependency only for chat templates
        raise ImportError("chat templates need jinja2>=3.1.6 (pip install jinja2)") from e

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for masks; here it renders as is."""

        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def load_tokenizer(hf_dir: str | Path) -> HFTokenizer:
    """The tokenizer of a Hugging Face checkpoint directory."""
    return HFTokenizer(hf_dir)


def check_tokenizer_dir(hf_dir: str | Path) -> HFTokenizer:
    """Load the directory's tokenizer, raising ModelDirError (one line naming the file) when it cannot be."""
    return HFTokenizer(hf_dir)


__all__ = ["HFTokenizer", "check_tokenizer_dir", "load_tokenizer"]
