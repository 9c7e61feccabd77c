"""Batched block-diffusion generation with a KV cache of committed blocks (METHOD §3).

Layout per batch row: ``[left-padded prompt | block 0 | block 1 | ...]``. Each denoising step runs
one forward over the block being denoised against the cache. The forward that starts a new block
also carries the previous, now fully committed, block (or the prompt, for block 0): that block's KV
is written in the same pass instead of an extra one. After every forward the cache is cropped back
to the committed prefix, because the current block's keys change at every step.

Sequences that end (EOS) leave the batch at the next block boundary, cache rows included.
"""

from __future__ import annotations

import math

import torch

from opdlm.config.sampler import SamplerConfig
from opdlm.models.attention import attention_mask
from opdlm.models.geometry import inference_geometry
from opdlm.models.student import Student, block_forward
from opdlm.sampling.logits import sample_tokens
from opdlm.sampling.output import SampleBatch
from opdlm.sampling.remasking import block_progress, select_commits, transfer_schedule


def left_pad(prompts: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids_BP, lengths_B)``: prompts right-aligned in a ``(B, P)`` tensor padded with ``pad_id`` on the left."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    width = width or max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
    return ids, torch.tensor([len(p) for p in prompts], dtype=torch.long)


def block_logits_from(logits_NQV: torch.Tensor, block_size: int, logit_shift: bool, carried: torch.Tensor | None):
    """Logits predicting the current block's positions from a forward's kept logits.

    Without shift the last ``block_size`` outputs predict their own positions. With shift, output
    ``j - 1`` predicts ``j``; the block's first position is predicted by the last token before the
    block, whose logits are ``carried`` from the forward that contained it.
    """
    if not logit_shift:
        return logits_NQV[:, -block_size:]
    return torch.cat([carried[:, None], logits_NQV[:, -block_size:-1]], dim=1)


class BlockDiffusionSampler:
    """The KV-cached block sampler used by rollouts, evaluation and serving.

    Args:
        student: a loaded converted model (model, tokenizer, meta, backend).
    """

    def __init__(self, student: Student):
        self.student = student
        self.meta = student.meta

    @torch.inference_mode()  # no autograd bookkeeping at all; results leave as Python lists
    def generate(
        self,
        prompts: list[list[int]],
        cfg: SamplerConfig,
        generator: torch.Generator | None = None,
        decode_text: bool = True,
    ) -> SampleBatch:
        """Generate a response for each prompt (token ids in, token ids and step maps out)."""
        from transformers import DynamicCache

        model, meta, backend = self.student.model, self.meta, self.student.backend
        device = self.student.device
        block_size, n = cfg.block_size, len(prompts)
        n_blocks = math.ceil(cfg.max_new_tokens / block_size)
        L = n_blocks * block_size
        prompt_ids, prompt_lens = left_pad(prompts, meta.pad_token_id)
        P = prompt_ids.shape[1]
        ids = torch.cat([prompt_ids, torch.full((n, L), meta.mask_token_id, dtype=torch.long)], 1).to(device)
        # the prompt is prefilled with the model's own prompt geometry (the first forward of block 0)
        geom = inference_geometry(prompt_lens.to(device), P, L, block_size, meta.prompt_attention)
        eos_ids = torch.tensor(meta.eos_token_ids, device=device)
        target_L = torch.arange(L, device=device) < cfg.max_new_tokens
        schedule = torch.tensor(transfer_schedule(block_size, cfg.denoise_steps_per_block), device=device)

        response_all = torch.full((n, L), meta.mask_token_id, dtype=torch.long, device=device)
        step_all = torch.full((n, L), -1, dtype=torch.long, device=device)
        nfe = torch.zeros(n, dtype=torch.long, device=device)
        ended = torch.zeros(n, dtype=torch.bool, device=device)
        rows = torch.arange(n, device=device)  # original index of each active row
        steps_taken = torch.zeros(n, dtype=torch.long, device=device)  # per active row
        nfe_active = torch.zeros(n, dtype=torch.long, device=device)  # per active row
        cache = DynamicCache()
        kv_len = 0  # layout positions whose keys are in the cache
        carried = None  # logit_shift: logits predicting the current block's first position
        dtype = self.student.dtype

        for b in range(n_blocks):
            s0, e = P + b * block_size, P + (b + 1) * block_size
            r0 = b * block_size
            target_K = target_L[r0 : r0 + block_size]
            block_steps = torch.full((len(rows), block_size), -1, dtype=torch.long, device=device)
            step_in_block = torch.zeros(len(rows), dtype=torch.long, device=device)
            mask, mask_start = None, -1
            todo, ended_here = block_progress(ids[:, s0:e], meta.mask_token_id, eos_ids, target_K)
            working = todo.any(-1)
            while working.any():
                q_start = kv_len
                if mask_start != q_start:  # one mask per query range: reused by every later step of the block
                    mask, mask_start = attention_mask(geom, backend, dtype, q_start, e, e), q_start
                keep = block_size + 1 if (meta.logit_shift and q_start < s0) else block_size
                logits = block_forward(model, ids, geom, backend, q_start, e, cache, logits_to_keep=keep, mask=mask)
                cache.crop(-(e - s0))  # keep the committed prefix only
                kv_len = s0
                if meta.logit_shift and keep == block_size + 1:
                    carried = logits[:, 0]
                logits_NKV = block_logits_from(logits, block_size, meta.logit_shift, carried)
                tokens, conf = sample_tokens(
                    logits_NKV.reshape(-1, logits_NKV.shape[-1]),
                    cfg.temperature,
                    cfg.top_k,
                    cfg.top_p,
                    (meta.mask_token_id,),
                    generator,
                )
                tokens, conf = tokens.view(len(rows), block_size), conf.view(len(rows), block_size)
                quota = schedule[step_in_block.clamp(max=len(schedule) - 1)]
                commit = select_commits(conf, todo, quota, cfg.remasking, cfg.threshold) & working[:, None]
                ids[:, s0:e] = torch.where(commit, tokens, ids[:, s0:e])
                block_steps = torch.where(commit, steps_taken[:, None], block_steps)
                w = working.long()
                nfe_active += w
                steps_taken += w
                step_in_block += w
                todo, ended_here = block_progress(ids[:, s0:e], meta.mask_token_id, eos_ids, target_K)
                working = todo.any(-1)
            response_all[rows, r0 : r0 + block_size] = ids[:, s0:e]
            step_all[rows, r0 : r0 + block_size] = block_steps
            nfe[rows] = nfe_active
            ended[rows] |= ended_here
            still = ~ended_here
            if not still.any():
                break
            if not still.all():  # finished sequences leave the batch, cache rows included
                keep_idx = still.nonzero().squeeze(-1)
                cache.batch_select_indices(keep_idx)
                ids, geom, rows = ids[keep_idx], geom.select(keep_idx), rows[keep_idx]
                steps_taken, nfe_active = steps_taken[keep_idx], nfe_active[keep_idx]
                carried = carried[keep_idx] if carried is not None else None

        return self._collect(response_all, step_all, nfe, ended, cfg.max_new_tokens, decode_text)

    def _collect(self, response_all, step_all, nfe, ended, max_new_tokens, decode_text) -> SampleBatch:
        meta = self.meta
        eos = set(meta.eos_token_ids)
        out_ids, out_steps = [], []
        for i in range(response_all.shape[0]):
            ids = response_all[i, :max_new_tokens].tolist()
            steps = step_all[i, :max_new_tokens].tolist()
            cut = next((k + 1 for k, t in enumerate(ids) if t in eos), None)
            if cut is None:  # length cap: keep the committed prefix
                cut = next((k for k, t in enumerate(ids) if t == meta.mask_token_id), len(ids))
            out_ids.append(ids[:cut])
            out_steps.append(steps[:cut])
        texts = [self.student.tokenizer.decode(r, skip_special_tokens=True) for r in out_ids] if decode_text else []
        return SampleBatch(out_ids, out_steps, nfe.tolist(), ended.tolist(), texts)
