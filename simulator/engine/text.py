"""Token counting without a tokenizer and deterministic generated text.

Counting approximates a BPE tokenizer: one token per word or punctuation mark, one more per further six
letters of a long word. Token-id prompts (what load generators send) are counted exactly.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

_PIECES = re.compile(r"\w+|[^\w\s]")
# Per-message framing a chat template adds (role markers, separators), as OpenAI's counting guide does.
_CHAT_TOKENS_PER_MESSAGE = 4
_CHAT_REPLY_PRIMER = 3

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there one all we their has been would more if will so what when can out who them "
    "some time could these two may then do first any my now such like our over man me even most made after "
    "also did many before must through years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since against go "
    "came right used take three small river cloud engine signal garden number water light system model token "
    "cluster power memory value order simple across early ocean table window paper market"
).split()


def count_text_tokens(text: str) -> int:
    """Approximate token count of a text."""
    return sum(1 + (len(piece) - 1) // 6 for piece in _PIECES.findall(text))


def count_chat_tokens(contents: Sequence[str]) -> int:
    """Approximate prompt tokens of chat messages with the given text contents."""
    body = sum(count_text_tokens(c) + _CHAT_TOKENS_PER_MESSAGE for c in contents)
    return body + _CHAT_REPLY_PRIMER


def derive_seed(*parts: object) -> int:
    """A 64-bit seed that depends only on the given parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


class TokenText:
    """The words a simulated model generates for one sequence, reproducible from its seed."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def next(self) -> str:
        """Text of the next generated token (a word with its leading space)."""
        return " " + self._rng.choice(_WORDS)


def natural_length(seed: int, limit: int) -> int:
    """How many tokens a model stopping at its own end-of-sequence would generate (16..512), capped at limit."""
    rng = random.Random(seed ^ 0x5EED)
    return max(1, min(limit, int(16 + rng.expovariate(1 / 120.0)), 512))
