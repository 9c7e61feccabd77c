r"""Future-aware teacher targets: the causal target re-weighted by how well each candidate explains the block's rest.

**Why.** The paper's target at a still-masked response position ``i`` is the teacher's causal
distribution ``p_T(x_i = v | x_<i)`` (METHOD §4.3; ``x_<i`` is the prompt and the finished response
before ``i``). The student, however, predicts ``x_i`` while seeing tokens *after* ``i`` in its own
block (the ones already unmasked in the state). The causal target ignores them, so wherever a later
in-block token makes some candidates implausible, the student is taught a distribution the evidence
it sees contradicts. The correction (divelab/OPDLM's later "MC-TCSM", mit-han-lab/d-OPD's
"future-aware" teacher; this is our own formulation) re-scores the teacher's top candidates on the
rest of the block.

**Definition.** Let block ``b`` cover response positions ``[s, e)`` (``e`` capped at the response
length), ``i`` a masked position in it, ``C`` the teacher's ``k`` most likely tokens under the causal
target at ``i``, and ``F(i) \subseteq \{i+1, .., e-1\}`` the future positions that count (the *scope*,
below). For a candidate ``c`` the future log-likelihood is

    S(c) = \sum_{j \in F(i)} \log p_T(x_j | x_<i, c, x_{i+1..j-1})

(teacher forcing with the finished text on every in-block position between ``i`` and ``j``). With a
weight ``\lambda \in [0, 1]`` (a tempered posterior; :func:`ramp_weight` can ramp it up), the
corrected target is

    q(c) = \alpha \cdot softmax_{c' \in C}( \log p_T(c' | x_<i) + \lambda S(c') )[c]   for c in C,
    q(v) = p_T(v | x_<i)                                                              for v not in C,

where ``\alpha = \sum_{c \in C} p_T(c | x_<i)``: the candidates share the mass the causal target gave
them, and the tail keeps its causal probabilities (``tail: keep``). ``tail: drop`` instead puts all
mass on the candidates (``\alpha = 1``, tail zero).

Properties (each one a test in ``tests/test_future_aware.py``):

* no counted future (``F(i)`` empty: ``i`` is the last position of its block, or, with scope
  ``visible``, nothing after ``i`` in the block is unmasked) -> the position is not touched: exactly
  the causal target;
* ``\lambda = 0`` -> exactly the causal target (nothing is computed);
* ``k = V``, ``\lambda = 1``, scope ``final`` -> the exact Bayes posterior
  ``p_T(x_i | x_<i, x_{i+1..e-1})`` of the teacher's joint over the block.

**Which future tokens count (scope).** ``visible`` (default): ``F(i)`` = the positions after ``i``
in the block that are *unmasked in the training state*, i.e. exactly the in-block evidence the
student's input carries. Masked positions between ``i`` and a scored ``j`` still serve as context
with their finished tokens (teacher forcing, as the causal target already does for masked positions
before ``i``); marginalising them instead would need ``V`` branches per masked position. This is
d-OPD's choice of *where* to correct (it requires a visible future token), made consistent in *what*
is scored: evidence the student cannot see is not used to sharpen its target. ``final``: every
finished token after ``i`` in the block (both references score these), i.e. the teacher's posterior
given the whole rest of the block, whether or not the student sees it yet.

**Non-candidates (tail).** ``keep`` (default, as MC-TCSM): tokens outside the top-k have no
measured future likelihood, so their causal probability is kept and the correction only
redistributes the candidates' own mass; it can never invent mass where the teacher put none, and
with ``k = V`` it is the exact posterior. ``drop``: the target is the posterior over the candidates
alone (sharper, but a student token outside the teacher's top-k then gets no target mass). d-OPD's
rule (non-candidates scored as if they explained the future as well as the sampled token) needs an
extra branch per position and is not offered. MC-TCSM's random routing of positions (all argmax
disagreements, 10% of agreements) is not used: every masked position with a counted future is
corrected, so the loss stays deterministic given the state.

**Cost.** ``k`` branches per corrected position, each ``|branch| = max F(i) - i`` tokens long
(at most ``B - 1``), appended to the teacher's one causal forward (:func:`teacher_forward_with_branches`):
each branch token attends to the prompt, the response before ``i`` and its own branch. So the extra
teacher cost is about ``k * (B - 1) / 2`` tokens per masked position with a future (B = 4, k = 16:
~24 tokens), counted in :mod:`opdlm.train.flops`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from opdlm.models.attention import FLASH, dense_to_backend

SCOPES = ("visible", "final")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half precision goes to fp32 for the softmax arithmetic; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


TAILS = ("keep", "drop")


def ramp_weight(step: int, weight: float, ramp_steps: int, shape: str = "linear") -> float:
    """The correction weight ``lambda`` at rollout step ``step``: 0 -> ``weight`` over ``ramp_steps`` steps.

    ``linear``: ``weight * t``; ``cos``: ``weight * (1 - cos(pi t)) / 2``, with ``t = min(step / ramp_steps, 1)``.
    ``ramp_steps = 0`` is the constant ``weight``.
    """
    if ramp_steps == 0:
        return float(weight)
    t = min(max(step / ramp_steps, 0.0), 1.0)
    if shape == "linear":
        return float(weight) * t
    if shape == "cos":
        return float(weight) * 0.5 * (1.0 - math.cos(math.pi * t))
    raise ValueError(f"ramp shape must be 'linear' or 'cos', got {shape!r}")


def scored_future(masked_BL: torch.Tensor, lengths_B: torch.Tensor, block_size: int, scope: str) -> torch.Tensor:
    """Which future positions count for each position: ``scored_BLW[b, i, w - 1]`` is ``i + w \\in F(i)``.

    Args:
        masked_BL: True where the state has a mask token.
        lengths_B: response lengths (later positions are padding and never count).
        block_size: B; ``W = B - 1`` offsets.
        scope: ``visible`` (unmasked in the state) or ``final`` (every finished token).

    Returns:
        ``scored_BLW`` (bool), all False when ``B = 1``.
    """
    if scope not in SCOPES:
        raise ValueError(f"future-aware scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    n, length = masked_BL.shape
    W = block_size - 1
    i_L1 = torch.arange(length, device=masked_BL.device)[:, None]
    j_LW = i_L1 + torch.arange(1, W + 1, device=masked_BL.device)[None, :]
    same_block_LW = (j_LW // block_size) == (i_L1 // block_size)
    in_resp_BLW = j_LW[None] < lengths_B.to(masked_BL.device)[:, None, None]
    scored = same_block_LW[None] & in_resp_BLW
    if scope == "visible":
        visible_BL = torch.cat([~masked_BL, torch.zeros((n, W), dtype=torch.bool, device=masked_BL.device)], dim=1)
        scored = scored & visible_BL[:, j_LW.clamp(max=length + W - 1)]
    return scored


@dataclass
class Branches:
    """The candidate-rescoring batch: one job per (corrected position, candidate).

    Job ``j`` feeds the teacher ``tokens_JW[j, :n]`` at response positions ``i, .., i + n - 1`` after
    the clean prefix ``x_<i`` (``tokens_JW[j, 0]`` is the candidate, the rest the finished tokens),
    and its output at offset ``t`` is scored on ``targets_JW[j, t] = x_{i+t+1}`` where ``weight_JW``.

    Attributes:
        slot_J: index of the job's position among the ``N`` loss positions.
        rank_J: the candidate's rank (0 = the teacher's most likely).
        row_J: training row of the job.
        start_J: response position ``i``.
        length_J: branch length ``n = max F(i) - i`` (>= 1).
        tokens_JW, targets_JW, weight_JW: branch inputs, scored targets and which count (``W = B - 1``).
    """

    slot_J: torch.Tensor
    rank_J: torch.Tensor
    row_J: torch.Tensor
    start_J: torch.Tensor
    length_J: torch.Tensor
    tokens_JW: torch.Tensor
    targets_JW: torch.Tensor
    weight_JW: torch.Tensor

    def __len__(self) -> int:
        return int(self.slot_J.numel())


def build_branches(
    response_BL: torch.Tensor,
    row_N: torch.Tensor,
    col_N: torch.Tensor,
    cand_NK: torch.Tensor,
    scored_NW: torch.Tensor,
) -> Branches:
    """Rows with each candidate substituted at its position, for the positions with a counted future.

    Args:
        response_BL: finished responses (right-padded).
        row_N, col_N: the loss positions (training row, response position).
        cand_NK: the ``K`` candidate tokens at each position.
        scored_NW: ``scored_future`` at each position.
    """
    device = response_BL.device
    N, K = cand_NK.shape
    W = scored_NW.shape[1]
    offsets_W = torch.arange(1, W + 1, device=device)
    length_N = torch.where(scored_NW, offsets_W[None, :], 0).amax(dim=1) if W else torch.zeros(N, dtype=torch.long)
    slots = (length_N > 0).nonzero().squeeze(-1)
    slot_J = slots.repeat_interleave(K)
    rank_J = torch.arange(K, device=device).repeat(len(slots))
    row_J, start_J, length_J = row_N[slot_J], col_N[slot_J], length_N[slot_J]
    L = response_BL.shape[1]
    # x_{i+1..i+W}, clamped inside the row (the weight masks what lies past the branch)
    later_JW = response_BL[row_J[:, None], (start_J[:, None] + offsets_W[None, :]).clamp(max=L - 1)]
    tokens_JW = torch.cat([cand_NK[slot_J, rank_J][:, None], later_JW[:, :-1]], dim=1)
    weight_JW = scored_NW[slot_J]
    return Branches(slot_J, rank_J, row_J, start_J, length_J, tokens_JW, later_JW, weight_JW)


def branch_scores(target_logprobs_JW: torch.Tensor, branches: Branches, n_slots: int, k: int) -> torch.Tensor:
    """Future log-likelihood ``S(c)`` of every candidate, ``(N, K)`` (zero where a position has no job)."""
    per_job = torch.where(branches.weight_JW, _wide(target_logprobs_JW), 0.0).sum(-1)
    scores_NK = torch.zeros((n_slots, k), dtype=per_job.dtype, device=per_job.device)
    scores_NK[branches.slot_J, branches.rank_J] = per_job
    return scores_NK


def correct_candidates(
    cand_logprobs_NK: torch.Tensor, scores_NK: torch.Tensor, weight: float, tail: str
) -> torch.Tensor:
    """Corrected log-probabilities of the candidates, ``(N, K)`` (see the module docstring).

    ``keep``: ``log alpha + log_softmax(log p + lambda S)``; ``drop``: ``log_softmax(log p + lambda S)``.
    """
    if tail not in TAILS:
        raise ValueError(f"future-aware tail must be one of {', '.join(TAILS)}, got {tail!r}")
    lp = _wide(cand_logprobs_NK)
    posterior = torch.log_softmax(lp + weight * scores_NK, dim=-1)
    if tail == "drop":
        return posterior
    return torch.logsumexp(lp, dim=-1, keepdim=True) + posterior


def apply_edit(
    teacher_logprobs_NV: torch.Tensor, idx_NK: torch.Tensor, corrected_NK: torch.Tensor, edit_N: torch.Tensor, tail: str
) -> torch.Tensor:
    """The corrected target ``(N, V)``: rows ``edit_N`` get their candidates' corrected values (tail per ``tail``).

    Rows outside ``edit_N`` are returned unchanged (the same values, bit for bit).
    """
    if not bool(edit_N.any()):
        return teacher_logprobs_NV
    out = teacher_logprobs_NV.clone()
    rows = edit_N.nonzero().squeeze(-1)
    if tail == "drop":
        out[rows] = float("-inf")
    out[rows[:, None], idx_NK[rows]] = corrected_NK[rows].to(out.dtype)
    return out


@dataclass
class TargetEdit:
    """The correction as the KL applies it chunk by chunk (``forward_kl_chunked(..., teacher_edit=)``).

    Attributes:
        idx_NK: candidate tokens at each of the ``N`` loss positions.
        corrected_NK: their corrected log-probabilities.
        edit_N: positions that have a correction (the others keep the causal target).
        tail: ``keep`` or ``drop``.
    """

    idx_NK: torch.Tensor
    corrected_NK: torch.Tensor
    edit_N: torch.Tensor
    tail: str

    def __call__(self, teacher_logprobs_CV: torch.Tensor, rows: slice) -> torch.Tensor:
        return apply_edit(teacher_logprobs_CV, self.idx_NK[rows], self.corrected_NK[rows], self.edit_N[rows], self.tail)


BranchScorer = Callable[[Branches], torch.Tensor]


def top_candidates(causal_logprobs_NV: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``k`` most likely tokens (``k`` capped at V): ``(logprobs_NK, idx_NK)``."""
    return torch.topk(_wide(causal_logprobs_NV), min(top_k, causal_logprobs_NV.shape[-1]), dim=-1)


def candidate_edit(
    cand_logprobs_NK: torch.Tensor,
    idx_NK: torch.Tensor,
    scored_NW: torch.Tensor,
    response_BL: torch.Tensor,
    row_N: torch.Tensor,
    col_N: torch.Tensor,
    weight: float,
    tail: str,
    scorer: BranchScorer,
) -> tuple[TargetEdit, Branches]:
    """Rescore the candidates of the ``N`` positions through ``scorer`` and build the correction.

    Args:
        cand_logprobs_NK, idx_NK: :func:`top_candidates` of the causal target at each position.
        scored_NW: :func:`scored_future` at each position.
        response_BL, row_N, col_N: finished responses and the positions (row, response index).
        weight: ``lambda``.
        tail: ``keep`` or ``drop``.
        scorer: ``Branches -> target_logprobs_JW``, the teacher's log-probability of
            ``targets_JW[j, t]`` after branch ``j`` up to offset ``t``.

    Returns:
        ``(edit, branches)``; positions without a counted future are left out of ``edit``.
    """
    branches = build_branches(response_BL, row_N, col_N, idx_NK, scored_NW)
    edit_N = scored_NW.any(-1) if scored_NW.shape[1] else torch.zeros_like(row_N, dtype=torch.bool)
    scores_NK = torch.zeros_like(cand_logprobs_NK)
    if len(branches):
        scores_NK = branch_scores(scorer(branches), branches, len(row_N), idx_NK.shape[1])
    corrected_NK = correct_candidates(cand_logprobs_NK, scores_NK, weight, tail)
    return TargetEdit(idx_NK, corrected_NK, edit_N, tail), branches


def corrected_target_logprobs(
    causal_logprobs_BLV: torch.Tensor,
    response_BL: torch.Tensor,
    masked_BL: torch.Tensor,
    lengths_B: torch.Tensor,
    block_size: int,
    top_k: int,
    weight: float,
    scope: str,
    tail: str,
    scorer: BranchScorer,
) -> torch.Tensor:
    """The corrected target in full, ``(B, L, V)``, at every masked real position (the reference form).

    Args:
        causal_logprobs_BLV: the causal target ``log p_T(x_j = v | x_<j)`` at every response position.
        response_BL, masked_BL, lengths_B: the finished responses, the state, the lengths.
        block_size: B.
        top_k: candidates per position (capped at V).
        weight: ``lambda``; 0 returns the causal target unchanged.
        scope, tail: see the module docstring.
        scorer: see :func:`candidate_edit`.
    """
    out = causal_logprobs_BLV.clone()
    real_BL = torch.arange(masked_BL.shape[1], device=masked_BL.device)[None, :] < lengths_B[:, None]
    row_N, col_N = (masked_BL & real_BL).nonzero(as_tuple=True)
    if weight == 0.0 or row_N.numel() == 0:
        return out
    causal_NV = causal_logprobs_BLV[row_N, col_N]
    cand_NK, idx_NK = top_candidates(causal_NV, top_k)
    scored_NW = scored_future(masked_BL, lengths_B, block_size, scope)[row_N, col_N]
    edit, _ = candidate_edit(cand_NK, idx_NK, scored_NW, response_BL, row_N, col_N, weight, tail, scorer)
    out[row_N, col_N] = edit(causal_NV, slice(None))
    return out


# --- the teacher side: forwards over [prompt | response prefix | branch tokens] ----------------------


@dataclass
class BranchLayout:
    """One teacher forward's layout: per layout row ``[left-padded prompt | response prefix | branch tokens]``.

    Attributes:
        ids_BT, position_ids_BT: tokens and rotary positions.
        allowed_BTT: boolean attention mask (query, key).
        branch_job_M, branch_off_M, branch_row_M, branch_col_M: for each of the ``M`` branch tokens,
            its job, offset, layout row and column.
        attended_pairs: real (query, key) pairs the mask allows (for the FLOPs count).
        real_tokens: non-padding tokens of the layout.
    """

    ids_BT: torch.Tensor
    position_ids_BT: torch.Tensor
    allowed_BTT: torch.Tensor
    branch_job_M: torch.Tensor
    branch_off_M: torch.Tensor
    branch_row_M: torch.Tensor
    branch_col_M: torch.Tensor
    attended_pairs: int
    real_tokens: int


def branch_layout(
    prompt_ids_BP: torch.Tensor,
    prompt_lens_B: torch.Tensor,
    response_BL: torch.Tensor,
    branches: Branches,
    pieces: list[tuple[int, torch.Tensor]],
) -> BranchLayout:
    """Lay out each piece ``(row, jobs)`` as the row's prefix followed by its jobs' branch tokens.

    A piece's clean part is the prompt and the response before its latest job's start (causal; left
    padding never attended). A branch token of job ``j`` (start ``i``) at offset ``t`` attends to the
    prompt, the response before ``i`` and its own branch up to ``t``, at position id
    ``prompt_len + i + t``: it computes what a causal forward over ``x_<i, c, x_{i+1..i+t}`` would.
    """
    device = response_BL.device
    P = prompt_ids_BP.shape[1]
    src = torch.tensor([r for r, _ in pieces], dtype=torch.long, device=device)
    n = len(pieces)
    clean_B = torch.tensor([int(branches.start_J[j].max()) for _, j in pieces], dtype=torch.long, device=device)
    R = int(clean_B.max())
    counts = [int(branches.length_J[j].sum()) for _, j in pieces]
    T = P + R + max(counts)
    t_T = torch.arange(T, device=device)
    plen_B = prompt_lens_B[src]
    ids = torch.zeros((n, T), dtype=torch.long, device=device)
    ids[:, :P], ids[:, P : P + R] = prompt_ids_BP[src], response_BL[src, :R]
    pos = (t_T[None, :] - (P - plen_B[:, None])).clamp(min=0)
    # labels: seg 0 = clean, 1 + job = branch token, -1 = padding
    clean_valid = (t_T[None, :] >= P - plen_B[:, None]) & (t_T[None, :] < P + clean_B[:, None])
    seg = torch.where(clean_valid, 0, -1)
    limit = torch.zeros((n, T), dtype=torch.long, device=device)  # a branch token's clean keys: before P + i
    order = t_T[None].expand(n, T).clone()  # clean: its index; branch: its offset
    rows_M, cols_M, jobs_M, offs_M = [], [], [], []
    for b, (_, jobs) in enumerate(pieces):
        lens = branches.length_J[jobs]
        job_M = jobs.repeat_interleave(lens)
        first_M = (torch.cumsum(lens, 0) - lens).repeat_interleave(lens)
        off_M = torch.arange(len(job_M), device=device) - first_M
        col_M = P + R + torch.arange(len(job_M), device=device)
        start_M = branches.start_J[job_M]
        ids[b, col_M] = branches.tokens_JW[job_M, off_M]
        pos[b, col_M] = plen_B[b] + start_M + off_M
        seg[b, col_M] = 1 + job_M
        limit[b, col_M] = P + start_M
        order[b, col_M] = off_M
        rows_M.append(torch.full_like(job_M, b))
        cols_M.append(col_M)
        jobs_M.append(job_M)
        offs_M.append(off_M)
    sq, sk = seg[:, :, None], seg[:, None, :]
    kq, kk = t_T[None, :, None], t_T[None, None, :]
    clean_k = sk == 0
    allowed = ((sq == 0) & clean_k & (kk <= kq)) | (
        (sq > 0) & ((clean_k & (kk < limit[:, :, None])) | ((sk == sq) & (order[:, None, :] <= order[:, :, None])))
    )
    pairs = int(allowed.sum())
    allowed = allowed | ((sq < 0) & (kq == kk))  # a padding query sees itself: finite softmax
    return BranchLayout(
        ids,
        pos,
        allowed,
        torch.cat(jobs_M),
        torch.cat(offs_M),
        torch.cat(rows_M),
        torch.cat(cols_M),
        pairs,
        int((seg >= 0).sum()),
    )


def plan_pieces(branches: Branches, n_rows: int, max_branch_tokens: int) -> list[list[tuple[int, torch.Tensor]]]:
    """Split the jobs into forwards: pieces ``(row, jobs)`` of at most ``max_branch_tokens`` branch tokens,
    grouped so that one forward carries at most ``max_branch_tokens`` of them (a piece never splits a job).
    """
    pieces: list[tuple[int, torch.Tensor, int]] = []
    for b in range(n_rows):
        jobs = (branches.row_J == b).nonzero().squeeze(-1)
        start, used = 0, 0
        lens = branches.length_J[jobs].tolist()
        for k, n_tok in enumerate(lens):
            if used and used + n_tok > max_branch_tokens:
                pieces.append((b, jobs[start:k], used))
                start, used = k, 0
            used += n_tok
        if used:
            pieces.append((b, jobs[start:], used))
    groups, group, used = [], [], 0
    for b, jobs, n_tok in pieces:
        if group and used + n_tok > max_branch_tokens:
            groups.append(group)
            group, used = [], 0
        group.append((b, jobs))
        used += n_tok
    return groups + ([group] if group else [])


@contextlib.contextmanager
def _masked_attention(model: torch.nn.Module, backend: str):
    """flash-attn takes no mask: run the branch forward with SDPA and switch back afterwards."""
    if backend != FLASH:
        yield backend
        return
    model.set_attn_implementation("sdpa")
    try:
        yield "sdpa"
    finally:
        model.set_attn_implementation(FLASH)


def _backend_mask(allowed_BTT: torch.Tensor, backend: str, dtype: torch.dtype):
    if backend != "flex_attention":
        return dense_to_backend(allowed_BTT, backend, dtype)
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed_BTT[b, q_idx, kv_idx]

    n, T, _ = allowed_BTT.shape
    return create_block_mask(mask_mod, B=n, H=None, Q_LEN=T, KV_LEN=T, device=allowed_BTT.device)


@dataclass
class BranchWork:
    """What the rescoring forwards computed (summed over forwards), for :mod:`opdlm.train.flops`."""

    tokens: int = 0
    attended_pairs: int = 0
    head_tokens: int = 0
    forwards: int = 0


@torch.no_grad()
def teacher_branch_logprobs(
    teacher: torch.nn.Module,
    prompt_ids_BP: torch.Tensor,
    prompt_lens_B: torch.Tensor,
    response_BL: torch.Tensor,
    branches: Branches,
    backend: str,
    max_branch_tokens: int = 4096,
    head_chunk: int = 1024,
) -> tuple[torch.Tensor, BranchWork]:
    """The teacher's log-probability of every scored branch target, ``(J, W)`` (0 where not scored).

    Args:
        teacher: the frozen causal LM (``teacher.model`` its decoder).
        prompt_ids_BP, prompt_lens_B, response_BL: the training rows (left-padded prompts).
        branches: from :func:`build_branches`.
        backend: the teacher's attention backend (flash-attn runs these forwards with SDPA).
        max_branch_tokens: branch tokens per forward (memory bound; each extra forward re-reads a prefix).
        head_chunk: branch tokens per output-head chunk.

    Returns:
        ``(target_logprobs_JW, work)``.
    """
    target_JW = torch.zeros(branches.tokens_JW.shape, dtype=torch.float32, device=response_BL.device)
    work = BranchWork()
    if not len(branches):
        return target_JW, work
    dtype = next(teacher.parameters()).dtype
    head = teacher.get_output_embeddings()
    for group in plan_pieces(branches, prompt_ids_BP.shape[0], max_branch_tokens):
        layout = branch_layout(prompt_ids_BP, prompt_lens_B, response_BL, branches, group)
        with _masked_attention(teacher, backend) as used:
            out = teacher.model(
                input_ids=layout.ids_BT,
                attention_mask=_backend_mask(layout.allowed_BTT, used, dtype),
                position_ids=layout.position_ids_BT,
                use_cache=False,
            )
        # only the branch tokens whose target counts go through the head, a chunk at a time
        keep_M = branches.weight_JW[layout.branch_job_M, layout.branch_off_M]
        job_M, off_M = layout.branch_job_M[keep_M], layout.branch_off_M[keep_M]
        h_MH = out.last_hidden_state[layout.branch_row_M[keep_M], layout.branch_col_M[keep_M]]
        for s in range(0, len(job_M), head_chunk):
            rows = slice(s, s + head_chunk)
            logprobs = torch.log_softmax(head(h_MH[rows]).float(), dim=-1)
            targets = branches.targets_JW[job_M[rows], off_M[rows]]
            target_JW[job_M[rows], off_M[rows]] = logprobs.gather(-1, targets[:, None]).squeeze(-1)
        work.tokens += layout.real_tokens
        work.attended_pairs += layout.attended_pairs
        work.head_tokens += len(job_M)
        work.forwards += 1
    return target_JW, work
