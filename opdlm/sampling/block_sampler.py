"""The block-diffusion sampler (METHOD §3) with continuous batching: every row moves through its blocks on its own.

Rollouts, evaluation, ``opdlm generate``, the MLflow pyfunc and lm-eval all decode with this one
sampler: :meth:`BlockDiffusionSampler.generate` (one length cap), or
:meth:`BlockDiffusionSampler.generate_capped` (a cap per prompt: rollouts with per-domain caps).

A batch has ``max_batch`` slots (default: every prompt at once); prompts beyond that wait in a queue
(shortest first, so prefills pad little). The committed tokens of every slot live in one
:class:`~opdlm.sampling.row_cache.RowKVCache` with a length of its own per row, so rows at different
blocks, of different prompt lengths, share every forward. One loop iteration:

1. **Admission**: free slots take prompts from the queue. Their ``[left-padded prompt | block 0]`` is
   one forward of its own (a prefill), which is also block 0's first denoising step; the prompt's keys
   are final and stay in the cache, block 0's are not.
2. **Step**: one forward over every slot. A row that has just completed a block runs
   ``[that block | its next block]``: the completed block, now that all of its tokens are committed, is
   computed once more and its keys are kept (no forward of its own); every other row runs
   ``[padding | current block]``. When no row completed a block, the forward is ``[current block]``.
3. **Commit**: each row samples its current block and commits by its own schedule (static quota,
   dynamic threshold). A row whose block is complete moves to its next block at once; a row that
   ended (EOS, or its length cap) leaves at once: its slot takes the next queued prompt or, once
   the queue is empty, its cache row is dropped (compaction), so no forward carries a finished row.

The forward is the sampler's own :class:`~opdlm.models.decode_forward.DecodeForward` where it covers
the model (Qwen3 and Llama under sdpa, outside autocast: the same logits as the model's forward, in
fewer and TorchScript-compiled calls), else the model's forward; the denoising step's tensor work is
one TorchScript-compiled pure function too (:mod:`opdlm.sampling.denoise_step`).

A widened forward pads the rows that completed no block (their first ``B`` query positions): one
call instead of two, each of which would pay the per-call cost and read every weight.
:class:`DecodeStats` counts the padded positions (``query_tokens``) next to the rows.

Each row's queries see exactly the keys (same labels, same positions) they would see if the row
were decoded alone, so every row's tokens, step map and forward count equal decoding its prompt
alone (up to float rounding of batched kernels), and the no-cache :mod:`opdlm.sampling.reference`
sampler stays the specification. At temperature > 0 each sequence samples with a generator of its
own, seeded from the caller's ``generator`` in prompt order: what a row samples does not depend on
which rows share its forwards, nor on ``max_batch``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.jit import script_or_eager
from opdlm.models.attention import attention_mask, labelled_attention_mask
from opdlm.models.decode_forward import DecodeForward, fused_forward_unsupported
from opdlm.models.geometry import CLEAN, inference_geometry
from opdlm.models.student import Student
from opdlm.sampling.denoise_step import advance_blocks, denoise_step
from opdlm.sampling.output import SampleBatch
from opdlm.sampling.remasking import transfer_schedule
from opdlm.sampling.row_cache import RowKVCache, fill_holes


def left_pad(prompts: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids_BP, lengths_B)``: prompts right-aligned in a ``(B, P)`` tensor padded with ``pad_id`` on the left."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    width = width or max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
    return ids, torch.tensor([len(p) for p in prompts], dtype=torch.long)


@dataclass
class DecodeStats:
    """What the last ``generate`` call cost.

    Attributes:
        forwards: model calls (prefills included).
        prefills: model calls that admitted new prompts.
        row_forwards: batch rows over all model calls (a slot whose row has left but is not yet
            compacted away counts too): the work a batch did, in rows.
        query_tokens: query positions over all model calls, padding included (a row that carries
            no completed block still fills a widened forward's first ``B`` positions).
        tokens: tokens kept in the responses.
    """

    forwards: int = 0
    prefills: int = 0
    row_forwards: int = 0
    query_tokens: int = 0
    tokens: int = 0

    @property
    def row_forwards_per_token(self) -> float:
        return self.row_forwards / self.tokens if self.tokens else 0.0

    @property
    def query_tokens_per_token(self) -> float:
        return self.query_tokens / self.tokens if self.tokens else 0.0


class _Slots:
    """Per-slot decoding state, one entry per batch slot (``S``); ``seq`` is -1 on a free slot."""

    def __init__(self, S: int, block_size: int, mask_id: int, device: torch.device):
        def full(value, *shape, dtype=torch.long):
            return torch.full((S, *shape), value, dtype=dtype, device=device)

        self.seq = full(-1)
        self.prompt_len, self.cap, self.block = full(0), full(0), full(0)
        self.ids, self.prev_ids = full(mask_id, block_size), full(mask_id, block_size)
        self.block_steps = full(-1, block_size)
        self.step_in_block, self.steps = full(0), full(0)
        self.todo = full(False, block_size, dtype=torch.bool)  # positions of the current block still to decode
        self.carry = full(False, dtype=torch.bool)  # the previous block's keys still to be written
        self.shift_logits: torch.Tensor | None = None  # logit_shift: (S, V) prediction of the block's first token
        self.generators: list[torch.Generator | None] = [None] * S

    @property
    def live(self) -> torch.Tensor:
        return self.seq >= 0

    def select(self, slots: torch.Tensor) -> None:
        for name in ("seq", "prompt_len", "cap", "block", "ids", "prev_ids", "block_steps", "step_in_block", "steps"):
            setattr(self, name, getattr(self, name)[slots])
        self.carry, self.todo = self.carry[slots], self.todo[slots]
        if self.shift_logits is not None:
            self.shift_logits = self.shift_logits[slots]
        self.generators = [self.generators[i] for i in slots.tolist()]


class BlockDiffusionSampler:
    """The KV-cached, continuously batched block sampler used by rollouts, evaluation and serving.

    Args:
        student: a loaded converted model (model, tokenizer, meta, backend).
        max_batch: rows decoded at once; more prompts wait in a queue and take slots as rows finish
            (None: every prompt of a ``generate`` call at once).
        forward: ``auto`` runs the sampler's own :class:`~opdlm.models.decode_forward.DecodeForward`
            where it covers the model (Qwen3 or Llama under sdpa) and the model's forward elsewhere;
            ``hf`` always runs the model's own (Hugging Face) forward.
    """

    def __init__(self, student: Student, max_batch: int | None = None, forward: str = "auto"):
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
        if forward not in ("auto", "hf"):
            raise ValueError(f"forward must be 'auto' or 'hf' (got {forward!r})")
        self.student = student
        self.meta = student.meta
        self.max_batch = max_batch
        self.stats = DecodeStats()
        self.fused: DecodeForward | None = None
        self.fused_unsupported = (
            "forward='hf'" if forward == "hf" else fused_forward_unsupported(student.model, student.backend)
        )
        if self.fused_unsupported is None:
            self.fused = DecodeForward.for_model(student.model)

    @torch.inference_mode()  # no autograd bookkeeping at all; results leave as Python lists
    def generate(
        self,
        prompts: list[list[int]],
        cfg: SamplerConfig,
        generator: torch.Generator | None = None,
        decode_text: bool = True,
    ) -> SampleBatch:
        """Generate a response for each prompt (token ids in, token ids and step maps out, in prompt order)."""
        return self.generate_capped(prompts, cfg, [cfg.max_new_tokens] * len(prompts), generator, decode_text)

    @torch.inference_mode()
    def generate_capped(
        self,
        prompts: list[list[int]],
        cfg: SamplerConfig,
        caps: list[int],
        generator: torch.Generator | None = None,
        decode_text: bool = True,
    ) -> SampleBatch:
        """:meth:`generate` with a length cap per prompt (``caps[i]`` tokens at most for prompt ``i``).

        Rows with different caps share one batch (rollouts with per-domain caps).
        """
        if len(caps) != len(prompts):
            raise ValueError(f"{len(caps)} caps for {len(prompts)} prompts")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        if any(c < 1 for c in caps):
            raise ValueError("every length cap must be >= 1")
        self.stats = DecodeStats()
        if not prompts:
            return SampleBatch([], [], [], [], [])
        ids, steps, nfe, ended = _Decode(self, prompts, cfg, caps, generator).run()
        return self._collect(ids, steps, nfe, ended, caps, decode_text)

    def _collect(self, response_all, step_all, nfe, ended, caps, decode_text) -> SampleBatch:
        meta = self.meta
        eos = set(meta.eos_token_ids)
        out_ids, out_steps = [], []
        for ids, steps, cap in zip(response_all, step_all, caps):
            ids, steps = ids[:cap], steps[:cap]
            cut = next((k + 1 for k, t in enumerate(ids) if t in eos), None)
            if cut is None:  # length cap: keep the committed prefix
                cut = next((k for k, t in enumerate(ids) if t == meta.mask_token_id), len(ids))
            out_ids.append(ids[:cut])
            out_steps.append(steps[:cut])
        self.stats.tokens = sum(map(len, out_ids))
        texts = [self.student.tokenizer.decode(r, skip_special_tokens=True) for r in out_ids] if decode_text else []
        return SampleBatch(out_ids, out_steps, nfe, ended, texts)


class _Decode:
    """One ``generate`` call: the queue, the slots, the cache and the per-sequence results."""

    def __init__(self, sampler: BlockDiffusionSampler, prompts, cfg: SamplerConfig, caps, generator):
        student, meta = sampler.student, sampler.meta
        self.sampler, self.model, self.backend = sampler, student.model, student.backend
        # the sampler's own forward, bound to the weights as they are now (a student under training
        # changes); under autocast (bf16 rollouts) the model's forward, whose modules autocast casts
        autocast = torch.is_autocast_enabled(student.device.type)
        self.fused = sampler.fused.bind() if sampler.fused is not None and not autocast else None
        # masks in the format the forward takes: the sampler's forward adds an additive float mask
        # (sdpa's CPU kernel runs ~10% faster with one than with a boolean mask)
        self.mask_format = "eager" if self.fused is not None else self.backend
        self.device, self.dtype = student.device, student.dtype
        self.meta, self.cfg, self.prompts, self.caps = meta, cfg, prompts, caps
        self.B = cfg.block_size
        n = len(prompts)
        self.eos_ids = torch.tensor(meta.eos_token_ids, dtype=torch.long, device=self.device)
        self.schedule = torch.tensor(transfer_schedule(self.B, cfg.denoise_steps_per_block), device=self.device)
        self.denoise, self.advance = script_or_eager(denoise_step), script_or_eager(advance_blocks)
        self.offsets_B = torch.arange(self.B, device=self.device)
        self.seeds = None
        if cfg.temperature > 0:  # one generator per sequence, seeded in prompt order
            where = generator.device if generator is not None else "cpu"
            self.seeds = torch.randint(0, 2**62, (n,), generator=generator, device=where).tolist()
        # shortest prompts first: prefill groups of similar width pad little
        self.queue = deque(sorted(range(n), key=lambda i: len(prompts[i])))
        S = min(sampler.max_batch or n, n)
        self.slots = _Slots(S, self.B, meta.mask_token_id, self.device)
        self.cache = RowKVCache(S, self.device)
        self.out_ids: list[list[int]] = [[] for _ in range(n)]
        self.out_steps: list[list[int]] = [[] for _ in range(n)]
        self.nfe, self.ended = [0] * n, [False] * n
        # the step mask depends only on the slots' rows, lengths and blocks: `_layout` counts their
        # changes, and a step whose layout was already seen reuses that step's mask and positions
        self._layout, self._reusable, self._reused = 0, -1, None

    def run(self):
        slots = self.slots
        while True:
            free = (~slots.live).nonzero().squeeze(-1)
            if self.queue and len(free):
                self._admit(free[: len(self.queue)])
            if not self.queue and not bool(slots.live.all()):  # nothing left to admit: drop free slots
                keep = fill_holes(slots.live.nonzero().squeeze(-1))
                slots.select(keep)
                self.cache.select(keep)
                self._layout += 1
            if len(slots.seq) and slots.live.any():
                self._step()
            elif not self.queue:
                break
        return self.out_ids, self.out_steps, self.nfe, self.ended

    def _forward(self, ids, mask, position_ids, keep: int, rows: int, valid: torch.Tensor) -> torch.Tensor:
        stats = self.sampler.stats
        stats.forwards += 1
        stats.row_forwards += rows
        stats.query_tokens += ids.numel()
        if self.fused is not None:
            return self.fused(ids, mask, position_ids, self.cache, keep, valid)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        return out.logits

    def _admit(self, free_R: torch.Tensor) -> None:
        """Move queued prompts into the free slots ``free_R``; prefill them with block 0's first step."""
        meta, B, slots = self.meta, self.B, self.slots
        seqs = [self.queue.popleft() for _ in range(len(free_R))]
        group = [self.prompts[q] for q in seqs]
        prompt_ids, lens = left_pad(group, meta.pad_token_id)
        P = prompt_ids.shape[1]
        lens = lens.to(self.device)
        ids = torch.cat(
            [prompt_ids.to(self.device), torch.full((len(seqs), B), meta.mask_token_id, device=self.device)], 1
        )
        geom = inference_geometry(lens, P, B, B, meta.prompt_attention)
        # room for these rows' whole decode (their prompt, cap and a widened step), so the cache
        # is not regrown (and copied) as they lengthen
        self.cache.reserve(P + max(self.caps[q] for q in seqs) + 2 * B)
        self.cache.begin_prefill(free_R, geom.kind_BT, geom.block_BT, geom.valid_BT)
        mask = attention_mask(geom, self.mask_format, self.dtype)
        keep = B + 1 if meta.logit_shift else B
        self.sampler.stats.prefills += 1
        self._layout += 1
        logits = self._forward(ids, mask, geom.position_ids_BT, keep, len(seqs), geom.valid_BT)
        self.cache.lengths_S[free_R] = P  # the prompt is committed; block 0's keys are not

        slots.seq[free_R] = torch.tensor(seqs, device=self.device)
        slots.prompt_len[free_R] = lens
        slots.cap[free_R] = torch.tensor([self.caps[q] for q in seqs], device=self.device)
        slots.block[free_R] = 0
        slots.ids[free_R] = meta.mask_token_id
        slots.block_steps[free_R] = -1
        slots.step_in_block[free_R], slots.steps[free_R] = 0, 0
        slots.carry[free_R] = False
        slots.todo[free_R] = self.offsets_B[None, :] < slots.cap[free_R][:, None]  # block 0 within the cap
        if self.seeds is not None:
            for s, q in zip(free_R.tolist(), seqs):
                slots.generators[s] = torch.Generator(device=self.device).manual_seed(self.seeds[q])
        if meta.logit_shift:
            if slots.shift_logits is None:
                slots.shift_logits = logits.new_zeros((len(slots.seq), logits.shape[-1]))
            slots.shift_logits[free_R] = logits[:, 0]
            # output j-1 predicts token j: the last prompt token predicts block 0's first position
            self._commit(free_R, logits[:, :B])
        else:
            self._commit(free_R, logits[:, -B:])

    def _step(self) -> None:
        """One forward over every slot, then each live row's commits."""
        B, slots, meta = self.B, self.slots, self.meta
        live = slots.live
        carry = slots.carry & live
        widened = bool(carry.any())
        if not widened and self._reusable == self._layout:  # same rows, lengths and blocks as the last step
            mask, pos, valid = self._reused
            self.cache.resume_step()
            ids = slots.ids
        else:
            pos = slots.prompt_len[:, None] + slots.block[:, None] * B + self.offsets_B[None, :]
            block = slots.block[:, None].expand(-1, B)
            valid = live[:, None].expand(-1, B)
            ids = slots.ids
            if widened:  # [completed block (kept) | current block]; padding where a row completed nothing
                ids = torch.cat([slots.prev_ids, ids], 1)
                pos = torch.cat([(pos - B).clamp(min=0), pos], 1)
                block = torch.cat([block - 1, block], 1)
                valid = torch.cat([carry[:, None].expand(-1, B), valid], 1)
            kind = torch.full_like(block, CLEAN)
            q_index, k_kind, k_block, k_valid = self.cache.begin_step(kind, block, valid)
            mask = labelled_attention_mask(
                kind, block, valid, q_index, k_kind, k_block, k_valid, self.mask_format, self.dtype
            )
            if not widened:  # the block's later steps see the same keys: one mask for all of them
                self._reusable, self._reused = self._layout, (mask, pos, valid)
        keep = B + 1 if (meta.logit_shift and widened) else B
        logits = self._forward(ids, mask, pos, keep, len(live), valid)
        if widened:
            self.cache.commit(carry.long() * B)
            slots.carry[:] = False
            self._layout += 1
        if meta.logit_shift:
            if widened:  # the completed block's last token predicts the new block's first position
                slots.shift_logits[carry] = logits[carry, 0]
            block_logits = torch.cat([slots.shift_logits[:, None], logits[:, -B:-1]], 1)
        else:
            block_logits = logits[:, -B:]
        if bool(live.all()):
            self._commit(None, block_logits)
        else:
            rows = live.nonzero().squeeze(-1)
            self._commit(rows, block_logits[rows])

    def _draws(self, rows: list[int]) -> torch.Tensor | None:
        """One U[0, 1) draw per block position of ``rows`` at temperature > 0 (None at 0), each
        sequence from its own generator: what a row samples does not depend on the batch it shares."""
        if self.cfg.temperature == 0:
            return None
        gens = self.slots.generators
        return torch.cat([torch.rand(self.B, generator=gens[s], device=self.device) for s in rows])

    def _commit(self, rows_R: torch.Tensor | None, logits_RBV: torch.Tensor) -> None:
        """Denoising step of rows ``rows_R`` (None: every slot) from their current block's logits.

        A row whose block is complete moves to its next block or, at EOS or its cap, leaves.
        """
        cfg, B, s, meta = self.cfg, self.B, self.slots, self.meta
        if rows_R is None:
            take, rows = (lambda t: t), list(range(len(s.seq)))
        else:
            take, rows = (lambda t: t[rows_R]), rows_R.tolist()

        def put(name: str, value: torch.Tensor) -> None:
            if rows_R is None:  # every slot: the new tensor is the state
                setattr(s, name, value)
            else:
                getattr(s, name)[rows_R] = value

        block_R, cap_R = take(s.block), take(s.cap)
        step_in_block, steps = take(s.step_in_block), take(s.steps)
        ids, block_steps, todo, ended = self.denoise(
            logits_RBV, take(s.ids), take(s.todo), block_R, cap_R, step_in_block, steps, take(s.block_steps),
            self.schedule, meta.mask_token_id, self.eos_ids, cfg.temperature, cfg.top_k, cfg.top_p,
            self._draws(rows), cfg.remasking, cfg.threshold,
        )  # fmt: skip
        nxt = self.advance(
            ids, block_steps, todo, ended, block_R, cap_R, step_in_block, steps, take(s.prev_ids), take(s.carry),
            meta.mask_token_id,
        )  # fmt: skip
        seq_R = take(s.seq)
        for name, value in zip(("ids", "block_steps", "todo", "block", "step_in_block", "steps", "prev_ids"), nxt):
            put(name, value)
        put("carry", nxt[7])
        complete, leave = nxt[8], nxt[9]
        if not bool(complete.any()):
            return
        self._layout += 1  # rows move to a new block or leave: the next step's mask is built afresh
        done = complete.nonzero().squeeze(-1)
        # the completed blocks as they were committed, in one transfer: (seq, ids, step map, steps, leave, ended)
        records = torch.cat(
            [seq_R[:, None], ids, block_steps, nxt[5][:, None], leave[:, None].long(), ended[:, None].long()], 1
        )[done].tolist()
        for rec in records:
            q = rec[0]
            self.out_ids[q].extend(rec[1 : 1 + B])
            self.out_steps[q].extend(rec[1 + B : 1 + 2 * B])
            if rec[2 + 2 * B]:  # it leaves: at EOS (ended) or its cap
                self.nfe[q], self.ended[q] = rec[1 + 2 * B], bool(rec[3 + 2 * B])
        if bool(leave.any()):
            s.seq[leave if rows_R is None else rows_R[leave]] = -1
