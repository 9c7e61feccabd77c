"""Supervised examples for the teacher bootstrap: ``format_prompt(question) + response + EOS``.

The prompt is exactly what rollouts and evaluation will feed the model later
(:func:`opdlm.data.prompting.format_prompt`); only response tokens (and the closing EOS) carry loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from opdlm.data.prompting import format_prompt
from opdlm.data.schema import Row

IGNORE_INDEX = -100


class Example(NamedTuple):
    """One tokenised training sequence."""

    input_ids: list[int]
    prompt_len: int


def encode_example(tokenizer, row: Row, enable_thinking: bool = False) -> Example:
    """Tokenise ``row`` as prompt + response + EOS; the row must carry a reference ``response``."""
    if not row.response:
        raise ValueError(f"row {row.id or row.question[:40]!r} has no reference response to train on")
    text = format_prompt(tokenizer, row.question, row.domain, enable_thinking=enable_thinking)
    prompt = tokenizer(text, add_special_tokens=False).input_ids
    response = tokenizer(row.response, add_special_tokens=False).input_ids
    return Example(prompt + response + [tokenizer.eos_token_id], len(prompt))


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch.

    Returns:
        ``(input_ids_BT, labels_BT)``: labels equal the inputs on response positions and
        ``IGNORE_INDEX`` on prompt and padding positions (the model shifts them itself).
    """
    length = max(len(e.input_ids) for e in examples)
    input_ids_BT = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels_BT = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(examples):
        ids = torch.tensor(ex.input_ids, dtype=torch.long)
        input_ids_BT[i, : len(ids)] = ids
        labels_BT[i, ex.prompt_len : len(ids)] = ids[ex.prompt_len :]
    return input_ids_BT, labels_BT


def batch_indices(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index lists for ``steps`` batches: epochs of seeded permutations, concatenated (deterministic).

    Batches mix lengths (and so families) freely: length-sorted batches, which would save padding,
    made training markedly worse here because each batch then holds a single task family.
    """
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(n_examples, generator=generator).tolist()
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]
