"""The tiny teacher's tokenizer: frequent words of the synthetic suite as single tokens, else characters.

A word-level model from the ``tokenizers`` library over a regex pre-tokenizer that cuts text into
(an optional leading space plus) either a known word or a single non-digit character, or a single
digit, or a single whitespace character. The known words are the words that occur at least
``min_word_count`` times in a fixed sample of the training split, so the suite's template words
("Sort", "then", "boxed") cost one token each while letters stay one token per character, which is
what makes arithmetic and reversal learnable by a tiny model. A digit never merges with the space
before it: ``7`` is the same token in ``3+7``, ``= 7`` and ``17``, so a number reads the same
wherever it is written. Any ASCII text round-trips exactly; other characters become ``<|unk|>``.

It is saved as an ordinary ``PreTrainedTokenizerFast`` with pad and EOS tokens and a compact chat
template, so :func:`opdlm.data.prompting.format_prompt` treats it like Qwen3's.
"""

from __future__ import annotations

import re
import string
from collections import Counter

PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, EOS, UNK, *ROLE_TOKENS)
# Every whitespace character that may appear on its own; any other whitespace is unknown.
WHITESPACE = (" ", "\n", "\t", "\r")
VISIBLE = tuple(c for c in string.printable if c not in string.whitespace)

# Each turn is "<|role|>content"; an assistant turn ends with EOS, which is where decoding stops.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '" + EOS + "' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_WORD = re.compile(r"[A-Za-z]{2,}")


def suite_words(min_word_count: int = 50, sample_rows: int = 2000, seed: int = 0) -> list[str]:
    """Words (2+ letters) that occur at least ``min_word_count`` times in a sample of the train split.

    Random letter strings of the reversal family never repeat that often, so only template words pass.
    """
    from opdlm.data.synthetic import load_split

    counts: Counter[str] = Counter()
    for row in load_split("train", n=sample_rows, seed=seed):
        counts.update(_WORD.findall(row.question))
        counts.update(_WORD.findall(row.response or ""))
    return sorted(w for w, c in counts.items() if c >= min_word_count)


def _vocabulary(words: list[str]) -> dict[str, int]:
    pieces = [*SPECIAL_TOKENS, *WHITESPACE, *VISIBLE, *(" " + c for c in VISIBLE if not c.isdigit())]
    pieces += [*words, *(" " + w for w in words)]
    return {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}


def _split_pattern(words: list[str]) -> str:
    # Longest words first so that a word is never cut at a shorter word that prefixes it.
    alternation = "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))
    known_word = rf" ?\b(?:{alternation})\b|" if words else ""
    return known_word + r" ?[^\s\d]|\d|\s"


def build_tokenizer(words: list[str] | None = None):
    """Build the suite tokenizer.

    Args:
        words: whole-word tokens; default :func:`suite_words`.

    Returns:
        A ``PreTrainedTokenizerFast`` with pad ``<|pad|>`` (id 0), EOS ``<|endoftext|>`` (id 1), unk,
        role tokens and :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = suite_words() if words is None else sorted(set(words))
    core = Tokenizer(models.WordLevel(vocab=_vocabulary(words), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(_split_pattern(words)), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
