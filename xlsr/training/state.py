"""A training run's state on disk: what `checkpoint_*.pt` holds, how it is gathered, written and read back.

A checkpoint is an xlsr model checkpoint (`xlsr.checkpoints.checkpoint_dict`: config, weights, vocabulary,
preprocessing), so `xlsr.load_model` reads it, plus what resuming needs: the task, the training config,
the counters (update, epoch, data position, best metric, ...), the optimizer, the loss scaler and every
process's RNG state and data position. It is written atomically (`checkpoint_last.pt` always,
`checkpoint_<update>.pt` for the last `keep_interval_updates`, `checkpoint_best.pt`).

Under FSDP (`sharded`) the model and optimizer states are gathered whole onto the CPU of every process
(torch.distributed.checkpoint's full state dicts) and restored sharded, so a checkpoint never depends on
the number of processes that wrote it. Nothing here knows the model class: a model is rebuilt with
`type(model).from_state_dict(model.cfg, state)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..checkpoints.io import atomic_torch_save, safe_torch_load
from ..errors import XlsrError
from .distributed import World

CHECKPOINTS = "checkpoints"  # the folder under a run's output directory
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def step_name(update: int) -> str:
    return f"checkpoint_{update}.pt"


def model_state(step: torch.nn.Module, model: torch.nn.Module, sharded: bool) -> dict[str, Tensor]:
    """The whole network's weights on the CPU. `step` is the (possibly wrapped) module whose `.model` is
    `model`; under FSDP every process takes part and gets the full state."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(step, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("model."): v for k, v in state.items()}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def optimizer_state(step: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            step, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_optimizer_state(step: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, sharded: bool) -> None:
    """The inverse of `optimizer_state` (under FSDP each process keeps its shard of the full state)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(step, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


def rng_state() -> dict[str, Tensor]:
    """This process's global RNG states (dropout, layer drop fallbacks)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def set_rng_state(rng: dict[str, Tensor]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def gather(obj: Any, world: World) -> list[Any]:
    """Every process's `obj`, in rank order, on every process (a list of one without torchrun)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def write_checkpoint(directory: Path, names: list[str], state: dict[str, Any], keep_interval_updates: int) -> None:
    """Writes `state` atomically under each of `names`, then removes all but the last `keep_interval_updates`
    step checkpoints (`checkpoint_<update>.pt`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        atomic_torch_save(state, directory / name)
    steps = sorted(directory.glob("checkpoint_[0-9]*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    for old in steps[: max(len(steps) - keep_interval_updates, 0)]:
        old.unlink()


def read_checkpoint(path: Path, task: str, model_config: dict[str, Any], out_dir: Path) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None when `path` does not exist. Refuses (one line) a checkpoint of
    another task or another model: the output directory belongs to another run."""
    if not path.exists():
        return None
    state = safe_torch_load(path)
    if state.get("task") != task:
        raise XlsrError(f"{path}: a {state.get('task')} run, not {task}; use another --out")
    if state["config"] != model_config:
        raise XlsrError(f"{path}: this run's model differs from the one in {out_dir}; use another --out")
    return state


def plain_model(model: torch.nn.Module, state: dict[str, Tensor]) -> torch.nn.Module:
    """A copy of `model` with ordinary tensors, built from its gathered weights `state` (under FSDP the
    model's own parameters are shards), carrying the same tokenizer, preprocessing and origin."""
    net = type(model).from_state_dict(model.cfg, state)
    for attribute in ("tokenizer", "preprocessing", "source"):
        setattr(net, attribute, getattr(model, attribute))
    return net.eval()
