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
from torch import nn

from .checkpoints import inference_model
from .checkpoints.io import atomic_write_text
from .data.manifest import Columns
from .data.sources import read_source
from .errors import ConfigError, DataError
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


# Options that only one kind of model takes; given to the other kind they are refused, never dropped.
CTC_OPTIONS = ("stride_seconds", "lm", "lexicon", "lm_weight", "word_score", "beam_size", "hotwords", "hotword_weight",
               "text_column")  # fmt: skip
CLASSIFIER_OPTIONS = ("label_column", "crops", "crop_seconds", "seed", "plot")
REPORT_FILE = "report.json"


def evaluate(
    model: str | Path | nn.Module | None,
    manifest: str | Path,
    output_dir: str | Path | None = None,
    json_path: str | Path | None = None,
    normalization: TextNormalization = TextNormalization(),
    chunk_seconds: float | None = None,
    batch_seconds: float = 60.0,
    stride_seconds: float | None = None,
    lm: str | None = None,
    lexicon: str | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    beam_size: int | None = None,
    hotwords: tuple[str, ...] | None = None,
    hotword_weight: float | None = None,
    label_column: str | None = None,
    crops: int | None = None,
    crop_seconds: float | None = None,
    seed: int | None = None,
    plot: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    quiet: bool = False,
    text_column: str | None = None,
    audio_column: str | None = None,
):
    """Transcribes (CTC) or classifies (classification head) a manifest and scores it against its references.

    model: any model xlsr reads (None: the bundled CTC model). The report goes to `output_dir/report.json`
    (and `json_path`, the old spelling). CTC models take the decoding options of `transcribe`
    (`CTC_OPTIONS`); classifiers `label_column` (default lang), `crops`, `crop_seconds` (default 10), `seed`
    (of the crops; default fairseq's 123) and `plot` (see `classify.py`). An option of the other kind is
    refused in one line, never silently dropped; options left at None take the defaults of `xlsr transcribe` /
    `xlsr identify`. `manifest` is any data source of `data/sources.py` (its test split), its columns named by
    `text_column` (CTC), `label_column` (classifiers) and `audio_column`; a bad row is a failed utterance.
    """
    net = inference_model(model, device, dtype)
    given = {k: v for k, v in locals().items() if k in CTC_OPTIONS + CLASSIFIER_OPTIONS and v not in (None, ())}
    classifier = getattr(net.cfg, "head", None) == "classification"
    wrong = [k for k in given if k in (CTC_OPTIONS if classifier else CLASSIFIER_OPTIONS)]
    if wrong:
        kind, other = ("a classification model", "CTC models") if classifier else ("a CTC model", "classifiers")
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ConfigError(f"{flags}: not an option for {kind} ({net.source}); it applies to {other}")
    report_paths = [Path(output_dir) / REPORT_FILE] if output_dir else []
    report_paths += [Path(json_path)] if json_path else []
    common = dict(batch_seconds=batch_seconds, device=device, dtype=dtype, threads=threads, quiet=quiet,
                  audio_column=audio_column)  # fmt: skip
    if classifier:
        from .classify import evaluate_classifier

        if chunk_seconds is not None:
            common["chunk_seconds"] = chunk_seconds
        report = evaluate_classifier(net, manifest, label_column=label_column or "lang", crops=crops,
                                     crop_seconds=10.0 if crop_seconds is None else crop_seconds, plot=plot,
                                     **({} if seed is None else {"seed": seed}), **common)  # fmt: skip
    else:
        report = _evaluate_ctc(net, manifest, normalization, chunk_seconds=chunk_seconds, **given, **common)
    for path in report_paths:
        atomic_write_text(path, json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    return report


def _evaluate_ctc(
    net: nn.Module,
    manifest: str | Path,
    normalization: TextNormalization,
    chunk_seconds: float | None,
    text_column: str | None = None,
    audio_column: str | None = None,
    **options: Any,
) -> AsrReport:
    from .transcribe import transcribe

    rows = read_source(manifest, Columns(audio=audio_column, text=text_column, need_text=True), "test")
    utterances = rows.utterances
    if chunk_seconds is not None:
        options["chunk_seconds"] = chunk_seconds
    transcripts = transcribe(net, utterances, **options)
    groups: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    report = AsrReport(ErrorRates(0, 0, 0, 0), {})
    report.failed = [{"path": bad.where, "error": bad.cause} for bad in rows.bad]
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
    return report
