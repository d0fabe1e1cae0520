"""`xlsr evaluate`: score a model on a manifest with references.

CTC models: word and character error rates (jiwer), overall and per language, after the same text
normalisation on both sides (`TextNormalization`). Classification models: see `classify.evaluate`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jiwer

from .checkpoints import load_model
from .checkpoints.io import atomic_write_text
from .data.manifest import read_manifest
from .errors import ConfigError, DataError
from .models import Wav2Vec2Model
from .runtime import resolve_device
from .text.normalize import TextNormalization, normalize_text


@dataclass
class ErrorRates:
    wer: float
    cer: float
    utterances: int
    words: int


@dataclass
class AsrReport:
    overall: ErrorRates
    per_language: dict[str, ErrorRates]
    utterances: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped_empty: int = 0

    def to_dict(self) -> dict[str, Any]:
        rates = lambda r: {"wer": r.wer, "cer": r.cer, "utterances": r.utterances, "words": r.words}  # noqa: E731
        return {
            "overall": rates(self.overall),
            "per_language": {k: rates(v) for k, v in self.per_language.items()},
            "failed": self.failed,
            "skipped_empty_references": self.skipped_empty,
            "utterances": self.utterances,
        }

    def table(self) -> str:
        lines = [f"{'language':<12} {'utts':>6} {'words':>7} {'WER %':>7} {'CER %':>7}"]
        rows = sorted(self.per_language.items()) if len(self.per_language) > 1 else []
        for name, r in [*rows, ("all", self.overall)]:
            lines.append(f"{name:<12} {r.utterances:>6} {r.words:>7} {100 * r.wer:>7.2f} {100 * r.cer:>7.2f}")
        return "\n".join(lines)


def error_rates(references: list[str], hypotheses: list[str]) -> ErrorRates:
    return ErrorRates(
        wer=float(jiwer.wer(references, hypotheses)),
        cer=float(jiwer.cer(references, hypotheses)),
        utterances=len(references),
        words=sum(len(r.split()) for r in references),
    )


def evaluate(
    model: str | Path | Wav2Vec2Model,
    manifest: str | Path,
    json_path: str | Path | None = None,
    normalization: TextNormalization = TextNormalization(),
    device: str | None = None,
    quiet: bool = False,
    label_column: str = "lang",
    crops: int | None = None,
    crop_seconds: float = 10.0,
    plot: str | Path | None = None,
    **transcribe_options: Any,
):
    """Transcribes (CTC) or classifies (classification head) a manifest and scores it against its references.
    `label_column`, `crops`, `crop_seconds` and `plot` concern classification models (see `classify.py`)."""
    net = model if isinstance(model, Wav2Vec2Model) else load_model(model, device=resolve_device(device))
    if net.cfg.head == "classification":
        from .classify import evaluate_classifier

        return evaluate_classifier(net, manifest, json_path=json_path, label_column=label_column, crops=crops,
                                   crop_seconds=crop_seconds, plot=plot, device=device, quiet=quiet,
                                   **transcribe_options)  # fmt: skip
    if crops or plot:
        raise ConfigError("--crops and --plot apply to classification models")
    from .transcribe import transcribe

    utterances = read_manifest(manifest)
    missing = [u.path for u in utterances if u.text is None]
    if missing:
        raise DataError(f"{manifest}: evaluation needs a 'text' column ({len(missing)} rows have none)")
    transcripts = transcribe(net, [manifest], device=device, quiet=quiet, **transcribe_options)
    groups: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    report = AsrReport(ErrorRates(0, 0, 0, 0), {})
    for u, t in zip(utterances, transcripts, strict=True):
        if t.error:
            report.failed.append({"path": str(u.path), "error": t.error})
            continue
        ref, hyp = normalize_text(u.text, normalization), normalize_text(t.text, normalization)
        if not ref:
            report.skipped_empty += 1
            continue
        for key in ("all", u.lang) if u.lang else ("all",):
            groups[key][0].append(ref)
            groups[key][1].append(hyp)
        report.utterances.append({"path": str(u.path), "lang": u.lang, "reference": ref, "hypothesis": hyp})
    if "all" not in groups:
        raise DataError(f"{manifest}: no utterance could be scored")
    report.overall = error_rates(*groups.pop("all"))
    report.per_language = {k: error_rates(*v) for k, v in groups.items()} or {"all": report.overall}
    if json_path:
        atomic_write_text(json_path, json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    return report
