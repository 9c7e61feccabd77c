"""Autoregressive decoding of a plain causal LM (the teacher) into the same :class:`SampleBatch`."""

from __future__ import annotations

import torch

from opdlm.sampling.block_sampler import left_pad
from opdlm.sampling.output import SampleBatch


@torch.no_grad()
def generate_autoregressive(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator_seed: int | None = None,
    decode_text: bool = True,
    stop_at_eos: bool = True,
) -> SampleBatch:
    """Hugging Face ``generate`` with its KV cache; one token per step, one forward per token.

    ``stop_at_eos=False`` always decodes exactly ``max_new_tokens`` (for equal-length timing).
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, lens = left_pad(prompts, pad)
    attn = (torch.arange(ids.shape[1])[None, :] >= (ids.shape[1] - lens)[:, None]).long()
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    eos = (
        model.generation_config.eos_token_id
        if model.generation_config.eos_token_id is not None
        else tokenizer.eos_token_id
    )
    kwargs = (
        dict(do_sample=False)
        if temperature == 0
        else dict(do_sample=True, temperature=temperature, top_k=top_k or None, top_p=top_p)
    )
    if not stop_at_eos:  # an empty list, not None: generate would fall back to the model's EOS
        eos = []
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos,
        **kwargs,
    )
    eos_set = set(eos if isinstance(eos, list) else [eos])
    responses, finished = [], []
    for row in out[:, ids.shape[1] :].tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in eos_set), None)
        responses.append(row[:cut] if cut else row)
        finished.append(cut is not None)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses] if decode_text else []
    return SampleBatch(
        responses, [list(range(len(r))) for r in responses], [max(len(r), 1) for r in responses], finished, texts
    )
