"""The one inference driver behind `xlsr transcribe`, `identify`, `features` and `translate`.

Every batch command does the same around its model: expand the inputs (files, folders, manifests and the
other data sources of `data/sources.py`, or utterances already read), skip the inputs whose output already
exists, run the rest (the command's `process`), write each output atomically as soon as it is done, give every
bad input (or bad row of a data source) one line and carry on with the others, print a summary and choose
the exit code. Under `torchrun` the inputs are split across the processes in length-balanced shards; each
process writes its own outputs, and every process ends with the results of all of them (rank 0 prints).

A command provides: a result class (a `FileResult` with its own fields and `to_dict`), `process(paths,
samples)` that yields `(index, result)` for the paths it is given (the runners of `inference.py` do the
work), and a `render(result, format)` for the files it writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .audio import audio_duration
from .checkpoints.io import atomic_path
from .data.manifest import AudioPath, Columns, Utterance, output_names
from .data.sources import InputError, expand_inputs, source_kind
from .errors import ConfigError, XlsrError


@dataclass
class FileResult:
    """What every command's per-file result has."""

    path: str
    model: str = ""
    error: str | None = None  # one line: why this input failed
    skipped: bool = False  # its output already existed (--skip-existing)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "model": self.model, "error": self.error}


R = TypeVar("R", bound=FileResult)
Process = Callable[[list[AudioPath], list[int | None]], Iterator[tuple[int, FileResult]]]


def check_format(format: str, formats: tuple[str, ...]) -> None:
    if format not in formats:
        raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(formats)}")


def run_inputs(
    audio: list[str | Path | Utterance],
    process: Process,
    make: type[R],
    model: str,
    output_dir: str | Path | None = None,
    format: str = "txt",
    skip_existing: bool = False,
    render: Callable[[R, str], str | bytes] | None = None,
    on_result: Callable[[R], None] | None = None,
    audio_column: str | None = None,
) -> list[R]:
    """Runs one batch command over `audio`; returns one result per input, in input order (see the module).
    `audio_column` names the audio column of the data sources among the inputs (tables, TSVs)."""
    entries = expand_inputs(audio, Columns(audio=audio_column))
    items = {i: u for i, u in enumerate(entries) if isinstance(u, Utterance)}
    names = dict(zip(items, output_names([u.path for u in items.values()])))
    out_dir = Path(output_dir) if output_dir else None
    if skip_existing and out_dir is None:
        raise ConfigError("--skip-existing needs --output-dir")
    results: dict[int, R] = {}

    def finish(i: int, r: R) -> None:
        results[i] = r
        if out_dir is not None and r.error is None and not r.skipped and render is not None:
            dest = out_dir / f"{names[i]}.{format}"
            write_atomic(dest, render(r, format))
            if hasattr(r, "output"):  # results that name the file they were written to
                r.output = str(dest)
        if on_result is not None:
            on_result(r)

    todo = []
    for i, entry in enumerate(entries):
        if isinstance(entry, InputError):
            finish(i, make(entry.path, model=model, error=entry.cause))
        elif out_dir is not None and skip_existing and (out_dir / f"{names[i]}.{format}").exists():
            finish(i, make(str(entry.path), model=model, skipped=True))
        else:
            todo.append(i)
    world = _world()
    if world is not None:
        todo = shard(todo, [items[i] for i in todo], *world)
    for k, r in process([items[i].path for i in todo], [items[i].samples for i in todo]):
        finish(todo[k], r)
    if world is not None:
        results = _gather(results)
    return [results[i] for i in sorted(results)]


def write_atomic(dest: Path, content: str | bytes) -> None:
    with atomic_path(dest) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")


# -- many processes (torchrun) -------------------------------------------------------------------------
def _world() -> tuple[int, int] | None:
    """(rank, world size) under torchrun with more than one process, after joining the process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # results are gathered as Python objects: gloo serves every device
    return dist.get_rank(), dist.get_world_size()


def shard(todo: list[int], utterances: list[Utterance], rank: int, world: int) -> list[int]:
    """This process's share of `todo`: longest first to the least loaded process, so shards hold about the
    same audio (lengths from the manifest's `samples` or the file header; unreadable files weigh nothing)."""
    seconds = []
    for u in utterances:
        try:
            seconds.append(u.samples / 16000 if u.samples else audio_duration(u.path))
        except XlsrError:
            seconds.append(0.0)
    load = [0.0] * world
    mine = []
    for k in sorted(range(len(todo)), key=lambda k: (-seconds[k], k)):
        r = min(range(world), key=lambda j: (load[j], j))
        load[r] += seconds[k]
        if r == rank:
            mine.append(todo[k])
    return sorted(mine)


def _gather(results: dict[int, R]) -> dict[int, R]:
    import torch.distributed as dist

    everyone: list[dict[int, R]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, results)
    joint: dict[int, R] = {}
    for part in everyone:
        joint.update(part)
    return joint


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# -- what the command line prints ----------------------------------------------------------------------
STREAM_FORMATS = ("txt", "json")  # the formats that several inputs can share on stdout


def check_stdout_format(format: str, output_dir: str | Path | None, audio: list[str | Path]) -> None:
    """Before any work: a format of its own (srt, vtt, tsv) on stdout takes one audio file, not several, a folder
    or a data source (they cannot share one stream); the rule depends on the arguments, not on what they hold."""
    if output_dir is not None or format in STREAM_FORMATS:
        return
    if len(audio) > 1 or any(Path(a).is_dir() or source_kind(Path(a)) is not None for a in audio):
        raise ConfigError(f"--format {format} prints one audio file; for several, a folder or a data source give "
                          "--output-dir (one file per input)")  # fmt: skip


def print_results(
    results: list[R], format: str, line: Callable[[R], str], render: Callable[[R, str], str], stream=None
) -> None:
    """stdout, the same shape whatever the number of inputs: `txt` one line per file (`line(result)`, which
    starts with the path), `json` one JSON object per line (JSON Lines); a format of its own (srt, vtt, tsv)
    is printed for a single input only, since several cannot share one stream."""
    stream = stream or sys.stdout
    ok = [r for r in results if r.error is None and not r.skipped]
    if format == "txt":
        stream.write("".join(line(r) + "\n" for r in ok))
    elif format == "json":
        stream.write("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in ok))
    elif len(results) > 1:  # the command checked its arguments first (check_stdout_format)
        raise ConfigError(f"--format {format} for several inputs needs --output-dir (one file per input)")
    else:
        stream.write("".join(render(r, format) for r in ok))


def summarize(results: list[FileResult], what: str, stream=None, quiet: bool = False) -> int:
    """One line per failed input, then a summary line; the exit code is 1 when any input failed. Under torchrun
    every process has every result: rank 0 prints (quiet elsewhere), and every process exits with the same code."""
    stream = stream or sys.stderr
    failed = [r for r in results if r.error]
    if quiet:
        return 1 if failed else 0
    skipped = sum(r.skipped for r in results)
    for r in failed:
        print(f"xlsr: error: {r.path}: {r.error}", file=stream)
    for r in results:  # said on stdout as an empty text (transcribe) or `no speech` (identify), and here
        if getattr(r, "no_speech", False):
            print(f"xlsr: note: {r.path}: no speech found (--no-speech-check processes it anyway)", file=stream)
    done = len(results) - len(failed) - skipped
    if failed or skipped:
        extra = f", {skipped} skipped (output exists)" if skipped else ""
        print(f"xlsr: {done} {what} done, {len(failed)} failed{extra}", file=stream)
    return 1 if failed else 0
