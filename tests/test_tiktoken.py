"""Kimi K2-style tokenizers: a ``tiktoken.model`` rank file plus the splitting pattern in the repository's Python
class, read without running that code and without tiktoken, token for token as tiktoken encodes."""

from __future__ import annotations

import base64
import collections
import json
import random
import shutil
from pathlib import Path

import pytest
from reasoning_rl.models import TransformerConfig, create, save_pretrained
from reasoning_rl.models.hf_tokenizer import load_tokenizer
from reasoning_rl.models.safetensors_io import ModelDirError
from reasoning_rl.models.tiktoken_bpe import read_ranks, source_files

# tokenization_kimi.py's pat_str, part by part (the released class joins these with "|")
PARTS = [
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
]
PAT = "|".join(PARTS)
RESERVED = 256
NAMED = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", None, "<|start_header_id|>",
         "<|end_header_id|>", None, "[EOT]", "<|im_system|>", None, None, None, None, None, None, "<|im_middle|>"]
CORPUS = ("The quick brown fox jumps over the lazy dog. It's what they'll do; we've said THEY'LL. " * 20
          + "数学是科学的语言。我们学习数学，答案是42。 " * 10 + "Ünïcödé naïve café ÉCOLE Straße " * 10
          + "x = 12345 + 678;\n\n  def f(y):\n    return y ** 2\n" * 10 + "ひらがな カタカナ 한국어 😀 " * 5)
# the released class's shape; the first line shows the loader never runs the file
CLASS_SOURCE = '''raise RuntimeError("repository code must not run")
import tiktoken

from transformers.tokenization_utils import PreTrainedTokenizer


class TikTokenTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tiktoken.model"}
    special_tokens = {}
    num_reserved_special_tokens = 256
    pat_str = "|".join(
        [
%s        ]
    )

    def __init__(self, vocab_file, **kwargs):
        self.model = tiktoken.Encoding(name="kimi", pat_str=self.pat_str, mergeable_ranks={}, special_tokens={})
'''
TEMPLATE = ("{% for m in messages %}<|im_{{ m['role'] }}|>{{ m['role'] }}<|im_middle|>{{ m['content'] }}<|im_end|>"
            "{% endfor %}{% if add_generation_prompt %}<|im_assistant|>assistant<|im_middle|>{% endif %}")


def train_ranks(text: str, merges: int) -> dict[bytes, int]:
    """A byte-level BPE rank table learnt on ``text`` (pieces split by the pattern, as tiktoken's are)."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(PAT), behavior="isolated")
    words = collections.Counter(p for p, _ in split.pre_tokenize_str(text))
    seqs = {w: [bytes([c]) for c in w.encode()] for w in words}
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs = collections.Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[a, b] += words[w]
        if not pairs:  # every piece is one token
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return ranks


def write_ranks(path: Path, ranks: dict[bytes, int]) -> None:
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))


def write_dir(d: Path, ranks: dict[bytes, int], parts: list[str] = PARTS) -> Path:
    """A directory laid out as Kimi K2's tokenizer files are: rank file, class, config with the special tokens."""
    d.mkdir(parents=True, exist_ok=True)
    write_ranks(d / "tiktoken.model", ranks)
    (d / "tokenization_kimi.py").write_text(CLASS_SOURCE % "".join(f'            r"""{p}""",\n' for p in parts))
    n = len(ranks)
    added = {str(n + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True} for i, c in enumerate(NAMED) if c}
    (d / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]}, "added_tokens_decoder": added,
        "bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[EOS]", "chat_template": TEMPLATE,
        "tokenizer_class": "TikTokenTokenizer"}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [n + 1, n + 2]}))
    return d


def reference(ranks: dict[bytes, int], pattern: str = PAT):
    """tiktoken's own encoder for the table, with the special tokens the class gives it."""
    tiktoken = pytest.importorskip("tiktoken")
    n = len(ranks)
    specials = {f"<|reserved_token_{i}|>": i for i in range(n, n + RESERVED)}
    specials = {**{k: v for k, v in specials.items() if v - n >= len(NAMED) or NAMED[v - n] is None},
                **{c: n + i for i, c in enumerate(NAMED) if c}}
    return tiktoken.Encoding(name="kimi", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


@pytest.fixture(scope="module")
def kimi(tmp_path_factory) -> tuple[Path, dict[bytes, int]]:
    ranks = train_ranks(CORPUS, 400)
    assert b"qq" not in ranks
    ranks[b"qqq"] = len(ranks)  # a token no merge reaches: tiktoken takes it only as a whole piece
    return write_dir(tmp_path_factory.mktemp("kimi"), ranks), ranks


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = (list("abcXYZ  \n\t\r'’0123456789.,;!?-_()[]{}\"") + list("数学是科学的语言我们") + list("ひらがなカタカナ")
            + list("éÉüÜßçñ") + ["\u0301", "😀", "🇫🇷", "\u00a0", "\u3000", "Ⅻ", "²", "ǅ", "한"]
            + ["[BOS]", "<|im_end|>", "<|reserved_token_700|>", "'s", "'LL", "The", " the", "café", "   ", "qqq"])
    fixed = [CORPUS[:600], "It's He'LL WE'VE don't", "数学 abc数学DEF", "  \n\n  x  ", "[BOS]hello<|im_end|>\n", "",
             "1234567", "a\r\n\r\nb", "  leading and trailing  ", "qqq", " qqq", "qqqq"]
    return fixed + ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def same_as_tiktoken(ours, ref, strings: list[str]) -> int:
    """Asserts equal ids and decoded text for every string; returns how many merged tokens were produced."""
    merged = 0
    for t in strings:
        want = ref.encode(t, allowed_special="all")
        assert ours.encode(t) == want, repr(t)
        assert ours.decode(want, skip_special_tokens=False) == ref.decode(want), repr(t)
        merged += sum(256 <= i < ref.n_vocab - RESERVED for i in want)
    return merged


@pytest.mark.parametrize("seed", [0, 1])
def test_encodes_token_for_token_as_tiktoken(kimi, seed):
    d, ranks = kimi
    ref = reference(ranks)
    assert same_as_tiktoken(load_tokenizer(d), ref, texts(1500, seed)) > 1000  # merges exercised, not only bytes
    assert ref.encode("qqq") == [ranks[b"qqq"]] and ref.encode("qqqq") != [ranks[b"qqq"], ranks[b"q"]]


@pytest.mark.parametrize("pattern", [PARTS, [r"[a-z]+", r" ?[0-9]{1,2}", r"[\p{Han}]"]], ids=["kimi", "partial"])
def test_any_rank_table_and_pattern_encode_as_tiktoken(tmp_path, pattern):
    """A table of random concatenations (tokens with several splits into tokens, merged in an order no learnt
    table shows) and a pattern that leaves text unmatched (tiktoken encodes only the matches)."""
    rng = random.Random(2)
    # "abc" reached from [a][bc] ("bc" ranks before "ab"): its merge is the split the encoding meets, not the first
    ranks = {bytes([b]): b for b in range(256)} | {b"bc": 256, b"ab": 257, b"abc": 258}
    pieces = [c.encode() for c in "abcdeXYZ 01234\n数学语言ひらé"]
    grown = list(pieces) + [bytes([b]) for b in b"abcde 0123"]
    while len(ranks) < 1500:
        t = rng.choice(grown) + rng.choice(grown)
        if t not in ranks and len(t) <= 12:
            ranks[t] = len(ranks)
            grown.append(t)
    d = write_dir(tmp_path / "tok", ranks, pattern)
    pool = [p.decode() for p in pieces] + ["<|im_end|>", "F", "!"]
    strings = ["abcd", "xabc"] + ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(1000)]
    assert same_as_tiktoken(load_tokenizer(d), reference(ranks, "|".join(pattern)), strings) > 150


def test_a_rewritten_rank_file_is_read_again(kimi, tmp_path):
    """Tokenizers are built once per process for the same files, and again when the files change."""
    d = tmp_path / "tok"
    shutil.copytree(kimi[0], d)
    before = load_tokenizer(d).encode("the lazy dog")
    write_ranks(d / "tiktoken.model", {bytes([b]): b for b in range(256)} | {b"zz": 256})
    after = load_tokenizer(d).encode("the lazy dog")
    assert after == list(b"the lazy dog") and before != after


def test_loads_as_a_checkpoint_tokenizer(kimi):
    d, ranks = kimi
    n = len(ranks)
    tok = load_tokenizer(d)
    assert tok.vocab_size == n + RESERVED
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (n, n + 1, n + 1)
    assert tok.stop_ids == (n + 1, n + 2)
    assert tok.token_id("<|im_middle|>") == n + NAMED.index("<|im_middle|>")
    assert tok.token_id(f"<|reserved_token_{n + 5}|>") == n + 5  # an unnamed slot of the reserved range
    assert tok.token_id(f"<|reserved_token_{n + RESERVED}|>") is None
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 6 x 7?"}])
    ids = tok.encode(prompt)
    assert ids[0] == n + NAMED.index("<|im_user|>") and ids[-1] == n + NAMED.index("<|im_middle|>")
    assert ids.count(n + NAMED.index("<|im_end|>")) == 1
    assert tok.decode(ids, skip_special_tokens=False) == prompt
    assert tok.decode(ids) == "userWhat is 6 x 7?assistant"  # special tokens skipped
    assert tok.decode([n + 5, n + RESERVED - 1]) == ""  # the reserved placeholders are special too


def _literal_only(d: Path):
    src = (d / "tokenization_kimi.py").read_text()
    (d / "tokenization_kimi.py").write_text(src.replace('    pat_str = "|".join(', '    pat_str = make_pattern(\n'))
    return d / "tokenization_kimi.py", "TikTokenTokenizer.pat_str is not a string built from literals"


def _bad_pattern(d: Path):
    (d / "tokenization_kimi.py").write_text('class TikTokenTokenizer:\n    pat_str = r"[\\p{Han}+"\n')
    return d / "tokenization_kimi.py", "TikTokenTokenizer.pat_str does not compile"


def _no_class_file(d: Path):
    (d / "tokenization_kimi.py").unlink()
    return d / "tokenization_kimi.py", "not found (auto_map.AutoTokenizer names tokenization_kimi.TikTokenTokenizer"


def _no_auto_map(d: Path):
    conf = json.loads((d / "tokenizer_config.json").read_text())
    del conf["auto_map"]
    (d / "tokenizer_config.json").write_text(json.dumps(conf))
    return d / "tokenizer_config.json", "needs its splitting pattern"


def _other_class(d: Path):
    conf = json.loads((d / "tokenizer_config.json").read_text())
    conf["auto_map"]["AutoTokenizer"] = ["tokenization_kimi.KimiTokenizer", None]
    (d / "tokenizer_config.json").write_text(json.dumps(conf))
    return d / "tokenization_kimi.py", "no class KimiTokenizer"


def _bad_line(d: Path):
    lines = (d / "tiktoken.model").read_text().splitlines()
    lines[300] = "not-base64! 300"
    (d / "tiktoken.model").write_text("\n".join(lines) + "\n")
    return d / "tiktoken.model", "line 301: expected '<base64 token> <rank>'"


def _duplicate(d: Path):
    lines = (d / "tiktoken.model").read_text().splitlines()
    lines[300] = lines[299].split()[0] + " 300"
    (d / "tiktoken.model").write_text("\n".join(lines) + "\n")
    return d / "tiktoken.model", "line 301: token"


def _gap(d: Path):
    lines = (d / "tiktoken.model").read_text().splitlines()
    (d / "tiktoken.model").write_text("\n".join(lines[:300] + lines[301:]) + "\n")
    return d / "tiktoken.model", "ranks are not 0.."


def _missing_byte(d: Path):
    ranks = read_ranks(d / "tiktoken.model")
    del ranks[b"\x07"]
    write_ranks(d / "tiktoken.model", {t: i for i, t in enumerate(ranks)})
    return d / "tiktoken.model", "1 of the 256 single bytes have no token (first 0x07)"


def _special_on_a_token(d: Path):
    conf = json.loads((d / "tokenizer_config.json").read_text())
    conf["added_tokens_decoder"]["5"] = {"content": "<|oops|>", "special": True}
    (d / "tokenizer_config.json").write_text(json.dumps(conf))
    return d / "tokenizer_config.json", "added_tokens_decoder[5] ('<|oops|>') takes the id of a tiktoken.model token"


BREAK = {f.__name__.lstrip("_"): f for f in (_literal_only, _bad_pattern, _no_class_file, _no_auto_map, _other_class,
                                             _bad_line, _duplicate, _gap, _missing_byte, _special_on_a_token)}


@pytest.mark.parametrize("case", list(BREAK))
def test_a_broken_tokenizer_is_one_line_naming_its_file(kimi, tmp_path, case):
    d = tmp_path / "tok"
    shutil.copytree(kimi[0], d)
    file, what = BREAK[case](d)
    with pytest.raises(ModelDirError) as e:
        load_tokenizer(d)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{file}: ") and what in msg, msg


def test_export_copies_the_rank_file_and_class(kimi, tmp_path):
    """A model saved from a Kimi checkpoint keeps its tokenizer: the rank file and the Python class travel with the
    configs, and the copy loads to the same tokenizer."""
    d, ranks = kimi
    assert source_files(d) == ["tiktoken.model", "tokenization_kimi.py"]
    cfg = TransformerConfig(vocab_size=len(ranks) + RESERVED, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                            head_dim=8, ffn_dim=24, family="llama")
    mdef, params = create(cfg)
    out = save_pretrained(mdef, params, tmp_path / "out", tokenizer_from=d)
    for f in ("tiktoken.model", "tokenization_kimi.py", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_bytes() == (d / f).read_bytes(), f
    text = CORPUS[:300] + "<|im_end|>"
    assert load_tokenizer(out).encode(text) == load_tokenizer(d).encode(text)


@pytest.mark.slow
def test_a_run_trains_through_it(kimi, tmp_path):
    """``reasoning-rl run`` on a model directory whose tokenizer is Kimi K2's files: the run checks and loads it,
    encodes the prompts, takes a GRPO step and writes its rollouts back as text."""
    import yaml

    from reasoning_rl.cli import main

    d, ranks = kimi
    model = tmp_path / "model"
    cfg = TransformerConfig(vocab_size=len(ranks) + RESERVED, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                            head_dim=8, ffn_dim=24, family="llama")
    mdef, params = create(cfg)
    save_pretrained(mdef, params, model, tokenizer_from=d)
    run = {"model": {"path": str(model)}, "tokenizer": {"kind": "hf"}, "run_dir": str(tmp_path / "run"),
           "task": {"name": "arithmetic", "digits": 1, "held_out_size": 4},
           "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8},
           "stages": [{"name": "grpo", "kind": "grpo", "steps": 1}]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(run))
    assert main(["run", str(tmp_path / "cfg.yaml"), "--no-progress"]) == 0
    rows = [json.loads(line) for p in (tmp_path / "run").rglob("rollouts.jsonl") for line in p.open()]
    assert len(rows) == 2 and all(r["prompt"].endswith("=") and r["tokens"] == 8 for r in rows), rows
    tok = load_tokenizer(model)
    assert all(tok.decode(tok.encode(r["prompt"])) == r["prompt"] for r in rows)
