"""The masked-diffusion baseline's data from the teacher: its own greedy completions of the training prompts.

With ``train.sft_responses: teacher`` the ``mdm_sft`` baseline learns what OPD distils: the teacher's
behaviour on the same prompts, rather than a dataset's reference solutions (which a real teacher's
outputs may look nothing like). Only the rows the run will draw are completed, once, into
``OUT/teacher_responses.jsonl``; a resumed run reads that file back.
"""

from __future__ import annotations

import json
from pathlib import Path

from opdlm.data.prompting import encode_prompts, format_prompt
from opdlm.data.schema import Row
from opdlm.fsutil import atomic_write_text

RESPONSES_FILE = "teacher_responses.jsonl"


def rows_drawn(num_rows: int, total_rollout_steps: int, prompts_per_rollout: int, seed: int) -> list[int]:
    """Sorted indices of every row a run of ``total_rollout_steps`` draws (the training stream's order)."""
    from opdlm.train.data import stream_indices

    return sorted(set(stream_indices(num_rows, 0, total_rollout_steps * prompts_per_rollout, seed)))


def complete_rows(
    model,
    tokenizer,
    rows: list[Row],
    *,
    max_new_tokens: int,
    math_suffix: bool,
    enable_thinking: bool,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """The teacher's greedy completion text of each row's prompt (formatted as rollouts format it).

    A completion cut at ``max_new_tokens`` stays cut (no stop token is invented for it).
    """
    from opdlm.progress import track
    from opdlm.sampling.autoregressive import generate_autoregressive

    texts = [format_prompt(tokenizer, r.question, r.domain, math_suffix, enable_thinking) for r in rows]
    prompt_ids = encode_prompts(tokenizer, texts)
    order = sorted(range(len(rows)), key=lambda i: len(prompt_ids[i]))  # similar lengths: less padding
    out: list[str] = [""] * len(rows)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in track(batches, "teacher responses", "batch", enabled=progress):
        sample = generate_autoregressive(model, tokenizer, [prompt_ids[i] for i in batch], max_new_tokens)
        for k, i in enumerate(batch):
            out[i] = sample.texts[k]
    return out


def with_teacher_responses(
    rows: list[Row],
    teacher_dir: str | Path,
    out_dir: str | Path,
    *,
    indices: list[int],
    max_new_tokens: int,
    math_suffix: bool,
    enable_thinking: bool,
    device: str = "auto",
) -> list[Row]:
    """``rows`` with ``response`` replaced by the teacher's greedy completion for ``indices`` (None elsewhere).

    The completions are written to ``OUT_DIR/teacher_responses.jsonl`` (index and text per line) and
    read back from there when present, so a resumed run trains on the same targets.
    """
    path = Path(out_dir) / RESPONSES_FILE
    if path.is_file():
        done = {d["index"]: d["response"] for d in map(json.loads, path.read_text().splitlines())}
    else:
        from opdlm.models.student import load_causal_lm

        model, tokenizer = load_causal_lm(teacher_dir, device=device)
        texts = complete_rows(
            model,
            tokenizer,
            [rows[i] for i in indices],
            max_new_tokens=max_new_tokens,
            math_suffix=math_suffix,
            enable_thinking=enable_thinking,
        )
        done = dict(zip(indices, texts))
        lines = [json.dumps({"index": i, "response": done[i]}, ensure_ascii=False) for i in indices]
        atomic_write_text(path, "".join(line + "\n" for line in lines))
    return [r.model_copy(update={"response": done.get(i) or None}) for i, r in enumerate(rows)]
