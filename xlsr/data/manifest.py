"""Manifests: which audio files, and what is known about each.

xlsr manifest: a TSV with a header row. `path` is required (relative to the manifest's folder, or
absolute); `samples` (length at 16 kHz), `lang`, `text`, `translation`, `speaker` are optional and
any other column is kept. fairseq's manifest is also read: the root folder on the first line, then
`path<TAB>samples` rows. A Common Voice TSV (`train.tsv`, `dev.tsv`, `test.tsv`, ... of a release) is
recognised by its `sentence` column: its `path` is a clip of the `clips/` folder beside it.

Columns are chosen by name (`Columns`): the audio (`path` in a TSV), the text (`text`, else `sentence` as
Common Voice names it or `transcription`) and a label (any column). `lang` falls back to `locale` and
`speaker` to `client_id` (Common Voice's names); every column is kept, under its own name, in `extra`.
A column that was named and is not there is a DataError listing those that are. A bad row (a wrong
number of fields, no audio, no text where text is needed, no label where a label is) is a `BadRow`
(`train.tsv:7: empty sentence`), left out of the utterances; the commands name each in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audio import EncodedAudio
from ..errors import DataError

KNOWN_COLUMNS = ("path", "samples", "lang", "text", "translation", "speaker")
# the names other formats give the known fields (Common Voice, Hugging Face datasets), used when the field's own
# column is absent
ALIASES = {"text": ("sentence", "transcription"), "lang": ("locale",), "speaker": ("client_id", "speaker_id")}
AudioPath = Path | EncodedAudio  # an audio file, or an audio file's bytes inside a table


@dataclass
class Utterance:
    path: AudioPath
    samples: int | None = None  # at 16 kHz, when the manifest says
    lang: str | None = None
    text: str | None = None
    translation: str | None = None
    speaker: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def get(self, column: str) -> str | None:
        value = getattr(self, column) if column in KNOWN_COLUMNS else self.extra.get(column)
        return None if value is None else str(value)


@dataclass(frozen=True)
class Columns:
    """Which columns hold what, by name (None: the defaults of the module docstring), and what a row needs."""

    audio: str | None = None  # default: `path` (TSV); `audio`, else the dataset's audio column (tables)
    text: str | None = None  # default: `text`, else `sentence` or `transcription`
    label: str | None = None  # a classification label: a row without one is bad
    need_text: bool = False  # CTC: a row without text is bad, and so is a source without a text column


@dataclass(frozen=True)
class BadRow:
    """A row left out, with why: `where` is `train.tsv:7` (a TSV's line) or `data.parquet[7]` (a table's row)."""

    where: str
    cause: str

    def __str__(self) -> str:
        return f"{self.where}: {self.cause}"


@dataclass
class Rows:
    """What a data source holds, in its order: utterances, and the bad rows left out."""

    items: list[Utterance | BadRow]
    origin: Path | None = None  # the file or folder read (a Common Voice TSV, a dataset's split)

    @property
    def utterances(self) -> list[Utterance]:
        return [u for u in self.items if isinstance(u, Utterance)]

    @property
    def bad(self) -> list[BadRow]:
        return [b for b in self.items if isinstance(b, BadRow)]


def _listing(columns: list[str]) -> str:
    return f"its columns: {', '.join(columns) or '(none)'}"


def resolve_columns(source: object, available: list[str], columns: Columns, audio: str | None) -> dict[str, str]:
    """Which column fills each known field (`path` is the audio column, `audio` its default) -> {field: column};
    raises a one-line DataError for a named column that is not there, listing those that are."""

    def missing(name: str, flag: str) -> DataError:
        return DataError(f"{source}: no column {name!r} ({flag}); {_listing(available)}")

    chosen = {}
    for name in KNOWN_COLUMNS[1:]:
        found = next((c for c in (name, *ALIASES.get(name, ())) if c in available), None)
        if found is not None:
            chosen[name] = found
    if columns.text is not None:
        if columns.text not in available:
            raise missing(columns.text, "--text-column")
        chosen["text"] = columns.text
    elif columns.need_text and "text" not in chosen:
        names = ", ".join(repr(c) for c in ALIASES["text"])
        raise DataError(f"{source}: needs a 'text' column (or {names}; --text-column names another); "
                        f"{_listing(available)}")  # fmt: skip
    audio = columns.audio or audio
    if audio is None or audio not in available:
        raise missing(audio or "audio", "--audio-column")
    chosen["path"] = audio
    label = columns.label
    if label is not None and label not in available and not (label in KNOWN_COLUMNS and label in chosen):
        raise missing(label, "--label-column")
    return chosen


def make_utterance(
    values: Mapping[str, Any], chosen: dict[str, str], audio: AudioPath, where: str, columns: Columns
) -> Utterance | BadRow:
    """One row (column -> value) -> an Utterance, or a BadRow when it lacks what `columns` says it needs."""

    def value(name: str) -> str | None:
        v = values.get(chosen[name]) if name in chosen else None
        return None if v is None else str(v)

    samples = value("samples") or None
    if samples is not None and not samples.strip().isdigit():
        return BadRow(where, f"samples must be a whole number, got {samples!r}")
    u = Utterance(
        audio,
        samples=None if samples is None else int(samples),
        lang=value("lang") or None,
        text=value("text"),
        translation=value("translation"),
        speaker=value("speaker") or None,
        extra={
            k: str(v) for k, v in values.items() if k not in KNOWN_COLUMNS and k != chosen["path"] and v is not None
        },
    )
    if columns.need_text and not (u.text or "").strip():
        return BadRow(where, f"empty {chosen['text']}")
    if columns.label is not None and not u.get(columns.label):
        return BadRow(where, f"empty {columns.label}")
    return u


def _is_fairseq(first_line: str) -> bool:
    return "\t" not in first_line and first_line.strip() != "path"


def read_tsv(path: str | Path, columns: Columns = Columns()) -> Rows:
    """A TSV manifest (xlsr, Common Voice or fairseq) -> its utterances with absolute paths, and its bad rows.
    DataError for a file that cannot be read or a column that is not there."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the manifest ({e})") from None
    if not lines:
        raise DataError(f"{path}: the manifest is empty")
    if _is_fairseq(lines[0]):
        resolve_columns(path, ["path", "samples"], columns, "path")
        root = Path(lines[0].strip())
        root = root if root.is_absolute() else path.parent / root
        items: list[Utterance | BadRow] = []
        for n, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or not parts[1].strip().isdigit():
                items.append(BadRow(f"{path}:{n}", "expected 'path<TAB>samples' (fairseq manifest)"))
            else:
                items.append(Utterance(root / parts[0], samples=int(parts[1])))
        return Rows(items, path)
    header = lines[0].split("\t")
    chosen = resolve_columns(path, header, columns, "path")
    clips = path.parent / "clips"  # Common Voice: the clips beside the TSV
    base = clips if "sentence" in header and "text" not in header and clips.is_dir() else path.parent
    items = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}:{n}"
        if len(fields) != len(header):
            items.append(BadRow(where, f"expected {len(header)} tab-separated columns, got {len(fields)}"))
            continue
        row = dict(zip(header, fields))
        if not row[chosen["path"]].strip():
            items.append(BadRow(where, f"empty {chosen['path']}"))
            continue
        audio = Path(row[chosen["path"]])
        items.append(make_utterance(row, chosen, audio if audio.is_absolute() else base / audio, where, columns))
    return Rows(items, path)


def read_manifest(path: str | Path, columns: Columns = Columns()) -> list[Utterance]:
    """TSV (xlsr, with header; Common Voice) or fairseq manifest -> utterances with absolute paths; a bad row
    is a DataError (`read_tsv`, or `sources.read_source`, leave bad rows out instead)."""
    rows = read_tsv(path, columns)
    if rows.bad:
        raise DataError(str(rows.bad[0]))
    return rows.utterances


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
                if isinstance(u.path, EncodedAudio):
                    raise DataError(f"{path}: {u.path} is audio inside a table: a TSV manifest lists audio files")
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


def output_names(paths: list[AudioPath]) -> list[str]:
    """Unique output stems: the file stem when unique, else the path below the common folder with '__' for '/'.
    Audio inside a table is named after its own file name, as if it lay in a folder named after the table."""
    paths = [Path(getattr(p, "name_path", None) or str(p)) if isinstance(p, EncodedAudio) else p for p in paths]
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
