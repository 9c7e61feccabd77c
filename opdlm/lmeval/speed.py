"""Per-request speed of an lm-eval run: stop sequences applied to token ids, and the aggregate.

lm-eval hands the model stop strings (``until``); our samplers stop only at EOS or the length cap,
so a completion is cut at the first stop string afterwards. The cut is made on token ids too, so
tokens per step counts only the tokens the harness scores (the same way
:meth:`~opdlm.sampling.output.SampleBatch.num_steps` counts the kept tokens), while forward passes
count what the sampler really ran.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class RequestSpeed:
    """One ``generate_until`` request: what it cost and how parallel its decoding was.

    Attributes:
        task: the lm-eval task name; doc_id: the document within it; idx: the request's index for
            that document (repeats).
        num_tokens: tokens kept after cutting at the stop string (or EOS, or the length cap).
        num_steps: distinct denoising steps that committed those tokens (one per token for a teacher).
        tokens_per_step: ``num_tokens / num_steps``.
        num_forwards: model forward passes the sequence took part in (the full decode, before the cut).
        batch_seconds: wall-clock seconds of the batch the request was decoded in (batched requests
            share a wall clock, so this is the time its answer took, not a per-request share).
        batch: the batch's number within the run (requests of one batch share ``batch_seconds``).
        batch_size: requests in that batch.
        stopped_by: ``stop`` (a stop string), ``eos`` or ``length``.
    """

    task: str | None
    doc_id: int | None
    idx: int | None
    num_tokens: int
    num_steps: int
    tokens_per_step: float
    num_forwards: int
    batch_seconds: float
    batch: int
    batch_size: int
    stopped_by: str

    def to_dict(self) -> dict:
        return asdict(self)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to (not including) the earliest of ``stops``; and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def kept_token_count(decode, ids: list[int], kept_text: str) -> int:
    """The fewest leading tokens of ``ids`` whose decoded text covers ``kept_text`` (binary search).

    ``decode(ids) -> str`` decodes a prefix; decoded prefixes grow with the prefix, so coverage is
    monotone in the prefix length. The token that straddles a stop string is counted as kept.
    """
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(ids[:mid])) >= len(kept_text):
            hi = mid
        else:
            lo = mid + 1
    return lo


def aggregate(records: list[RequestSpeed]) -> dict:
    """The run's speed, overall and per task: tokens per step as total tokens over total steps
    (the paper's definition, as ``opdlm eval`` reports it), mean forwards per request, generation seconds.

    ``generation_s`` sums each batch's seconds once.
    """

    def summary(rs: list[RequestSpeed]) -> dict:
        tokens, steps = sum(r.num_tokens for r in rs), sum(r.num_steps for r in rs)
        seconds = sum({r.batch: r.batch_seconds for r in rs}.values())
        return {
            "requests": len(rs),
            "tokens_per_step": round(tokens / steps, 4) if steps else 0.0,
            "mean_forwards": round(sum(r.num_forwards for r in rs) / len(rs), 4) if rs else 0.0,
            "mean_tokens": round(tokens / len(rs), 4) if rs else 0.0,
            "generation_s": round(seconds, 4),
            "tokens_per_second": round(tokens / seconds, 4) if seconds else 0.0,
        }

    tasks = sorted({r.task for r in records if r.task is not None})
    return {**summary(records), "tasks": {t: summary([r for r in records if r.task == t]) for t in tasks}}
