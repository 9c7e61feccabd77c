"""One switch from a block-causal :class:`~opdlm.models.geometry.Geometry` to each backend's mask.

* ``sdpa``: boolean ``(B, 1, Q, T)`` mask, True = attend.
* ``eager``: additive float mask (0 or dtype min). A boolean mask under eager is added as 0/1 and
  masks nothing, which is silently wrong, so eager never gets one.
* ``flex_attention`` (GPU): a FlexAttention ``BlockMask`` built from the same elementwise rule;
  a dense 4-D tensor is never handed to flex (it crashed on CPU).
* ``flash_attention_2`` (GPU, the frozen teacher only): flash-attn kernels take no mask at all, only
  causal attention over unpadded sequences, which is exactly the teacher's forward over
  ``prompt + response``. It gets the 2-D padding mask ``(B, T)`` (1 = real token) and Hugging Face
  unpads the rows itself; block masks stay with FlexAttention.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from opdlm.models.geometry import Geometry, allowed_rule

BACKENDS = ("sdpa", "eager", "flex_attention")
FLASH = "flash_attention_2"
TEACHER_BACKENDS = (*BACKENDS, FLASH)


def check_backend(backend: str, allowed: tuple[str, ...] = BACKENDS) -> str:
    if backend not in allowed:
        from opdlm.errors import OpdlmError

        raise OpdlmError(f"unknown attention backend {backend!r}; choose from {', '.join(allowed)}")
    return backend


def flash_attn_installed() -> bool:
    """Whether the ``flash-attn`` package (the ``gpu`` extra) can be imported."""
    return importlib.util.find_spec("flash_attn") is not None


def flash_unavailable_reason(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why ``flash_attention_2`` cannot run the teacher here, or None when it can."""
    if not flash_attn_installed():
        return "the flash-attn package is not installed (pip install 'opdlm[gpu]' on a CUDA machine)"
    if torch.device(device).type != "cuda":
        return f"it needs a CUDA device, not {torch.device(device).type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it needs a bf16 or fp16 teacher, not {dtype} (set train.precision: bf16)"
    return None


def resolve_teacher_backend(
    requested: str, device: torch.device | str, dtype: torch.dtype, fallback: str | None = None
) -> str:
    """The attention backend the frozen teacher runs with.

    Args:
        requested: ``auto`` (flash-attn where it can run, else ``fallback``), or one of
            ``TEACHER_BACKENDS``. An explicit ``flash_attention_2`` that cannot run here warns once
            (saying why) and falls back: a missing optional GPU package must not stop a run that
            works without it, only make it slower.
        device: where the teacher's forward runs.
        dtype: the teacher's weight dtype (flash-attn takes only bf16/fp16).
        fallback: the run's own backend (default: flex on cuda, sdpa elsewhere).
    """
    fallback = check_backend(fallback or default_backend(device))
    if requested == "auto":
        return FLASH if flash_unavailable_reason(device, dtype) is None else fallback
    check_backend(requested, TEACHER_BACKENDS)
    if requested != FLASH:
        return requested
    reason = flash_unavailable_reason(device, dtype)
    if reason is None:
        return FLASH
    warnings.warn(
        f"train.teacher_attn_backend flash_attention_2 cannot run: {reason}; the teacher uses {fallback} instead",
        RuntimeWarning,
        stacklevel=2,
    )
    return fallback


def default_backend(device: torch.device | str) -> str:
    """FlexAttention on CUDA, SDPA elsewhere."""
    return "flex_attention" if torch.device(device).type == "cuda" else "sdpa"


def dense_to_backend(allowed_BQT: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean ``(B, Q, T)`` mask into the 4-D mask ``backend`` expects."""
    mask = allowed_BQT[:, None]
    if backend == "sdpa":
        return mask
    if backend == "eager":
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    raise ValueError(f"dense masks are for sdpa and eager, not {backend!r}")


def flex_block_mask(geom: Geometry, q_start: int, q_end: int, k_end: int):
    """A FlexAttention ``BlockMask`` for queries ``[q_start, q_end)`` and keys ``[0, k_end)``."""
    from torch.nn.attention.flex_attention import create_block_mask

    kind, block, valid = geom.kind_BT, geom.block_BT, geom.valid_BT

    def mask_mod(b, h, q_idx, kv_idx):
        q = q_idx + q_start
        return allowed_rule(
            kind[b, q], block[b, q], valid[b, q], q, kind[b, kv_idx], block[b, kv_idx], valid[b, kv_idx], kv_idx
        )

    return create_block_mask(mask_mod, B=kind.shape[0], H=None, Q_LEN=q_end - q_start, KV_LEN=k_end, device=kind.device)


def labelled_attention_mask(
    q_kind_BQ: torch.Tensor,
    q_block_BQ: torch.Tensor,
    q_valid_BQ: torch.Tensor,
    q_index_BQ: torch.Tensor,
    k_kind_BT: torch.Tensor,
    k_block_BT: torch.Tensor,
    k_valid_BT: torch.Tensor,
    backend: str,
    dtype: torch.dtype,
):
    """The mask of queries against keys that each carry their own labels, in ``backend``'s format.

    For layouts a :class:`Geometry` cannot describe: the sampler's per-row KV cache puts each row's
    queries at that row's own column (``q_index_BQ``), so rows at different lengths share a forward.
    Key ``t`` is column ``t`` of its row; the rule is :func:`allowed_rule`, as everywhere else.
    """
    if backend == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed_rule(
                q_kind_BQ[b, q_idx],
                q_block_BQ[b, q_idx],
                q_valid_BQ[b, q_idx],
                q_index_BQ[b, q_idx],
                k_kind_BT[b, kv_idx],
                k_block_BT[b, kv_idx],
                k_valid_BT[b, kv_idx],
                kv_idx,
            )

        B, Q = q_kind_BQ.shape
        return create_block_mask(mask_mod, B=B, H=None, Q_LEN=Q, KV_LEN=k_kind_BT.shape[1], device=q_kind_BQ.device)
    ik = torch.arange(k_kind_BT.shape[1], device=k_kind_BT.device)[None, None, :]
    allowed_BQT = allowed_rule(
        q_kind_BQ[:, :, None],
        q_block_BQ[:, :, None],
        q_valid_BQ[:, :, None],
        q_index_BQ[:, :, None],
        k_kind_BT[:, None, :],
        k_block_BT[:, None, :],
        k_valid_BT[:, None, :],
        ik,
    )
    return dense_to_backend(allowed_BQT, backend, dtype)


def causal_padding_mask(geom: Geometry, backend: str, dtype: torch.dtype):
    """The mask of a plain causal forward over ``[left-padded prompt | response]`` (the teacher's).

    ``geom`` must be an inference geometry with block size 1 (causal everywhere, padding masked).
    flash-attn gets the 2-D ``(B, T)`` padding mask Hugging Face unpads by (``None`` when nothing is
    padded); every other backend gets its usual mask of the same geometry.
    """
    if geom.block_size != 1:
        raise ValueError(f"a causal padding mask needs block size 1, got {geom.block_size}")
    if backend == FLASH:
        return None if bool(geom.valid_BT.all()) else geom.valid_BT.long()
    return attention_mask(geom, backend, dtype)


def attention_mask(
    geom: Geometry,
    backend: str,
    dtype: torch.dtype,
    q_start: int = 0,
    q_end: int | None = None,
    k_end: int | None = None,
):
    """The mask for queries ``[q_start, q_end)`` against keys ``[0, k_end)`` in ``backend``'s format."""
    q_end = geom.length if q_end is None else q_end
    k_end = q_end if k_end is None else k_end
    if backend == "flex_attention":
        return flex_block_mask(geom, q_start, q_end, k_end)
    return dense_to_backend(geom.allowed(q_start, q_end, k_end), backend, dtype)
