"""Hugging Face datasets and parquet files as data sources, read with pyarrow alone (the `[datasets]` extra).

- A `save_to_disk` folder: `state.json` lists its shards (`data-00000-of-00001.arrow`: Arrow IPC streams, as
  datasets' ArrowWriter writes them) and `dataset_info.json` holds its features. The shards are memory-mapped,
  as `datasets.load_from_disk` maps them, so a dataset costs no memory until its audio is read.
- Parquet files (what the Hub serves: `push_to_hub`, `to_parquet`, refs/convert/parquet).

The audio column is datasets' `Audio` feature as datasets stores it, a struct {bytes, path}: a row with bytes is
decoded from them (a `TableAudio`, which reads its cell when the audio is needed: from the memory map, or one
parquet row group at a time, a few of them cached); a row with only a path reads that file (relative to the
table's folder). A column of bytes, or of paths, is read the same way. A `ClassLabel` column (integers) gives
its label names. Rows are named `source[i]`, the i-th row of a dataset folder (`load_from_disk(source)[i]`) or of
a parquet file.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio import EncodedAudio
from ..errors import AudioError, DataError
from .manifest import BadRow, Columns, Rows, Utterance, make_utterance, resolve_columns

INSTALL = "pip install pyarrow (or pip install 'xlsr[datasets]')"


def _pyarrow(source: object):
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"{source}: reading Hugging Face datasets and parquet files needs pyarrow: {INSTALL}") from None
    return pyarrow


@dataclass(frozen=True)
class TableAudio(EncodedAudio):
    """The encoded audio in row `row` of `column` of the parquet or Arrow file `file`."""

    file: Path
    row: int
    column: str
    name: str  # how messages name it: `data.parquet[7]`
    inner: str | None = None  # the audio's own file name, when the table gives one
    name_path: Path | None = None  # what output files are named after (`manifest.output_names`)

    def __str__(self) -> str:
        return self.name

    @property
    def suffix(self) -> str:  # type: ignore[override]
        return Path(self.inner).suffix if self.inner else ""

    def read_bytes(self) -> bytes:
        pa = _pyarrow(self)
        try:
            cell = _cell(self.file, self.row, self.column, os.getpid())
        except (OSError, pa.ArrowException) as e:
            raise AudioError(self, f"cannot read the row ({str(e).splitlines()[0]})") from None
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(data, bytes):
            raise AudioError(self, f"no audio bytes in column {self.column!r}")
        return data


# -- reading cells (per process: a forked DataLoader worker opens its own) ------------------------------------
@functools.lru_cache(maxsize=32)
def _arrow_table(file: Path, pid: int):
    """An Arrow IPC stream (datasets' shards) or IPC file, memory-mapped: no copy of its buffers is made."""
    pa = _pyarrow(file)
    source = pa.memory_map(str(file))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(file))).read_all()


@functools.lru_cache(maxsize=32)
def _parquet(file: Path, pid: int):
    """(ParquetFile, the first row of each row group, and one past the last)."""
    pq = _pyarrow(file).parquet
    f = pq.ParquetFile(file)
    starts = [0]
    for g in range(f.metadata.num_row_groups):
        starts.append(starts[-1] + f.metadata.row_group(g).num_rows)
    return f, starts


@functools.lru_cache(maxsize=8)
def _row_group(file: Path, group: int, column: str, pid: int):
    return _parquet(file, pid)[0].read_row_group(group, columns=[column]).column(0)


def _cell(file: Path, row: int, column: str, pid: int) -> Any:
    if file.suffix.lower() != ".parquet":
        return _arrow_table(file, pid).column(column)[row].as_py()
    _, starts = _parquet(file, pid)
    group = next(g for g in range(len(starts) - 1) if starts[g] <= row < starts[g + 1])
    return _row_group(file, group, column, pid)[row - starts[group]].as_py()


# -- listing rows --------------------------------------------------------------------------------------------
def _features(schema, given: dict | None) -> dict:
    """datasets' features (column -> {"_type": ...}): given (dataset_info.json), else the schema's metadata."""
    if given:
        return given
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        return json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}


def _audio_default(pa, schema, features: dict) -> str | None:
    """`audio`, else the column datasets calls Audio, else the first {bytes, path} struct column."""
    if "audio" in schema.names:
        return "audio"
    typed = [c for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "Audio"]
    if typed and typed[0] in schema.names:
        return typed[0]
    structs = [f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
    return structs[0] if structs else None


def _audio_kind(pa, source: object, column: str, kind) -> str:
    """'struct' ({bytes, path}), 'bytes' or 'path'; DataError for a column that holds no audio."""
    if pa.types.is_struct(kind) and (kind.get_field_index("bytes") >= 0 or kind.get_field_index("path") >= 0):
        return "struct"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytes"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "path"
    raise DataError(f"{source}: column {column!r} holds {kind}, not audio (encoded bytes or file paths; "
                    "--audio-column names another)")  # fmt: skip


def _scalar(pa, kind) -> bool:
    """A column whose values can be a text, a label or a note (`Utterance.extra`)."""
    t = pa.types
    return (
        t.is_string(kind)
        or t.is_large_string(kind)
        or t.is_integer(kind)
        or t.is_floating(kind)
        or (t.is_boolean(kind) or t.is_dictionary(kind))
    )


def _field(pa, column, name: str):
    """Child `name` of a {bytes, path} column (None when the struct has no such child)."""
    return pa.compute.struct_field(column, name) if column.type.get_field_index(name) >= 0 else None


def _audio_cells(pa, file: Path, column: str, kind: str, pid: int) -> tuple[list[bool], list[str | None]]:
    """For every row of `file`: whether it has audio bytes, and the audio's path (None if none)."""
    if file.suffix.lower() != ".parquet":  # memory-mapped Arrow: the column is at hand, without a copy
        col = _arrow_table(file, pid).column(column)
        if kind == "path":
            return [False] * len(col), col.to_pylist()
        data, paths = (_field(pa, col, "bytes"), _field(pa, col, "path")) if kind == "struct" else (col, None)
        has = [False] * len(col) if data is None else pa.compute.is_valid(data).to_pylist()
        return has, [None] * len(col) if paths is None else paths.to_pylist()
    f = _parquet(file, pid)[0]
    n, kind_type = f.metadata.num_rows, f.schema_arrow.field(column).type
    if kind == "path":
        return [False] * n, f.read(columns=[column]).column(0).to_pylist()
    paths: list[str | None] = [None] * n
    if kind == "struct" and kind_type.get_field_index("path") >= 0:
        col = f.read(columns=[f"{column}.path"]).column(0)  # the paths alone (some pyarrow versions: in a struct)
        paths = (_field(pa, col, "path") if pa.types.is_struct(col.type) else col).to_pylist()
    if kind == "struct" and kind_type.get_field_index("bytes") < 0:
        return [False] * n, paths
    leaf = f"{column}.bytes" if kind == "struct" else column
    has: list[bool] = []
    for g in range(f.metadata.num_row_groups):  # the null counts say it for most groups: no audio is read
        meta = f.metadata.row_group(g)
        stats = next((meta.column(j).statistics for j in range(meta.num_columns)
                      if meta.column(j).path_in_schema == leaf), None)  # fmt: skip
        nulls = stats.null_count if stats is not None and stats.has_null_count else None
        if nulls in (0, meta.num_rows):
            has += [nulls == 0] * meta.num_rows
        else:
            col = f.read_row_group(g, columns=[leaf]).column(0)
            data = _field(pa, col, "bytes") if pa.types.is_struct(col.type) else col
            has += pa.compute.is_valid(data).to_pylist()
    return has, paths


def _label(value: Any, names: list[str]) -> Any:
    """A ClassLabel's id -> its name; -1 (datasets' "no label") -> None."""
    if isinstance(value, int) and value < 0:
        return None
    return names[value] if isinstance(value, int) and value < len(names) else value


def _schema(pa, file: Path, pid: int):
    try:
        if file.suffix.lower() == ".parquet":
            return _parquet(file, pid)[0].schema_arrow
        return _arrow_table(file, pid).schema
    except (OSError, pa.ArrowException) as e:
        kind = "parquet" if file.suffix.lower() == ".parquet" else "Arrow"
        raise DataError(f"{file}: not a readable {kind} file ({str(e).splitlines()[0]})") from None


def read_tables(source: Path, files: list[Path], columns: Columns, features: dict | None = None) -> Rows:
    """The rows of parquet or Arrow `files`, one table in that order (a dataset folder's shards: rows named
    `source[i]` over all of them; parquet files: each file's own rows, `file[i]`)."""
    pa = _pyarrow(source)
    pid = os.getpid()
    if not files:
        raise DataError(f"{source}: no data files")
    schemas = [_schema(pa, f, pid) for f in files]
    for f, s in zip(files, schemas):
        if s.names != schemas[0].names:
            raise DataError(f"{f}: its columns ({', '.join(s.names)}) differ from {files[0]}'s")
    schema = schemas[0]
    features = _features(schema, features)
    chosen = resolve_columns(source, schema.names, columns, _audio_default(pa, schema, features))
    audio = chosen["path"]
    kind = _audio_kind(pa, source, audio, schema.field(audio).type)
    wanted = [f.name for f in schema if f.name != audio and _scalar(pa, f.type)]
    labels = {c: f["names"] for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"}
    items: list[Utterance | BadRow] = []
    offset = 0
    for file in files:
        table = (_parquet(file, pid)[0].read(columns=wanted) if file.suffix.lower() == ".parquet"
                 else _arrow_table(file, pid).select(wanted))  # fmt: skip
        values = {c: table.column(c).to_pylist() for c in wanted}
        for c, names in labels.items():
            if c in values:
                values[c] = [_label(v, names) for v in values[c]]
        has_bytes, paths = _audio_cells(pa, file, audio, kind, pid)
        by_row = file.suffix.lower() == ".parquet"  # parquet rows are named in their file, shards in the folder
        for i in range(len(has_bytes)):
            where = f"{file if by_row else source}[{i if by_row else offset + i}]"
            row = {c: values[c][i] for c in wanted}
            inner = paths[i]
            if has_bytes[i]:
                stem = Path(inner).stem if inner else str(offset + i)
                clip = TableAudio(file, i, audio, where, inner, source.with_suffix("") / stem)
            elif inner:
                clip = Path(inner) if Path(inner).is_absolute() else file.parent / inner
            else:
                items.append(BadRow(where, f"no audio (neither bytes nor a path in column {audio!r})"))
                continue
            items.append(make_utterance(row, chosen, clip, where, columns))
        offset += len(has_bytes)
    return Rows(items, source)


def read_dataset_dir(folder: Path, columns: Columns) -> Rows:
    """A `Dataset.save_to_disk` folder (state.json, dataset_info.json, the Arrow shards)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder / 'state.json'}: not a datasets state file ({e})") from None
    features = None
    if (folder / "dataset_info.json").is_file():
        try:
            features = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8")).get("features")
        except (OSError, ValueError, AttributeError):
            features = None
    return read_tables(folder, files, columns, features if isinstance(features, dict) else None)
