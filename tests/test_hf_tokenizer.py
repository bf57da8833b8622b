"""Checkpoint tokenizers: tokenizer.json through ``tokenizers``, sentencepiece-only checkpoints, and chat
templates rendered as transformers renders them (compared against transformers when it is installed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from reasoning_rl import config as C
from reasoning_rl.models.hf_tokenizer import load_tokenizer

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role') }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CORPUS = ["Solve 12 + 30 = 42.", "The answer is <answer>42</answer>.", "Think step by step about numbers.",
          "What is 7 times 6? It is 42.", "Héllo wörld, ünïcode too."] * 20
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>"]
CHAT = [{"role": "user", "content": "What is 6 * 7?  "}, {"role": "assistant", "content": "42", "tool_calls": None},
        {"role": "user", "content": "And 40 + 2?"}]


def _byte_bpe(path, template, **config):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, **config}))
    return path


@pytest.fixture
def chatml(tmp_path):
    d = _byte_bpe(tmp_path / "chatml", CHATML, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
                  tokenizer_class="PreTrainedTokenizerFast")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return d


@pytest.fixture
def llama3(tmp_path):
    return _byte_bpe(tmp_path / "llama3", LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                     tokenizer_class="PreTrainedTokenizerFast")


def test_tokenizer_json(chatml):
    tok = load_tokenizer(chatml)
    text = "The answer is <answer>42</answer>. Héllo"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eos_id == tok.token_id("<|im_end|>") == 2 and tok.pad_id == 0
    assert tok.stop_ids == (2, 0)
    assert tok.vocab_size >= 256 and tok.token_id("no such token") is None
    assert tok.decode([1, *ids, 2]) == text  # special tokens skipped by default
    prompt = tok.apply_chat_template(CHAT)
    assert prompt.startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 6 * 7?<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tok.encode(prompt)[:1] == [tok.token_id("<|im_start|>")]


def test_template_raise_exception_and_bos(llama3):
    tok = load_tokenizer(llama3)
    assert tok.apply_chat_template(CHAT[:1], add_generation_prompt=False).startswith(
        "<|begin_of_text|><|start_header_id|>user")
    with pytest.raises(Exception, match="bad role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}])


def test_sentencepiece_only_checkpoint(tmp_path):
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=60,
                                   model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2,
                                   hard_vocab_limit=False)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    tok = load_tokenizer(tmp_path)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    text = "Think about 42 numbers"
    assert tok.encode(text) == sp.encode(text)
    assert tok.encode(text, add_special_tokens=True) == [2, *sp.encode(text)]
    assert tok.decode([2, *tok.encode(text), 3]) == text
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 0)


@pytest.mark.parity
@pytest.mark.parametrize("which", ["chatml", "llama3"])
def test_matches_transformers(request, which):
    transformers = pytest.importorskip("transformers")
    path = request.getfixturevalue(which)
    ours, ref = load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    for text in CORPUS[:5] + ["<|im_start|>user\n42<|im_end|>"]:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
        ids = ours.encode(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    for gen in (True, False):
        assert ours.apply_chat_template(CHAT, add_generation_prompt=gen) == ref.apply_chat_template(
            CHAT, tokenize=False, add_generation_prompt=gen)
    assert ours.eos_id == ref.eos_token_id


def test_rollouts_stop_at_every_eos_id_of_generation_config(tmp_path):
    """Llama 3 instruct checkpoints name <|end_of_text|> as the tokenizer's eos but end a chat turn with
    <|eot_id|>, which only generation_config.json lists: the sampler's stop tokens (Runtime.stop_ids, what
    rollouts, evaluation and rejection sampling stop at) include every id it lists, not the eos alone."""
    from reasoning_rl.stages.common import Runtime

    d = _byte_bpe(tmp_path / "l3i", LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|endoftext|>",
                  tokenizer_class="PreTrainedTokenizerFast")
    tok = load_tokenizer(d)
    eos, eot = tok.token_id("<|endoftext|>"), tok.token_id("<|eot_id|>")
    r = C.RolloutConfig()
    assert Runtime.stop_ids(SimpleNamespace(tok=tok), r) == (eos,)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, eot]}))
    tok = load_tokenizer(d)
    assert Runtime.stop_ids(SimpleNamespace(tok=tok), C.RolloutConfig(stop_at_answer=False)) == (eos, eot)
    assert Runtime.stop_ids(SimpleNamespace(tok=tok), r) == (eos, eot)  # no </answer> token in this vocabulary
    # a stop string that is one token joins the ids; one of several tokens goes to the decode loop's automaton
    assert Runtime.stop_ids(SimpleNamespace(tok=tok), C.RolloutConfig(stop=("<|eot_id|>", "x y"))) == (eos, eot)


def test_stop_strings_are_matched_on_the_text_whichever_tokens_spell_it(tmp_path):
    """</answer> is several tokens of a byte-level BPE vocabulary: the run's stop table finds it in the
    tokens of any text that contains it, split however the tokenizer splits it, and nowhere else."""
    from reasoning_rl.rollout import stops
    from reasoning_rl.stages.common import Runtime

    d = _byte_bpe(tmp_path / "bpe", LLAMA3, bos_token="<|begin_of_text|>", eos_token="<|endoftext|>",
                  tokenizer_class="PreTrainedTokenizerFast")
    tok = load_tokenizer(d)
    assert tok.token_id("</answer>") is None
    rt = SimpleNamespace(tok=tok, mdef=SimpleNamespace(cfg=SimpleNamespace(vocab_size=tok.vocab_size + 3)),
                         _stops={})
    table = Runtime.stop_table(rt, C.RolloutConfig(stop=("\n\nQuestion:",)))
    assert table.strings == ("</answer>", "\n\nQuestion:") and table.table.shape[1] == tok.vocab_size + 3
    assert Runtime.stop_table(rt, C.RolloutConfig(stop_at_answer=False)) is None
    texts = ["<think>2+2</think><answer>4</answer>", "<answer> 4 </answer>\n", "x</answer>.", "</answer",
             "answer>", "a\n\nQuestion: b", "\nQuestion:", "</ answer>"]
    ids = [tok.encode(t) for t in texts]
    for t, i in zip(texts, ids):
        assert "".join(rt._stops["texts"][j] for j in i) == tok.decode(i), t  # texts concatenate as decoded
    n = max(len(i) for i in ids)
    tokens = np.array([i + [0] * (n - len(i)) for i in ids], np.int32)
    lengths = np.array([len(i) for i in ids])
    assert stops.hits(table, tokens, lengths).tolist() == [True, True, True, False, False, True, False, False]
    assert stops.hits(table, tokens, np.minimum(lengths, 3)).tolist()[:3] == [False, False, False]


def test_chat_template_kwargs_reach_the_template_and_need_template_chat(tmp_path):
    """task.chat_template_kwargs are the variables transformers' apply_chat_template(**kwargs) passes (Qwen3's
    enable_thinking, gpt-oss's reasoning_effort); set without template: chat they are refused, not ignored."""
    from reasoning_rl import config as C
    from reasoning_rl.config import ConfigError
    from reasoning_rl.data.files import FileTask

    template = (CHATML + "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
                + "{% if reasoning_effort is defined %}effort={{ reasoning_effort }}{% endif %}")
    tok = load_tokenizer(_byte_bpe(tmp_path / "q3", template, eos_token="<|im_end|>", pad_token="<|endoftext|>"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(6)))

    def prompt(**task):
        t = FileTask(C.build(C.TaskConfig, {"name": "file", "path": str(rows), "held_out_size": 2,
                                            "template": "chat", **task}))
        t.bind_tokenizer(tok)
        return t.held_out()[0].prompt

    plain = prompt()
    assert plain.endswith("<|im_start|>assistant\n")
    assert prompt(chat_template_kwargs={"enable_thinking": False}) == plain + "<think>\n\n</think>\n\n"
    assert prompt(chat_template_kwargs={"reasoning_effort": "high"}) == plain + "effort=high"
    for task, key in (({"template": "Q: {prompt}", "chat_template_kwargs": {"enable_thinking": False}},
                       "chat_template_kwargs"), ({"system": "Think."}, "system"),
                      ({"template": "chat", "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs")):
        with pytest.raises(ConfigError, match=rf"^stages\[0\].task.{key}: "):
            C.from_dict({"task": {"name": "file", "path": str(rows), **task},
                         "stages": [{"name": "s", "kind": "sft", "steps": 1}]})
