"""Transcripts out: txt, json, srt, vtt, tsv.

Subtitle cues are built from the word timings: a cue ends at a pause longer than `MAX_GAP`, after
`MAX_CUE_SECONDS`, or before it would exceed two lines of `LINE_CHARS` characters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .decoding.ctc import Word

FORMATS = ("txt", "json", "srt", "vtt", "tsv")
MAX_GAP = 0.6  # seconds of silence that end a cue
MAX_CUE_SECONDS = 6.0
LINE_CHARS = 42  # two lines per cue


@dataclass
class Transcript:
    path: str
    text: str = ""
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0
    model: str = ""
    error: str | None = None
    skipped: bool = False  # its output already existed (--skip-existing)
    no_speech: bool = False  # the speech detector found none: the text is empty, not a guess

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["words"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in w.items()} for w in d["words"]]
        d["duration"] = round(self.duration, 3)
        return d


def cues(words: list[Word]) -> list[tuple[float, float, str]]:
    """Words -> (start, end, text) subtitle cues."""
    out: list[tuple[float, float, str]] = []
    current: list[Word] = []
    for w in words:
        if current:
            text = " ".join(x.word for x in current + [w])
            if (
                w.start - current[-1].end > MAX_GAP
                or w.end - current[0].start > MAX_CUE_SECONDS
                or len(text) > 2 * LINE_CHARS
            ):
                out.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
                current = []
        current.append(w)
    if current:
        out.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
    return out


def _timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def _wrap(text: str) -> str:
    """At most two lines of about LINE_CHARS characters."""
    if len(text) <= LINE_CHARS:
        return text
    middle = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c == " "]
    cut = min(spaces, key=lambda i: abs(i - middle)) if spaces else middle
    return text[:cut].rstrip() + "\n" + text[cut:].lstrip()


def render(t: Transcript, fmt: str) -> str:
    if fmt == "txt":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps(t.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "srt":
        blocks = [
            f"{i}\n{_timestamp(s, ',')} --> {_timestamp(e, ',')}\n{_wrap(x)}\n"
            for i, (s, e, x) in enumerate(cues(t.words), 1)
        ]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [f"{_timestamp(s, '.')} --> {_timestamp(e, '.')}\n{_wrap(x)}\n" for s, e, x in cues(t.words)]
        return "WEBVTT\n\n" + "\n".join(blocks)
    if fmt == "tsv":
        rows = [f"{s:.3f}\t{e:.3f}\t{x}" for s, e, x in cues(t.words)]
        return "start\tend\ttext\n" + "".join(r + "\n" for r in rows)
    raise ValueError(f"unknown format {fmt!r}")
