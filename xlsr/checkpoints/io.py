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
import warnings
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


class FairseqDictionary:
    """Stands in for fairseq's `Dictionary` (pickled whole in an audio_classification checkpoint's
    `task_state`): its state is kept as data, and `symbols` (the label order) read from it; none of
    fairseq's code runs."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    @property
    def symbols(self) -> list[str]:
        symbols = self.state.get("symbols")
        return [str(s) for s in symbols] if isinstance(symbols, list) else []


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
    (FairseqDictionary, "fairseq.data.dictionary.Dictionary"),
]


# What a user can pass instead, said in every error about a file that is not one of them.
FORMATS_READ = "xlsr reads a Hugging Face model directory, a fairseq .pt checkpoint or an xlsr checkpoint"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (since PyTorch 1.6) is a zip archive
_PICKLE_MAGIC = b"\x80"  # the legacy format (fairseq's older files) starts with pickle protocol 2's opcode


def _not_a_checkpoint(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint: {what}; {FORMATS_READ}")


def _not_torch_zip(path: Path) -> str | None:
    """For a file that starts like a zip archive: what it is instead of a torch file, or None."""
    if not zipfile.is_zipfile(path):
        return "a truncated or damaged zip archive (a PyTorch file is a complete zip)"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return "a damaged zip archive"
    if not any(n.endswith("/data.pkl") for n in names):
        return "a zip archive, but not a PyTorch file (it holds no data.pkl)"
    return None


def _detail(e: BaseException) -> str:
    """torch's reason on one line, without its advice to re-run torch.load unsafely."""
    if isinstance(e, EOFError):
        return "it ends early"
    text = str(e)
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
    text = found.group(1) if found else text
    text = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text).split(". This is an internal")[0]
    if "weights_only" in text.lower() or "weights only" in text.lower():  # never pass on the unsafe advice
        return type(e).__name__
    return text[:200]


def safe_torch_load(path: str | Path) -> Any:
    """torch.load that never executes code from the file; tensors are loaded on the CPU.

    Any file torch cannot read -- random bytes, a truncated zip or pickle, a zip of something else -- is one
    CheckpointError line saying what the file is not and which formats xlsr reads; a pickle that names a
    global outside the allow-list gets a line naming it, and that it was not run.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise _not_a_checkpoint(path, "the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(4)
    zipped = head == _ZIP_MAGIC
    instead = _not_torch_zip(path) if zipped else None
    if instead is not None:
        raise _not_a_checkpoint(path, instead)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": about the file, not for the user
            # new-style torch files are memory-mapped: no second copy in RAM
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:  # torch's loaders raise anything (IndexError, struct.error, ...) on damaged bytes
        found = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise CheckpointError(
                f"{path}: refused to load: the file asks to run or build {found.group(1)}, which a model "
                "checkpoint never needs; it was not run (xlsr unpickles only tensors and plain data)"
            ) from None
        if zipped:
            raise _not_a_checkpoint(path, f"a damaged PyTorch zip file ({_detail(e)})") from None
        if head.startswith(_PICKLE_MAGIC):
            kind = "a pickle that is not a PyTorch checkpoint, or a damaged one"
            raise _not_a_checkpoint(path, f"{kind} ({_detail(e)})") from None
        raise _not_a_checkpoint(path, "neither a PyTorch zip archive nor a pickle") from None


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
