"""Several processes (torchrun, accelerate launch): who writes, which device, which share.

A launcher starts one process per device and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK). Without it everything here is the single process: rank 0 of 1,
no process group, every guard open. The rules the stages follow:

- only the main process (rank 0) writes run files; the others wait at a barrier where they
  need what it wrote (`main_first`, `barrier`);
- work that splits by essay (prediction) is shared by `shard` and brought together on the main
  process by `gather`;
- each process uses the device of its LOCAL_RANK (`default_device` in ner.inference).

Processes the package starts itself on one machine (NER folds side by side, prediction shares)
are not ranks: `discourse_rl.launch.workers` launches them, clears these variables in their
environment, and hands out their shares with `shard`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from discourse_rl.core.common import DiscourseRLError

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run's files (always, without a launcher)."""
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def init() -> None:
    """Join the launcher's process group (NCCL on GPUs, gloo on the CPU); once per process."""
    if not distributed():
        return
    # torch: only under a launcher
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def barrier() -> None:
    if distributed():
        import torch.distributed as dist

        init()
        dist.barrier()


def from_main(compute: Callable[[], T]) -> T:
    """`compute()` on the main process, its result handed to every process (a decision all
    processes must share, e.g. whether a stage is up to date)."""
    if not distributed():
        return compute()
    # torch: only under a launcher
    import torch.distributed as dist

    init()
    box: list[Any] = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def shard(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """Share `index` of `count` (default: this process's of all of them): contiguous blocks, so
    the shares back to back are `items` in order."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}")
    n = len(items)
    start, end = n * index // count, n * (index + 1) // count
    return list(items[start:end])


def gather(part: dict[str, T]) -> dict[str, T]:
    """Every process's part of a mapping, merged on the main process (others get {})."""
    if not distributed():
        return dict(part)
    # torch: only under a launcher
    import torch.distributed as dist

    init()
    parts: list[Any] = [None] * world_size() if is_main() else []
    dist.gather_object(part, parts if is_main() else None, dst=0)
    merged: dict[str, T] = {}
    for p in parts:
        merged.update(p)
    return merged


def require_one_process(what: str) -> None:

    if distributed():
        raise DiscourseRLError(
            f"{what} runs in one process: start it without torchrun / accelerate launch "
            f"(this is process {rank()} of {world_size()})"
        )
