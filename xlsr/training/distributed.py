"""torch.distributed for training: started by torchrun, DDP or FSDP (torch's fully_shard).

`torchrun --nproc_per_node N -m xlsr pretrain ...` sets RANK, WORLD_SIZE and LOCAL_RANK; xlsr then joins
the process group (NCCL on GPUs, gloo on CPUs). Without torchrun everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..runtime import resolve_device


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str | None) -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if size > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{local}"
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(rank, size, local, dev)


def finish_world(world: World) -> None:
    """Waits for every process (the main one may still be writing a checkpoint), then leaves the process
    group: a process that exits with the group alive can abort in gloo's threads."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    """Sums a few numbers over all processes (one collective)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device if world.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def wrap(model: nn.Module, world: World, fsdp: bool, find_unused: bool, bf16: bool) -> nn.Module:
    """DDP, or fully_shard applied to each unit the network names (`fsdp_units()`: its Transformer blocks,
    say; without it, `encoder.layers`) and then to the whole model. `model` is the trainer's step module,
    whose `.model` is the network."""
    if not world.distributed:
        return model
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        kwargs = {"mp_policy": policy} if policy else {}
        net = model.model
        units = net.fsdp_units() if hasattr(net, "fsdp_units") else net.encoder.layers
        for unit in units:
            fully_shard(unit, **kwargs)
        fully_shard(model, **kwargs)
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
