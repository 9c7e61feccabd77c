"""Retention of a teacher's behaviour where accuracy cannot show it: likelihood under the teacher and agreement.

A teacher that scores ~0% on a benchmark leaves no accuracy to retain, yet a student can still be
close to it or far from it. Two families of numbers say how close, on the same held-out prompts:

* **Teacher NLL**: the teacher's mean per-token negative log-likelihood of the student's greedy
  completion, next to the same number for the teacher's own greedy completion (their ratio and
  difference). The completion's stop token is scored when it was generated, so stopping early costs
  ``-log p(stop)`` where the teacher wanted to go on, and going on past the teacher's end costs
  ``-log p(token)`` where the teacher wanted to stop.
* **Agreement** with the teacher's greedy completion, over both full lengths (stop token included):
  the LCS F1 ``2 LCS / (|S| + |T|)`` (the headline; a completion that is too short loses recall, one
  that is too long or loops loses precision), the common prefix over the longer length, and exact
  match. A likelihood under the teacher does not punish a loop reliably (language models find their own
  repetitions likely), so the repeated-n-gram rate of both is reported too.

Everything here is a pure function of token ids and per-token NLLs, except :func:`completion_nll`,
which runs one batched causal forward of the teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

REPEAT_NGRAM = 4  # a token that completes a 4-gram already seen in the same completion counts as repeated


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def lcs_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (O(|a| |b|) dynamic programme)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lcs_f1(student: list[int], teacher: list[int]) -> float:
    """``2 LCS / (|S| + |T|)``: 1 only for identical sequences; 1.0 when both are empty."""
    total = len(student) + len(teacher)
    return 2.0 * lcs_length(student, teacher) / total if total else 1.0


def prefix_agreement(student: list[int], teacher: list[int]) -> float:
    """Common prefix over the longer of the two lengths (so stopping early and running on both cost)."""
    longest = max(len(student), len(teacher))
    return common_prefix_length(student, teacher) / longest if longest else 1.0


def repeated_ngram_fraction(ids: list[int], n: int = REPEAT_NGRAM) -> float:
    """Fraction of the tokens that complete an ``n``-gram already seen earlier in ``ids`` (0 for short ones)."""
    if len(ids) <= n:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for k in range(n, len(ids) + 1):
        gram = tuple(ids[k - n : k])
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(ids)


@dataclass(frozen=True)
class RetentionMetrics:
    """How close one model's greedy completions are to the teacher's on the same prompts.

    Attributes:
        teacher_nll: the teacher's per-token NLL of this model's completions (token-weighted, stop token included).
        teacher_self_nll: the same for the teacher's own completions.
        nll_ratio: ``teacher_nll / teacher_self_nll`` (1.0 = as likely as the teacher's own; lower is closer).
        nll_gap: ``teacher_nll - teacher_self_nll`` (nats per token).
        agreement: mean LCS F1 against the teacher's completion (the headline; 1.0 = identical).
        prefix_agreement: mean common prefix over the longer length.
        exact_match: fraction of rows identical to the teacher's completion, stop token included.
        repetition, teacher_repetition: mean repeated-4-gram fraction of this model's and the teacher's completions.
        length_ratio: mean completion length over the teacher's.
        n: rows compared.
    """

    teacher_nll: float
    teacher_self_nll: float
    nll_ratio: float | None
    nll_gap: float
    agreement: float
    prefix_agreement: float
    exact_match: float
    repetition: float
    teacher_repetition: float
    length_ratio: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def retention_metrics(
    student_ids: list[list[int]],
    teacher_ids: list[list[int]],
    student_nll: list[list[float]],
    teacher_nll: list[list[float]],
) -> RetentionMetrics:
    """Aggregate per-row completions and their per-token teacher NLLs into :class:`RetentionMetrics`.

    Args:
        student_ids: per row, the model's completion ids (with its stop token when it stopped).
        teacher_ids: per row, the teacher's greedy completion ids on the same prompt.
        student_nll: per row, the teacher's NLL of each token of ``student_ids`` (same lengths).
        teacher_nll: per row, the teacher's NLL of each token of ``teacher_ids``.

    Raises:
        ValueError: the lists disagree in length, or no row is given.
    """
    n = len(student_ids)
    if not n or {len(teacher_ids), len(student_nll), len(teacher_nll)} != {n}:
        raise ValueError("retention needs the same non-zero number of student rows, teacher rows and NLL rows")
    for ids, nll in zip(student_ids + teacher_ids, student_nll + teacher_nll):
        if len(ids) != len(nll):
            raise ValueError(f"a completion of {len(ids)} tokens came with {len(nll)} NLL values")
    s_tokens = sum(len(r) for r in student_ids)
    t_tokens = sum(len(r) for r in teacher_ids)
    s_nll = sum(map(sum, student_nll)) / s_tokens if s_tokens else 0.0
    t_nll = sum(map(sum, teacher_nll)) / t_tokens if t_tokens else 0.0
    return RetentionMetrics(
        teacher_nll=round(s_nll, 6),
        teacher_self_nll=round(t_nll, 6),
        nll_ratio=round(s_nll / t_nll, 6) if t_nll > 0 else None,
        nll_gap=round(s_nll - t_nll, 6),
        agreement=round(sum(lcs_f1(s, t) for s, t in zip(student_ids, teacher_ids)) / n, 6),
        prefix_agreement=round(sum(prefix_agreement(s, t) for s, t in zip(student_ids, teacher_ids)) / n, 6),
        exact_match=round(sum(s == t for s, t in zip(student_ids, teacher_ids)) / n, 6),
        repetition=round(sum(map(repeated_ngram_fraction, student_ids)) / n, 6),
        teacher_repetition=round(sum(map(repeated_ngram_fraction, teacher_ids)) / n, 6),
        length_ratio=round(s_tokens / t_tokens, 6) if t_tokens else None,
        n=n,
    )


def _batches(order: list[int], lengths: list[int], first: list[int], vocab: int, budget: int) -> list[list[int]]:
    """Consecutive slices of ``order`` whose kept logits (rows x kept positions x vocab) stay within ``budget``."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        trial = cur + [i]
        kept = max(lengths[j] for j in trial) - min(first[j] for j in trial)
        if cur and len(trial) * kept * vocab > budget:
            batches.append(cur)
            trial = [i]
        cur = trial
    return batches + [cur] if cur else batches


def completion_nll(
    model, prompts: list[list[int]], completions: list[list[int]], max_logits: int = 2**26
) -> list[list[float]]:
    """The causal LM ``model``'s per-token NLL of each completion given its prompt.

    Rows are right-padded and run together: under a causal mask a real position never sees the
    padding after it, so each row scores exactly as it would alone. Only the logits of completion
    positions are computed (``logits_to_keep``), and rows are grouped so that at most ``max_logits``
    logits (rows x positions x vocabulary, 256 MiB in fp32 by default) exist at once. A completion
    token outside the model's vocabulary (e.g. a student's added mask row) is fed as token 0 and
    charged the largest NLL of any token at that position.

    Args:
        model: a Hugging Face causal LM (``model(input_ids=ids_BL, logits_to_keep=positions_K).logits``).
        prompts: per row, the prompt ids the model conditions on (non-empty).
        completions: per row, the ids to score.

    Returns:
        per row, ``len(completion)`` NLL values (nats).
    """
    import torch

    vocab = model.get_input_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in prompts]
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    first = [len(p) - 1 for p in prompts]  # the position that predicts a row's first completion token
    order = sorted((i for i in range(len(prompts)) if completions[i]), key=lambda i: lengths[i])
    for rows in _batches(order, lengths, first, vocab, max_logits):
        length, start = max(lengths[i] for i in rows), min(first[i] for i in rows)
        ids_BL = torch.zeros((len(rows), length), dtype=torch.long)
        for b, i in enumerate(rows):
            seq = prompts[i] + completions[i]
            ids_BL[b, : len(seq)] = torch.tensor([t if t < vocab else 0 for t in seq])
        keep_K = torch.arange(start, length - 1)
        with torch.no_grad():
            logits_BKV = model(input_ids=ids_BL.to(device), logits_to_keep=keep_K.to(device)).logits
        logprobs_BKV = torch.log_softmax(logits_BKV.float(), dim=-1).cpu()
        for b, i in enumerate(rows):
            pos = torch.arange(len(completions[i])) + first[i] - start
            target = torch.tensor(completions[i])
            picked = logprobs_BKV[b, pos, target.clamp(max=vocab - 1)]
            worst = logprobs_BKV[b, pos].min(dim=-1).values
            out[i] = (-torch.where(target < vocab, picked, worst)).tolist()
    return out
