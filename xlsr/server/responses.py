"""The answers' shapes: OpenAI's audio API for transcriptions and translations, the commands' JSON for the rest.

`response_format` is OpenAI's: `json` ({"text"}), `text`, `srt`, `vtt` (the commands' own renderings, as
`--format txt/srt/vtt` writes them) and `verbose_json`: OpenAI's fields (`task`, `language`, `duration`, `text`,
`segments` with `id`, `seek`, `start`, `end`, `text`, `tokens`, `temperature`, `avg_logprob`,
`compression_ratio`, `no_speech_prob`; `words`) over the command's `--format json` object, whose every key is
kept with its value (`path` is the upload's file name, `model` the model's id).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

from ..checkpoints.hf_st import target_languages
from ..translate import Translation
from ..translate import render as render_translation
from ..writers import Transcript, cues
from ..writers import render as render_transcript
from .errors import RequestError

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {"text": "text/plain", "srt": "text/plain", "vtt": "text/vtt"}


def check_response_format(value: str | None) -> str:
    value = value or "json"
    if value not in RESPONSE_FORMATS:
        raise RequestError(400, "invalid_field", f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; "
                           f"got {value!r}", "response_format")  # fmt: skip
    return value


def command_json(result: Any, name: str, model: str) -> dict[str, Any]:
    """The command's --format json object, with the upload's name as `path` and the model's id as `model`."""
    return {**result.to_dict(), "path": name, "model": model}


def transcription(t: Transcript, fmt: str, name: str, model: str, language: str | None) -> dict | str:
    if fmt == "json":
        return {"text": t.text}
    if fmt == "text":
        return render_transcript(t, "txt")
    if fmt in ("srt", "vtt"):
        return render_transcript(t, fmt)
    segments = []
    for i, (start, end, text) in enumerate(cues(t.words)):
        words = [w for w in t.words if w.start >= start and w.end <= end]
        logprob = sum(math.log(max(w.confidence, 1e-12)) for w in words) / max(len(words), 1)
        segments.append(_segment(i, start, end, text, [], logprob, t.no_speech))
    return {**command_json(t, name, model), "task": "transcribe", "language": language, "segments": segments}


def translation(t: Translation, fmt: str, name: str, model: str) -> dict | str:
    if fmt == "json":
        return {"text": t.text}
    if fmt in ("text", "srt", "vtt"):
        return render_translation(t, "txt" if fmt == "text" else fmt)
    out = command_json(t, name, model)
    out["segments"] = [
        {**_segment(i, s["start"], s["end"], s["text"], [], None, False), **s} for i, s in enumerate(out["segments"])
    ]
    return {**out, "task": "translate", "language": t.target_lang}


def _segment(i: int, start: float, end: float, text: str, tokens: list[int], avg_logprob: float | None,
             no_speech: bool) -> dict[str, Any]:  # fmt: skip
    raw = text.encode("utf-8")
    return {
        "id": i,
        "seek": 0,
        "start": round(start, 3),
        "end": round(end, 3),
        "text": text,
        "tokens": tokens,
        "temperature": 0.0,
        "avg_logprob": None if avg_logprob is None else round(avg_logprob, 6),
        "compression_ratio": round(len(raw) / len(zlib.compress(raw)), 6) if raw else 0.0,
        "no_speech_prob": 1.0 if no_speech else 0.0,
    }


def models_list(models: list[Any]) -> dict[str, Any]:
    """GET /v1/models: OpenAI's list shape, with what each model does and its languages or labels."""
    data = []
    for m in models:
        entry = {"id": m.id, "object": "model", "created": 0, "owned_by": "xlsr", "kind": m.kind}
        if m.kind == "st":
            entry["languages"] = target_languages(m.net)
        if m.kind == "lid":
            entry["labels"] = list(m.net.cfg.labels)
        data.append(entry)
    return {"object": "list", "data": data}
