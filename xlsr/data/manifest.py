"""Manifests: which audio files, and what is known about each.

xlsr manifest: a TSV with a header row. `path` is required (relative to the manifest's folder, or
absolute); `samples` (length at 16 kHz), `lang`, `text`, `translation`, `speaker` are optional and
any other column is kept. fairseq's manifest is also read: the root folder on the first line, then
`path<TAB>samples` rows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from ..errors import DataError

KNOWN_COLUMNS = ("path", "samples", "lang", "text", "translation", "speaker")


@dataclass
class Utterance:
    path: Path
    samples: int | None = None  # at 16 kHz, when the manifest says
    lang: str | None = None
    text: str | None = None
    translation: str | None = None
    speaker: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def get(self, column: str) -> str | None:
        value = getattr(self, column) if column in KNOWN_COLUMNS else self.extra.get(column)
        return None if value is None else str(value)


def _is_fairseq(first_line: str) -> bool:
    return "\t" not in first_line and first_line.strip() != "path"


def read_manifest(path: str | Path) -> list[Utterance]:
    """TSV (xlsr, with header) or fairseq manifest -> utterances with absolute paths."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the manifest ({e})") from None
    if not lines:
        raise DataError(f"{path}: the manifest is empty")
    if _is_fairseq(lines[0]):
        root = Path(lines[0].strip())
        root = root if root.is_absolute() else path.parent / root
        out = []
        for n, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or not parts[1].strip().isdigit():
                raise DataError(f"{path}:{n}: expected 'path<TAB>samples' (fairseq manifest)")
            out.append(Utterance(root / parts[0], samples=int(parts[1])))
        return out
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    if "path" not in (reader.fieldnames or []):
        raise DataError(f"{path}: the header row needs a 'path' column (got {reader.fieldnames})")
    out = []
    for n, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path}:{n}: expected {len(reader.fieldnames)} tab-separated columns")
        audio = Path(row["path"])
        samples = row.get("samples") or None
        if samples is not None and not samples.strip().isdigit():
            raise DataError(f"{path}:{n}: samples must be a whole number, got {samples!r}")
        out.append(
            Utterance(
                audio if audio.is_absolute() else path.parent / audio,
                samples=None if samples is None else int(samples),
                lang=row.get("lang") or None,
                text=row.get("text"),
                translation=row.get("translation"),
                speaker=row.get("speaker") or None,
                extra={k: v for k, v in row.items() if k not in KNOWN_COLUMNS},
            )
        )
    return out


def write_manifest(path: str | Path, utterances: list[Utterance], columns: list[str] | None = None) -> None:
    """Writes an xlsr TSV manifest (paths relative to its folder when they lie below it); atomically."""
    from ..checkpoints.io import atomic_write_text

    path = Path(path)
    columns = columns or [c for c in KNOWN_COLUMNS if any(u.get(c) is not None for u in utterances) or c == "path"]
    rows = ["\t".join(columns)]
    for u in utterances:
        values = []
        for c in columns:
            if c == "path":
                p = u.path.resolve()
                try:
                    p = p.relative_to(path.parent.resolve())
                except ValueError:
                    pass
                value = p.as_posix()
            else:
                value = u.get(c) or ""
            if "\t" in value or "\n" in value:
                raise DataError(f"{path}: a {c} value contains a tab or newline: {value!r}")
            values.append(value)
        rows.append("\t".join(values))
    atomic_write_text(path, "\n".join(rows) + "\n")


@dataclass
class InputError:
    """An input that yields no audio: a missing path, an empty folder, a broken manifest."""

    path: str
    cause: str


def expand_inputs(inputs: list[str | Path]) -> list[Utterance | InputError]:
    """Files, folders (searched recursively for audio files) and manifests (.tsv) -> utterances, in
    order, with an InputError in place of every input that yields nothing."""
    out: list[Utterance | InputError] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            out.append(InputError(str(raw), "no such file or directory"))
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
            out.extend(Utterance(f) for f in found)
            if not found:
                out.append(InputError(str(raw), "directory contains no audio files"))
        elif p.suffix.lower() in (".tsv", ".manifest"):
            try:
                out.extend(read_manifest(p))
            except DataError as e:
                out.append(InputError(str(raw), str(e).removeprefix(f"{p}: ")))
        else:
            out.append(Utterance(p))
    return out


def output_names(paths: list[Path]) -> list[str]:
    """Unique output stems: the file stem when unique, else the path below the common folder with '__' for '/'."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [p.resolve() for p in paths]
    common = Path(*resolved[0].parts[: min(len(r.parts) for r in resolved) - 1])
    for r in resolved:
        while common != common.parent and not r.is_relative_to(common):
            common = common.parent
    names = ["__".join(r.relative_to(common).with_suffix("").parts) for r in resolved]
    seen: dict[str, int] = {}
    out = []
    for n in names:  # the same file given twice
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out
