"""Stop strings that span several tokens, matched inside the jitted decode loop.

``</answer>`` is one token in the built-in tasks' vocabularies but three or more in a real one (Qwen's
``</``, ``answer``, ``>``), and a base model keeps writing after it: the R1-Zero recipe then loses its format
reward and spends the budget on text nobody reads. A stop *string* is matched on the text the tokens spell,
whichever tokens spell it (``>`` alone or ``>\\n``), with an Aho-Corasick automaton over characters folded
into a per-token transition table: ``table[state, token]`` is the automaton's state after reading the
token's text, or ``MATCH`` (= the number of states) when a stop string ends inside it. A decode step then
costs each row one table lookup. The row stops at the token that completes the string (the token is kept:
the trainer trains on exactly the sampled tokens).

A token's text is what the tokenizer decodes it to after another token (a SentencePiece ``▁the`` is
`` the``); characters that the tokenizer splits across byte tokens are not matched, so stop strings should be
made of whole characters a token can hold (any ASCII string is).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True, eq=False)
class StopTable:
    """``table`` [states, vocab] int16: the state after each token (``states``: a stop string ended in it).
    Hashable by content, so sampling parameters holding it key the compiled programs."""

    strings: tuple[str, ...]
    table: np.ndarray = field(repr=False)
    key: str = field(repr=False)

    @property
    def states(self) -> int:
        return self.table.shape[0]

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StopTable) and other.key == self.key


def _automaton(strings: Sequence[str]) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Aho-Corasick over characters as a DFA: (alphabet {char: index}, delta [states, |alphabet| + 1]
    with the last column for any other character, accept [states] bool)."""
    alphabet = {c: i for i, c in enumerate(sorted({c for s in strings for c in s}))}
    goto: list[dict[int, int]] = [{}]
    accept = [False]
    for s in strings:
        q = 0
        for c in s:
            a = alphabet[c]
            if a not in goto[q]:
                goto.append({})
                accept.append(False)
                goto[q][a] = len(goto) - 1
            q = goto[q][a]
        accept[q] = True
    n, k = len(goto), len(alphabet)
    delta = np.zeros((n, k + 1), np.int32)  # other characters lead back to the root
    fail = [0] * n
    queue = deque()
    for a in range(k):
        q = goto[0].get(a, 0)
        delta[0, a] = q
        if q:
            queue.append(q)
    while queue:  # breadth first: a state's fail link is shallower, so its row is done
        q = queue.popleft()
        accept[q] = accept[q] or accept[fail[q]]
        for a in range(k):
            r = goto[q].get(a)
            if r is None:
                delta[q, a] = delta[fail[q], a]
            else:
                fail[r] = delta[fail[q], a]
                delta[q, a] = r
                queue.append(r)
    return alphabet, delta, np.asarray(accept)


def token_texts(tok) -> list[str]:
    """Each token id's text as it reads inside a completion (decoded after an anchor token, so a leading
    space the tokenizer strips at the start of a text is kept)."""
    anchor = list(tok.encode("a"))[-1:]
    head = tok.decode(anchor)
    return [tok.decode(anchor + [i]).removeprefix(head) for i in range(tok.vocab_size)]


def build(strings: Sequence[str], texts: Sequence[str], vocab_size: int | None = None) -> StopTable:
    """The transition table of ``strings`` over tokens whose texts are ``texts`` (index = token id), over
    ``vocab_size`` ids (a model's vocabulary may be padded past its tokenizer's: those ids read as '')."""
    strings = tuple(dict.fromkeys(s for s in strings if s))
    alphabet, delta, accept = _automaton(strings)
    states, other = delta.shape[0], delta.shape[1] - 1
    # a token without a stop character resets to the root
    table = np.zeros((states, max(vocab_size or 0, len(texts))), np.int16)
    touched = [i for i, t in enumerate(texts) if any(c in alphabet for c in t)]
    if touched:
        width = max(len(texts[i]) for i in touched)
        chars = np.full((len(touched), width), -1, np.int32)  # -1: past the token's end
        for row, i in enumerate(touched):
            chars[row, :len(texts[i])] = [alphabet.get(c, other) for c in texts[i]]
        st = np.repeat(np.arange(states, dtype=np.int32)[:, None], len(touched), axis=1)
        hit = np.zeros(st.shape, bool)
        for j in range(width):
            c = chars[:, j]
            st = np.where(c >= 0, delta[st, np.maximum(c, 0)], st)
            hit |= accept[st]
        table[:, touched] = np.where(hit, states, st)
    key = hashlib.sha256(repr(strings).encode() + table.tobytes()).hexdigest()
    return StopTable(strings, table, key)


def step(table: jnp.ndarray, state: jnp.ndarray, tok: jnp.ndarray, live: jnp.ndarray):
    """One decode step over ``table`` (``jnp.asarray(StopTable.table)``, made once outside the decode loop):
    (next state [R] int32, whether each live row's token completed a stop string)."""
    nxt = table[state, tok].astype(jnp.int32)
    hit = live & (nxt == table.shape[0])
    return jnp.where(hit, 0, nxt), hit


def hits(stops: StopTable | None, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[R] bool, host side: the rows whose completion (first ``lengths`` tokens) contains a stop string,
    i.e. ended on one (the sampler stops a row there)."""
    lengths = np.asarray(lengths)
    found = np.zeros(len(lengths), bool)
    if stops is None or not len(lengths):
        return found
    state = np.zeros(len(lengths), np.int32)
    for t in range(int(lengths.max())):
        nxt = stops.table[state, tokens[:, t]].astype(np.int32)
        found |= (t < lengths) & (nxt == stops.states)
        state = np.where(nxt == stops.states, 0, nxt)
    return found
