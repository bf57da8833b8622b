"""tiktoken vocabularies (Kimi K2's ``tiktoken.model``) read as a ``tokenizers`` tokenizer, without tiktoken.

Checkpoints such as Kimi K2, K2-Thinking, K2.5 and Kimi Linear ship no ``tokenizer.json``: their vocabulary is a
tiktoken rank file (one ``<base64 bytes> <rank>`` line per token) and the splitting pattern lives in the
repository's Python tokenizer class (``pat_str`` in ``tokenization_kimi.py``), which transformers runs only with
``trust_remote_code``. We run no repository code: the pattern is read from that file's syntax tree (a string
literal, ``"|".join([...literals...])`` or a sum of literals; anything else is refused), and the same tokenizer is
built from data:

- the byte-level BPE tiktoken runs: each token's bytes spelled in GPT-2's byte-to-character alphabet, the merges
  every pair of tokens whose concatenation is a token, ordered by that token's rank (tiktoken merges the adjacent
  pair whose concatenation ranks lowest), and a piece that is itself a token taken whole (``ignore_merges``, as
  tiktoken does);
- the pattern as a ``Split`` pre-tokenizer keeping its matches only, as tiktoken encodes only what matches
  (Oniguruma reads the class intersections ``[...&&[^\\p{Han}]]`` Kimi's pattern uses), then the byte-level
  alphabet;
- the special tokens at the ids the class gives them: the names in ``tokenizer_config.json``'s
  ``added_tokens_decoder`` and ``<|reserved_token_{id}|>`` for the rest of the class's reserved range
  (``num_reserved_special_tokens`` after the base vocabulary).

Tested token for token against tiktoken itself. Not reproduced: the Kimi class's cut of inputs longer than 400k
characters, or of runs of over 25k whitespace / non-whitespace characters, into separately encoded pieces.
"""

from __future__ import annotations

import ast
import base64
import binascii
import functools
import json
from pathlib import Path
from typing import Any

from .safetensors_io import ModelDirError

FILE = "tiktoken.model"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (byte-level BPE vocabularies are spelled in it)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """{token bytes: rank} of a tiktoken rank file; every problem is one ModelDirError naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as e:
        raise ModelDirError(f"{path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ModelDirError(f"{path}: not a tiktoken rank file (non-ASCII bytes; expected '<base64> <rank>' lines)"
                            ) from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            tok, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error):
            raise ModelDirError(f"{path}: line {n}: expected '<base64 token> <rank>', got {line[:60]!r}") from None
        if tok in ranks:
            raise ModelDirError(f"{path}: line {n}: token {tok!r} listed twice (ranks {ranks[tok]} and {rank})")
        ranks[tok] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ModelDirError(f"{path}: ranks are not 0..{len(ranks) - 1}, each once")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ModelDirError(f"{path}: {len(missing)} of the 256 single bytes have no token (first 0x{missing[0]:02x}): "
                            "not every text could be encoded")
    return ranks


def _literal(node: ast.AST, names: dict[str, Any]) -> Any:
    """A string (or int) built from literals only: constants, ``+``, ``"sep".join([...])``, names bound so."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal(node.left, names) + _literal(node.right, names)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], (ast.List, ast.Tuple))):
        parts = [_literal(e, names) for e in node.args[0].elts]
        if not all(isinstance(p, str) for p in parts):
            raise ValueError("a join of non-strings")
        return node.func.value.value.join(parts)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    raise ValueError(f"not a literal: {ast.unparse(node)[:80]}")


def _assigned(body: list[ast.stmt], names: dict[str, Any]) -> dict[str, Any]:
    """Names a block binds to literals (``x = ...`` / ``x: T = ...``); others are skipped."""
    out = dict(names)
    for st in body:
        target = value = None
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            target, value = st.targets[0].id, st.value
        elif isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and st.value is not None:
            target, value = st.target.id, st.value
        if target is not None:
            try:
                out[target] = _literal(value, out)
            except ValueError:
                out.pop(target, None)
    return out


def tokenizer_class(directory: Path, config: dict) -> tuple[Path, str]:
    """(Python file, class name) of the tokenizer ``tokenizer_config.json``'s ``auto_map`` names."""
    where = directory / "tokenizer_config.json"
    auto = (config.get("auto_map") or {}).get("AutoTokenizer")
    ref = auto[0] if isinstance(auto, list) and auto else auto
    if not isinstance(ref, str) or "." not in ref:
        raise ModelDirError(f"{where}: a {FILE} needs its splitting pattern, from the tokenizer class "
                            "auto_map.AutoTokenizer names, and it names none")
    module, cls = ref.split("--")[-1].rsplit(".", 1)
    file = directory / (module.replace(".", "/") + ".py")
    if not file.is_file():
        raise ModelDirError(f"{file}: not found (auto_map.AutoTokenizer names {ref}, whose pat_str splits text "
                            f"for {FILE})")
    return file, cls


def class_constants(file: Path, cls: str) -> dict[str, Any]:
    """The literal constants of class ``cls`` in ``file`` (and the module's), read from its syntax tree: the file
    is never imported or run."""
    try:
        tree = ast.parse(file.read_text(), filename=str(file))
    except (OSError, UnicodeDecodeError, SyntaxError) as e:
        raise ModelDirError(f"{file}: cannot be parsed ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                            ) from None
    names = _assigned(tree.body, {})
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if body is None:
        raise ModelDirError(f"{file}: no class {cls} (auto_map.AutoTokenizer)")
    return _assigned(body, names)


def special_tokens(config: dict, n_base: int, reserved: int, where: Path) -> list[dict]:
    """Added tokens as ``tokenizers`` lists them: the config's names at their ids, placeholders for the rest of
    the reserved range."""
    named: dict[int, dict] = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        try:
            i = int(key)
        except ValueError:
            raise ModelDirError(f"{where}: added_tokens_decoder key {key!r} is not a token id") from None
        content = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(content, str) or not content:
            raise ModelDirError(f"{where}: added_tokens_decoder[{key}] has no content")
        if i < n_base:
            raise ModelDirError(f"{where}: added_tokens_decoder[{key}] ({content!r}) takes the id of a {FILE} token "
                                f"(the base vocabulary is ids 0..{n_base - 1})")
        named[i] = entry
    out = []
    for i in sorted(set(range(n_base, n_base + reserved)) | set(named)):
        e = named.get(i, {})
        out.append({"id": i, "content": e.get("content", f"<|reserved_token_{i}|>"),
                    "single_word": bool(e.get("single_word", False)), "lstrip": bool(e.get("lstrip", False)),
                    "rstrip": bool(e.get("rstrip", False)), "normalized": bool(e.get("normalized", False)),
                    "special": bool(e.get("special", True))})
    return out


def tokenizer_json(ranks: dict[bytes, int], pattern: str, added: list[dict]) -> dict:
    """The ``tokenizer.json`` content of a tiktoken vocabulary, pattern and special tokens."""
    alphabet = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    order = sorted(ranks.items(), key=lambda kv: kv[1])
    merges = []
    for tok, _ in order:
        pairs = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend([spell(a), spell(b)] for a, b in pairs)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            # the pattern's matches kept, the text between them dropped: tiktoken encodes only what matches
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Removed", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {spell(t): r for t, r in order}, "merges": merges},
    }


def load(directory: str | Path, config: dict):
    """A ``tokenizers.Tokenizer`` for a directory whose tokenizer is ``tiktoken.model`` plus a Python class.

    Built once per process for the same files (a run loads its tokenizer several times; building Kimi K2's
    164k-token vocabulary takes seconds)."""
    directory = Path(directory).resolve()
    file, _ = tokenizer_class(directory, config)
    stamp = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in (directory / FILE, file))
    keys = {k: config.get(k) for k in ("auto_map", "added_tokens_decoder")}
    return _build(directory, stamp, json.dumps(keys, sort_keys=True, default=str))


@functools.lru_cache(maxsize=4)
def _build(directory: Path, stamp: tuple, keys: str):
    from tokenizers import Regex, Tokenizer

    del stamp  # (part of the cache key only)
    config = json.loads(keys)
    ranks = read_ranks(directory / FILE)
    file, cls = tokenizer_class(directory, config)
    consts = class_constants(file, cls)
    pattern = consts.get("pat_str")
    if not isinstance(pattern, str):
        raise ModelDirError(f"{file}: {cls}.pat_str is not a string built from literals (it is read, never run)")
    try:
        Regex(pattern)
    except Exception as e:  # noqa: BLE001 - the Rust library's own error type
        raise ModelDirError(f"{file}: {cls}.pat_str does not compile ({str(e).splitlines()[0][:160]})") from None
    reserved = consts.get("num_reserved_special_tokens", 0)
    if not isinstance(reserved, int) or isinstance(reserved, bool) or reserved < 0:
        raise ModelDirError(f"{file}: {cls}.num_reserved_special_tokens is not a count: {reserved!r}")
    added = special_tokens(config, len(ranks), reserved, directory / "tokenizer_config.json")
    return Tokenizer.from_str(json.dumps(tokenizer_json(ranks, pattern, added)))


def source_files(directory: str | Path) -> list[str]:
    """Files a copy of the tokenizer needs besides the configs: the rank file and the class's Python file (none
    without a rank file; the rank file alone when the class cannot be found: loading the copy then says why)."""
    directory = Path(directory)
    if not (directory / FILE).is_file():
        return []
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text())
        file, _ = tokenizer_class(directory, config if isinstance(config, dict) else {})
    except (OSError, ValueError, ModelDirError):
        return [FILE]
    return [FILE, str(file.relative_to(directory))]


__all__ = ["FILE", "bytes_to_unicode", "load", "read_ranks", "source_files", "tokenizer_json"]
