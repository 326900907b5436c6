"""Multi-process scoring under torchrun: rank r scores shard r of world (``shards.plan_shards``: whole
problems, balanced by length), the same shards as ``lark-fast score --shard r/world``.

``torchrun --nproc_per_node N $(which lark-fast) score ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
the process group (NCCL on CUDA, gloo on CPU) is only used for barriers and for rank 0 to tell the
others whether it holds the run's lock: results travel through the run directory's part files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0


def shard_from_env() -> Shard:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return Shard(rank, world, int(os.environ.get("LOCAL_RANK", str(rank))))


def init(shard: Shard, device: str) -> None:
    import torch.distributed as dist
    if shard.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")


def barrier(shard: Shard) -> None:
    import torch.distributed as dist
    if shard.world > 1 and dist.is_initialized():
        dist.barrier()


def broadcast(shard: Shard, value):
    """Rank 0's ``value`` on every rank (a small picklable object, e.g. an error message)."""
    import torch.distributed as dist
    if shard.world == 1 or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close() -> None:
    """Destroys the process group, if any: an undestroyed gloo group can abort the process at exit."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
