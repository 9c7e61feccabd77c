"""The few collective operations the trainer needs, as no-ops in a single process.

Multi-process runs (``torchrun`` / ``deepspeed`` launchers) share one output folder on a shared
file system. Rank 0 owns the folder: it checks it, converts the student, verifies checkpoints and
writes the run files; the other ranks wait for it and receive its answer (or its error, so every
rank fails with the same one line instead of some ranks hanging at the next collective).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from opdlm.errors import OpdlmError

T = TypeVar("T")


def launched_world() -> tuple[int, int]:
    """``(rank, world_size)`` as the launcher exported them (``(0, 1)`` for a plain ``python``)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(use_deepspeed: bool, device: torch.device) -> None:
    """Join the launcher's process group (DeepSpeed's or torch's); a single process gets a local one.

    DeepSpeed needs a process group even for one process, so a plain ``python`` launch gets the
    rendezvous variables of a world of one (a free local port).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    rank, world = launched_world()
    if world == 1:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if use_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
    elif world > 1:
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def is_distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks (ranks must agree on how many collectives follow)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (ints stay ints)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t)
    return [int(x) if isinstance(v, int) else float(x) for v, x in zip(values, t.tolist())]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its :class:`OpdlmError`) to every rank."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn()
        except OpdlmError as exc:
            error = (type(exc), str(exc))
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error[0](error[1])
    return result
