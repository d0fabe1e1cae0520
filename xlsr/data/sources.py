"""Data sources: a command's data where users keep it, read into utterances.

| source                                   | read by            | split, when it holds several              |
|------------------------------------------|--------------------|-------------------------------------------|
| a TSV manifest (xlsr, fairseq, a Common  | manifest.read_tsv  | -                                         |
| Voice `train.tsv` / `dev.tsv` / ...)     |                    |                                           |
| a Common Voice release folder (`clips/`  | manifest.read_tsv  | train.tsv, dev.tsv, test.tsv              |
| and its TSVs)                            |                    |                                           |
| a `Dataset.save_to_disk` folder          | tables             | -                                         |
| a `DatasetDict.save_to_disk` folder      | tables             | its train, validation (or valid, dev),    |
| (dataset_dict.json + a folder per split) |                    | test folders                              |
| parquet files, `.arrow` files, or a      | tables             | by file name prefix (`train-...`) when    |
| folder of parquet files                  |                    | the names carry one                       |

Which split: the role's (`train` for --train, `valid` for --valid, `test` for evaluate, transcribe and
identify); a source with a single split is that split; name a split's own TSV or folder to choose another.
Files and folders that are none of these are audio (`expand_inputs`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from ..errors import DataError
from .manifest import Columns, Rows, Utterance, read_tsv
from .tables import read_dataset_dir, read_tables

SPLITS = {"train": ("train",), "valid": ("validation", "valid", "dev"), "test": ("test",)}  # role -> names
TSV_SUFFIXES = (".tsv", ".manifest")
TABLE_SUFFIXES = (".parquet", ".arrow")
_SPLIT_PREFIX = re.compile(r"^(train|validation|valid|dev|test)(?=[-_.])")  # train-00000-of-00002.parquet


def source_kind(path: Path) -> str | None:
    """What `path` is as data: 'tsv', 'table' (a parquet or Arrow file), 'common_voice', 'dataset',
    'dataset_dict', 'parquet_dir'; None for audio (a file, or a folder searched for audio files)."""
    if path.is_file():
        suffix = path.suffix.lower()
        return "tsv" if suffix in TSV_SUFFIXES else "table" if suffix in TABLE_SUFFIXES else None
    if not path.is_dir():
        return None
    if (path / "state.json").is_file():
        return "dataset"
    if (path / "dataset_dict.json").is_file():
        return "dataset_dict"
    if (path / "clips").is_dir() and any((path / f"{n}.tsv").is_file() for names in SPLITS.values() for n in names):
        return "common_voice"
    if any(path.glob("*.parquet")):
        return "parquet_dir"
    return None


def _split(source: Path, splits: list[str], role: str, what: str) -> str:
    """The split of `role` among `splits`, or the only one; a DataError naming those there are."""
    if len(splits) == 1:
        return splits[0]
    for name in SPLITS[role]:
        if name in splits:
            return name
    wanted = " or ".join(SPLITS[role])
    raise DataError(
        f"{source}: no {wanted} {what} (it has: {', '.join(sorted(splits)) or 'none'}); name the one to use"
    )


def read_source(source: str | Path, columns: Columns = Columns(), role: str = "test") -> Rows:
    """A data source (the module's table) -> its utterances and bad rows. DataError (one line) for a source that
    cannot be read, a split that is not there, or a named column that is not there (listing those that are)."""
    path = Path(source)
    kind = source_kind(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if kind == "tsv":
        return read_tsv(path, columns)
    if kind == "table":
        return read_tables(path, [path], columns)
    if kind == "dataset":
        return read_dataset_dir(path, columns)
    if kind == "common_voice":
        names = [n for names in SPLITS.values() for n in names if (path / f"{n}.tsv").is_file()]
        return read_tsv(path / f"{_split(path, names, role, 'TSV')}.tsv", columns)
    if kind == "dataset_dict":
        try:
            listed = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path / 'dataset_dict.json'}: not a datasets file ({e})") from None
        return read_dataset_dir(path / _split(path, list(listed), role, "split"), columns)
    if kind == "parquet_dir":
        files = sorted(path.glob("*.parquet"))
        tagged: dict[str, list[Path]] = {}
        for f in files:
            if m := _SPLIT_PREFIX.match(f.name):
                tagged.setdefault(m.group(1), []).append(f)
        if tagged:
            files = tagged[_split(path, list(tagged), role, "files")]
        return read_tables(path, files, columns)
    raise DataError(
        f"{path}: not a data source (a TSV manifest, a Common Voice folder, a Hugging Face dataset folder, "
        "parquet or Arrow files)"
    )


def log_bad_rows(rows: Rows, logger: logging.Logger, role: str = "") -> None:
    """One warning line per bad row (`train.tsv:7: empty sentence (skipped)`)."""
    for bad in rows.bad:
        logger.warning("%s%s (skipped)", f"{role}: " if role else "", bad)


@dataclass
class InputError:
    """An input that yields no audio: a missing path, an empty folder, a broken manifest, a bad row."""

    path: str
    cause: str


def expand_inputs(inputs: list[str | Path | Utterance], columns: Columns = Columns()) -> list[Utterance | InputError]:
    """Files, folders (searched recursively for audio files), data sources (`read_source`, as test data) and
    utterances -> utterances, in order, with an InputError in place of every input or row that yields nothing."""
    out: list[Utterance | InputError] = []
    for raw in inputs:
        if isinstance(raw, Utterance):
            out.append(raw)
            continue
        p = Path(raw)
        if not p.exists():
            out.append(InputError(str(raw), "no such file or directory"))
        elif source_kind(p) is not None:
            try:
                rows = read_source(p, columns, "test")
            except DataError as e:
                out.append(InputError(str(raw), str(e).removeprefix(f"{p}: ")))
                continue
            out.extend(InputError(u.where, u.cause) if not isinstance(u, Utterance) else u for u in rows.items)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
            out.extend(Utterance(f) for f in found)
            if not found:
                out.append(InputError(str(raw), "directory contains no audio files"))
        else:
            out.append(Utterance(p))
    return out
