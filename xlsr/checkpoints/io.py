"""Safe reading and atomic writing of model files.

Reading: every pickle goes through `torch.load(weights_only=True)`, whose unpickler only builds
tensors and plain containers. On top of torch's own list we allow a few plain-data types that genuine
fairseq checkpoints contain (argparse.Namespace for old-style `args`, NumPy scalars in the
bookkeeping) and replace fairseq's logging meters with inert stand-ins. Anything else a pickle asks
for -- `os.system`, `builtins.eval`, any class -- is refused with an error naming it, before it runs.

Writing: files and directories are written next to their destination and renamed into place, so a
killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError


class _InertObject:
    """Stands in for a bookkeeping class (fairseq's meters): keeps its state, runs none of its code."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _InertDict(dict):
    """Stands in for a bookkeeping dict subclass (fairseq's `MetersDict`)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


_FAIRSEQ_METERS = ("AverageMeter", "SumMeter", "ConcatTensorMeter", "TimeMeter", "StopwatchMeter", "Meter")

from numpy._core.multiarray import scalar as _np_scalar  # noqa: E402  (numpy >= 2)

SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.dtype,
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    *[type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")],
    *[(_InertObject, f"fairseq.logging.meters.{name}") for name in _FAIRSEQ_METERS],
    (_InertDict, "fairseq.logging.meters.MetersDict"),
]


def safe_torch_load(path: str | Path) -> Any:
    """torch.load that never executes code from the file; tensors are loaded on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    mmap = zipfile.is_zipfile(path)  # new-style torch files can be memory-mapped: no second copy in RAM
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not found:  # a damaged or foreign file rather than a forbidden object
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
        what = found.group(1)
        raise CheckpointError(
            f"{path}: refused to load: the file asks to run or build {what}, which a model checkpoint never "
            "needs (only tensors and plain data are allowed, so no code from the file is executed)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `dest`; on success it replaces `dest` in one rename.

    Works for a file or a directory written at the yielded path. On an exception the temporary is
    removed and `dest` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    target = tmp / "out"
    try:
        yield target
        if target.is_dir() and dest.is_dir():
            old = tmp / "old"
            os.replace(dest, old)  # a directory cannot be replaced in place: move the old one aside first
        os.replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: Any, dest: str | Path) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
