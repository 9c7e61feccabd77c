"""A KV cache in which every batch row has its own length: rows at different blocks share one forward.

Layout of row ``i`` (columns of the per-layer ``(S, K, C, D)`` key and value tensors)::

    [ its prompt (left-padded within its prefill group) | committed blocks ... | free ]
      0                                                   lengths[i]

Next to the keys it keeps each column's mask labels (``kind``, ``block``, ``valid``; see
:mod:`opdlm.models.geometry`), so the mask of a forward is built by the same rule as training's and
never from a row's position alone. A forward writes its ``W`` query tokens' keys at columns
``[lengths[i], lengths[i] + W)`` of each row, so one model call serves rows of any length; the keys it
attends to are columns ``[0, max_i(lengths[i]) + W)``, and a row's columns past its own
``lengths[i] + W`` are stale or empty and never attended. Committing a token is only moving
``lengths[i]`` past it: nothing is copied. Rows at different lengths write at their own columns by
one ``index_copy_`` per tensor (:meth:`RowKVCache.write_plan`).

The object duck-types the part of Hugging Face's ``Cache`` a decoder layer calls (``update``), so
an unmodified ``transformers`` model writes into it; the sampler's own forward writes by the same
plan through the same function (:func:`opdlm.models.decode_forward.write_kv`).
"""

from __future__ import annotations

import torch

from opdlm.models.decode_forward import write_kv
from opdlm.models.geometry import CLEAN


def fill_holes(keep_S: torch.Tensor) -> torch.Tensor:
    """An order of the kept rows ``keep_S`` (ascending) in which the fewest rows change place.

    Kept rows below ``len(keep_S)`` stay where they are; the kept rows beyond it fill the holes left
    by the rows that were dropped. Example: keep ``[0, 2, 3, 5]`` of 6 rows -> ``[0, 5, 2, 3]``.
    """
    n = len(keep_S)
    stay = keep_S[keep_S < n]
    order = torch.full((n,), -1, dtype=torch.long, device=keep_S.device)
    order[stay] = stay
    order[order < 0] = keep_S[keep_S >= n]
    return order


class RowKVCache:
    """Per-row KV cache of committed tokens for ``rows`` batch slots.

    Attributes:
        lengths_S: committed columns of each slot.
        kind_SC, block_SC, valid_SC: mask labels of every column (``valid`` False on padding and free columns).
    """

    def __init__(self, rows: int, device: torch.device):
        self.device = device
        self.lengths_S = torch.zeros(rows, dtype=torch.long, device=device)
        self.kind_SC = torch.zeros((rows, 0), dtype=torch.long, device=device)
        self.block_SC = torch.zeros((rows, 0), dtype=torch.long, device=device)
        self.valid_SC = torch.zeros((rows, 0), dtype=torch.bool, device=device)
        self.keys: list[torch.Tensor] = []  # per layer (S, H, C, D); allocated by the first update
        self.values: list[torch.Tensor] = []
        self._rows: torch.Tensor | None = None  # slots written by the current forward (None: all of them)
        self._key_end = 0
        self._step_spec = None  # what begin_step prepared: (row index, columns, key end, common start or None)
        self._row_index = self._cols_SW = self._same_start = None
        self._flat_plan: torch.Tensor | None = None  # write_plan's flat index for the current step spec

    @property
    def rows(self) -> int:
        return self.lengths_S.shape[0]

    @property
    def capacity(self) -> int:
        return self.kind_SC.shape[1]

    def reserve(self, columns: int) -> None:
        """Grow every row to at least ``columns`` columns (by half again, so growth is amortised)."""
        if columns <= self.capacity:
            return
        self._flat_plan = None  # (its indices count columns)
        extra = max(columns, self.capacity + self.capacity // 2) - self.capacity

        def grow(t, fill):
            pad = torch.full((t.shape[0], extra), fill, dtype=t.dtype, device=t.device)
            return torch.cat([t, pad], 1)

        self.kind_SC, self.block_SC = grow(self.kind_SC, CLEAN), grow(self.block_SC, 0)
        self.valid_SC = grow(self.valid_SC, False)
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                pad = t.new_zeros((t.shape[0], t.shape[1], extra, t.shape[3]))
                store[i] = torch.cat([t, pad], 2)

    def begin_step(
        self, kind_SW: torch.Tensor, block_SW: torch.Tensor, valid_SW: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prepare a forward of ``W`` query tokens per slot, written after each slot's committed prefix.

        Args:
            kind_SW, block_SW, valid_SW: the query tokens' mask labels (``valid`` False on padding queries).

        Returns:
            ``(query_index_SW, key_kind_ST, key_block_ST, key_valid_ST)``: each query's column in its
            row, and the labels of the ``T`` key columns this forward attends to (columns past a row's
            own queries are invalid).
        """
        W = kind_SW.shape[1]
        cols_SW = self.lengths_S[:, None] + torch.arange(W, device=self.device)[None, :]
        shortest, longest = int(self.lengths_S.min()), int(self.lengths_S.max())
        end = longest + W
        self.reserve(end)
        rows = torch.arange(self.rows, device=self.device)[:, None]
        self.kind_SC[rows, cols_SW], self.block_SC[rows, cols_SW] = kind_SW, block_SW
        self.valid_SC[rows, cols_SW] = valid_SW
        # rows of one length (batch 1, or every row at the same block) write a plain slice
        self._step_spec = (rows, cols_SW, end, shortest if shortest == longest else None)
        self._flat_plan = None
        self.resume_step()
        in_range_ST = torch.arange(end, device=self.device)[None, :] < (self.lengths_S + W)[:, None]
        return cols_SW, self.kind_SC[:, :end], self.block_SC[:, :end], self.valid_SC[:, :end] & in_range_ST

    def resume_step(self) -> None:
        """Prepare a forward with exactly the queries, lengths and labels of the last :meth:`begin_step`."""
        self._rows = None
        self._row_index, self._cols_SW, self._key_end, self._same_start = self._step_spec

    def allocate(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        """Allocate every layer's key and value tensors before a forward that writes by :meth:`write_plan`.

        (A Hugging Face forward allocates them in :meth:`update` instead, from the shapes it writes.)
        """
        while len(self.keys) < layers:
            shape = (self.rows, kv_heads, self.capacity, head_dim)
            self.keys.append(torch.zeros(shape, dtype=dtype, device=self.device))
            self.values.append(torch.zeros(shape, dtype=dtype, device=self.device))

    def write_plan(self) -> tuple[int, torch.Tensor, int, int]:
        """How the prepared forward stores its keys: ``(mode, index, start, key_end)``, as
        :func:`opdlm.models.decode_forward.write_kv` (which both forwards write through) takes it."""
        if self._rows is not None:
            return 0, self._rows, 0, self._key_end
        if self._same_start is not None:
            return 1, self.lengths_S, self._same_start, self._key_end
        if self._flat_plan is None:  # once per begin_step: later steps at the same layout reuse it
            S, K, C, _ = self.keys[0].shape
            heads = torch.arange(K, device=self.device)[None, :, None]
            self._flat_plan = ((self._row_index[:, :, None] * K + heads) * C + self._cols_SW[:, None, :]).reshape(-1)
        return 2, self._flat_plan, 0, self._key_end

    def begin_prefill(
        self, slots_R: torch.Tensor, kind_RW: torch.Tensor, block_RW: torch.Tensor, valid_RW: torch.Tensor
    ) -> None:
        """Prepare a forward of only the slots ``slots_R``, which start empty: their tokens fill columns ``[0, W)``.

        Those rows see only their own new keys, so the forward needs no read of the cache.
        """
        W = kind_RW.shape[1]
        self.reserve(W)
        self.lengths_S[slots_R] = 0
        self.kind_SC[slots_R, :W], self.block_SC[slots_R, :W], self.valid_SC[slots_R, :W] = kind_RW, block_RW, valid_RW
        self._rows, self._key_end = slots_R, W

    def update(self, key_states, value_states, layer_idx: int, cache_kwargs=None):
        """Store the forward's new keys and values (``(S or R, K, W, D)``); return the ones to attend to."""
        if layer_idx == len(self.keys):  # first forward: allocate from the model's own shapes and dtypes
            shape = (self.rows, key_states.shape[1], self.capacity, key_states.shape[3])
            self.keys.append(key_states.new_zeros(shape))  # (under autocast keys and values may differ)
            self.values.append(value_states.new_zeros(shape))
        mode, index, start, end = self.write_plan()
        return write_kv(self.keys[layer_idx], self.values[layer_idx], key_states, value_states, mode, index, start, end)

    def commit(self, advance_S: torch.Tensor) -> None:
        """Keep the first ``advance_S[i]`` tokens the last forward wrote in each row (the others are dropped)."""
        self.lengths_S += advance_S

    def select(self, slots: torch.Tensor) -> None:
        """Keep only ``slots`` (in that order): the cache's row ``i`` becomes its row ``slots[i]``.

        Keys and values are moved only for the rows that change place (``slots[i] != i``), into the
        first ``len(slots)`` rows of the same storage, which are then kept as a view: dropping the
        rows that left a batch costs a copy of the rows that fill their places, not of the whole
        cache (:func:`fill_holes` gives the order that moves fewest).
        """
        n = len(slots)
        self._flat_plan = None
        self.lengths_S = self.lengths_S[slots]
        self.kind_SC, self.block_SC, self.valid_SC = self.kind_SC[slots], self.block_SC[slots], self.valid_SC[slots]
        moved = (slots != torch.arange(n, device=slots.device)).nonzero().squeeze(-1)
        if len(moved):
            source = slots[moved]
            for t in (*self.keys, *self.values):
                t[moved] = t[source]  # (the right side is gathered first: sources may be overwritten)
        self.keys = [t[:n] for t in self.keys]
        self.values = [t[:n] for t in self.values]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Longest committed row (for callers that ask; the sampler always passes position ids and a 4-D mask)."""
        return int(self.lengths_S.max()) if self.rows else 0
