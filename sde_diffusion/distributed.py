"""Data-parallel runs under ``torchrun``: the process group, batches by global index, gathering.

``torchrun`` (or ``srun`` with the same environment) starts one process per device
and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` joins that group (NCCL on CUDA, gloo on CPU) with a timeout
on every collective, so a rank that dies stops the others instead of hanging them.

Work on ``total`` items is cut into the global batches ``[k b, (k+1) b)``, the same
whatever the world size, and rank ``r`` of ``W`` takes batches ``r, r + W, r + 2W, ...``
(:func:`local_batches`).  A result computed batch by batch from the items' global
indices (per-sample noise keys, per-batch seeds) is then the same bit for bit on any
number of processes, and :func:`map_batches` puts it back in global order on rank 0.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import ArgumentError

__all__ = [
    "DEFAULT_TIMEOUT",
    "barrier",
    "init_distributed",
    "local_batches",
    "map_batches",
    "rank_and_world",
    "report_failure",
    "reported_failures",
    "stream_batches",
    "sum_over_ranks",
]

DEFAULT_TIMEOUT = timedelta(minutes=10)
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64)


def init_distributed(timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group the launcher describes; ``False`` for a single process.

    NCCL with one device per local rank where CUDA is available, gloo otherwise.
    A collective that waits longer than ``timeout`` (a rank died or hangs) raises
    instead of blocking for ever; the group is left when the process exits.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    atexit.register(_leave)  # an undestroyed group can abort the process as it exits
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def _store():
    """The group's key-value store (the launcher's), or ``None`` where torch hides it."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def report_failure(message: str) -> None:
    """Leave this rank's reason for stopping where the other ranks can read it."""
    store = _store()
    if store is not None and rank_and_world()[1] > 1:
        with contextlib.suppress(RuntimeError, OSError):  # the store went first: no one to tell
            store.set(f"sde_diffusion/failed/{dist.get_rank()}", message)


def reported_failures() -> dict[int, str]:
    """``rank -> message`` for every rank that reported a failure (none are waited for)."""
    store, (_, world) = _store(), rank_and_world()
    found: dict[int, str] = {}
    for rank in range(world if store is not None else 0):
        key = f"sde_diffusion/failed/{rank}"
        try:
            if store.check([key]):
                found[rank] = store.get(key).decode(errors="replace")
        except (RuntimeError, OSError):
            break
    return found


def sum_over_ranks(values: list[float]) -> list[float]:
    """``values`` summed over every rank (one ``all_reduce``; unchanged in one process)."""
    if rank_and_world()[1] == 1:
        return list(values)
    summed = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(summed)
    return summed.tolist()


def _collective_device() -> torch.device:
    """Where this rank's collectives run: its GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def local_batches(
    total: int, batch_size: int, rank: int | None = None, world: int | None = None
) -> list[tuple[int, int]]:
    """``(start, stop)`` of the global batches rank ``rank`` of ``world`` computes.

    Batch ``k`` covers items ``[k b, min((k+1) b, total))`` and belongs to rank
    ``k mod world``; the defaults are this process's rank and world.
    """
    if total < 0 or batch_size < 1:
        raise ArgumentError(f"need total >= 0 and batch_size >= 1, got {total} and {batch_size}")
    if rank is None or world is None:
        rank, world = rank_and_world()
    starts = range(rank * batch_size, total, world * batch_size)
    return [(start, min(start + batch_size, total)) for start in starts]


def stream_batches(
    fn: Callable[[int, int], Tensor], total: int, batch_size: int
) -> Iterator[tuple[int, int, Tensor]]:
    """Run ``fn(start, stop)`` on this rank's batches; ``(start, stop, rows)`` in global order.

    Memory holds one round of batches, not the result: under a process group every
    rank computes one batch per round and rank 0 receives the round's rows (one
    ``gather``) and yields them; the other ranks yield nothing but must still run the
    iterator to its end, since each round is a collective.
    """
    rank, world = rank_and_world()
    mine = local_batches(total, batch_size)
    if world == 1:
        for start, stop in mine:
            yield start, stop, fn(start, stop)
        return
    batches = -(-total // batch_size)
    for k in range(-(-batches // world)):  # rounds
        local = _with_template([fn(*mine[k])] if k < len(mine) else [])
        padded = local.new_zeros((batch_size, *local.shape[1:]))
        padded[: len(local)] = local
        bucket = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
        dist.gather(padded, bucket, dst=0)
        for r in range(world if rank == 0 else 0):
            start = (k * world + r) * batch_size
            if start < total:
                stop = min(start + batch_size, total)
                yield start, stop, bucket[r][: stop - start]


def map_batches(fn: Callable[[int, int], Tensor], total: int, batch_size: int) -> Tensor | None:
    """Run ``fn(start, stop)`` on this rank's batches; rows of all ranks in global order.

    ``fn`` returns one row per item of ``[start, stop)``.  A single process returns
    the concatenation; under a process group rank 0 receives every rank's rows
    (:func:`stream_batches`) and returns them in global order, the other ranks return
    ``None``.
    """
    parts = [rows for _, _, rows in stream_batches(fn, total, batch_size)]
    return torch.cat(parts) if rank_and_world()[0] == 0 else None


def _with_template(parts: list[Tensor]) -> Tensor:
    """This rank's rows; a rank without batches takes rank 0's row shape and dtype."""
    device = _collective_device()
    meta = torch.zeros(10, dtype=torch.int64, device=device)
    if dist.get_rank() == 0:
        shape = parts[0].shape[1:]
        if len(shape) > 8:
            raise ArgumentError(f"rows of at most 8 dimensions can be gathered, got {len(shape)}")
        meta[0], meta[1] = _DTYPES.index(parts[0].dtype), len(shape)
        meta[2 : 2 + len(shape)] = torch.tensor(shape, dtype=torch.int64)
    dist.broadcast(meta, 0)
    if parts:
        return torch.cat(parts)
    code, ndim, *shape = meta.tolist()
    return torch.empty((0, *shape[:ndim]), dtype=_DTYPES[code], device=device)
