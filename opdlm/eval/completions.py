"""Sequence-level distillation data: the teacher's own greedy completions of a set of training prompts.

``data.responses: teacher_greedy`` trains the masked-diffusion baseline (``mdm_sft``) on what the
teacher writes rather than on the dataset's reference answers, the fair sequence-level counterpart of
OPD's token-level targets. The completions depend only on the teacher's bytes, the prompts and the
decoding settings, so they are generated once and cached by that content: ``OPDLM_CACHE/
teacher_completions/<key>.jsonl``, one :class:`~opdlm.data.schema.Row` a line (the prompt row with
``response`` replaced), written atomically; every arm and every planner of the same teacher and
prompt set reads the same file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from opdlm.config.sampler import SamplerConfig
from opdlm.data.schema import Row, read_rows
from opdlm.fsutil import atomic_write_text, dir_fingerprint
from opdlm.sources.cache import cache_dir

CACHE_SUBDIR = "teacher_completions"


def completion_key(teacher_fingerprint: str, rows: list[Row], settings: dict) -> str:
    """The cache key: sha256 of the teacher's fingerprint, every prompt (question, domain) and the decoding settings."""
    h = hashlib.sha256()
    h.update(json.dumps([teacher_fingerprint, settings], sort_keys=True).encode())
    for r in rows:
        h.update(json.dumps([r.question, r.domain]).encode())
    return h.hexdigest()[:20]


def teacher_completion_rows(
    teacher_dir: str | Path,
    rows: list[Row],
    *,
    max_new_tokens: int,
    math_suffix: bool = False,
    enable_thinking: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    cache: str | Path | None = None,
) -> list[Row]:
    """``rows`` with ``response`` set to the teacher's greedy completion of each prompt (cached by content).

    Args:
        teacher_dir: the frozen teacher (a causal LM directory).
        rows: the training prompts, in the order training draws them.
        max_new_tokens: length cap of a completion (the training curriculum's largest cap: longer
            responses would be cut there anyway).
        math_suffix, enable_thinking: the prompt format training uses (recipe ``train.math_suffix``,
            ``convert.enable_thinking``).
        batch_size: prompts decoded at once.
        progress: a bar on a terminal, a line every ~10% in logs.
        cache: folder of the cached files (default ``OPDLM_CACHE/teacher_completions``).

    Returns:
        One row per input row, same order, ``response`` = the teacher's text up to its EOS (an
        unfinished completion is kept as cut: the trainer's length cap cuts reference answers the same way).
    """
    from opdlm.data.prompting import encode_prompts
    from opdlm.eval.harness import decode_batches
    from opdlm.eval.runners import load_runner

    settings = {"max_new_tokens": max_new_tokens, "math_suffix": math_suffix, "enable_thinking": enable_thinking}
    key = completion_key(dir_fingerprint(teacher_dir), rows, settings)
    path = Path(cache) if cache is not None else cache_dir() / CACHE_SUBDIR
    path = path / f"{key}.jsonl"
    if path.is_file():
        return read_rows(path)
    runner = load_runner(teacher_dir, device=device, enable_thinking=enable_thinking)
    prompts = [runner.format_prompt(r.question, r.domain, math_suffix=math_suffix) for r in rows]
    greedy = SamplerConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    texts: list[str | None] = [None] * len(rows)
    batches = decode_batches(runner, encode_prompts(runner.tokenizer, prompts), greedy, batch_size, 0, progress)
    for batch, out, _ in batches:
        for k, i in enumerate(batch):
            texts[i] = out.texts[k]
    out_rows = [r.model_copy(update={"response": t}) for r, t in zip(rows, texts)]
    atomic_write_text(path, "".join(r.model_dump_json(exclude_none=True) + "\n" for r in out_rows))
    return out_rows
