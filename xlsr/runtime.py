"""Where and how work runs: device choice, CPU threads, progress bars."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from .errors import ConfigError


def resolve_device(device: str | None) -> torch.device:
    """None -> cuda when available, else cpu. Asking for cuda without a GPU is a user error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but PyTorch sees no CUDA GPU")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """None -> float32 on CPU, float16 on GPU (inference)."""
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r} (use float32, float16 or bfloat16)")
    if names[dtype] == torch.float16 and device.type == "cpu":
        raise ConfigError("float16 needs a GPU; on the CPU use float32 or bfloat16")
    return names[dtype]


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(threads)


def progress(total: float | None = None, desc: str = "", unit: str = "it", quiet: bool = False, **kwargs) -> tqdm:
    """A progress bar on a terminal; silent in pipes, logs and with quiet=True."""
    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def audio_progress(desc: str, quiet: bool = False) -> tqdm:
    """The inference commands' bar, in seconds of audio: its total (hence the ETA) is set by the runner once it
    has read the files' durations."""
    return progress(None, desc, "s", quiet, bar_format="{desc}: {n:.0f}/{total_fmt} s of audio "
                    "[{elapsed}<{remaining}, {rate_fmt}] {postfix}")  # fmt: skip
