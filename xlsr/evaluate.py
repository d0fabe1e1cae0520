"""`xlsr evaluate`: score a model on a manifest with references.

CTC models: word and character error rates (jiwer), overall and per language, after the same text
normalisation on both sides (`TextNormalization`). Classification models: see `classify.evaluate`.
Speech-translation models: sacrebleu's BLEU and chrF (`translation_metrics.py`), overall and per language pair
(`lang`-`tgt_lang`), against the `translation` column, decoded as `xlsr translate` decodes.
"""

from __future__ import annotations

import json
import warnings
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
from .errors import ConfigError, DataError, OldSpelling
from .models.speech_translation import SpeechTranslationModel
from .text.normalize import TextNormalization, normalize_text
from .translation_metrics import TranslationScores, corpus_scores


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


@dataclass
class TranslationReport:
    overall: TranslationScores
    per_pair: dict[str, TranslationScores]  # "fr-en" (the manifest's lang, then the target language)
    utterances: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped_empty: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "per_pair": {k: v.to_dict() for k, v in self.per_pair.items()},
            "failed": self.failed,
            "skipped_empty_references": self.skipped_empty,
            "utterances": self.utterances,
        }

    def table(self) -> str:
        lines = [f"{'pair':<14} {'utts':>6} {'BLEU':>7} {'chrF':>7}"]
        rows = sorted(self.per_pair.items()) if len(self.per_pair) > 1 else []
        for name, r in [*rows, ("all", self.overall)]:
            lines.append(f"{name:<14} {r.sentences:>6} {r.bleu:>7.2f} {r.chrf:>7.2f}")
        lines += [f"BLEU: sacrebleu {self.overall.bleu_signature}", f"chrF: sacrebleu {self.overall.chrf_signature}"]
        return "\n".join(lines)


# Options that only some kinds of model take; given to another kind they are refused, never dropped.
CTC_OPTIONS = ("stride_seconds", "lm", "lexicon", "lm_weight", "word_score", "beam_size", "hotwords", "hotword_weight",
               "text_column")  # fmt: skip
CLASSIFIER_OPTIONS = ("label_column", "crops", "crop_seconds", "seed", "plot")
TRANSLATION_OPTIONS = ("target_lang", "beam_size", "max_new_tokens", "max_len_a", "max_len_b", "min_len",
                       "length_penalty", "no_repeat_ngram_size", "segment_seconds")  # `xlsr translate`'s  # fmt: skip
KINDS = {  # kind -> (its name, its plural, the options that apply to it)
    "ctc": ("a CTC model", "CTC models", CTC_OPTIONS + ("chunk_seconds",)),
    "classifier": ("a classification model", "classifiers", CLASSIFIER_OPTIONS + ("chunk_seconds",)),
    "translation": ("a translation model", "translation models", TRANSLATION_OPTIONS),
}
REPORT_FILE = "report.json"


def model_kind(net: nn.Module) -> str:
    """The kind of model, "translation", "classifier" or "ctc": which options apply, how it is scored."""
    if isinstance(net, SpeechTranslationModel):
        return "translation"
    return "classifier" if getattr(net.cfg, "head", None) == "classification" else "ctc"


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
    target_lang: str | None = None,
    max_new_tokens: int | None = None,
    max_len_a: float | None = None,
    max_len_b: int | None = None,
    min_len: int | None = None,
    length_penalty: float | None = None,
    no_repeat_ngram_size: int | None = None,
    segment_seconds: float | None = None,
):
    """Transcribes (CTC), classifies (classification head) or translates (speech translation) a manifest and
    scores it against its references.

    model: any model xlsr reads (None: the bundled CTC model). The report goes to `output_dir/report.json`
    (and `json_path`, the old spelling). CTC models take the decoding options of `transcribe`
    (`CTC_OPTIONS`); classifiers `label_column` (default lang), `crops`, `crop_seconds` (default 10), `seed`
    (of the crops; default fairseq's 123) and `plot` (see `classify.py`). An option of the other kind is
    refused in one line, never silently dropped; options left at None take the defaults of `xlsr transcribe` /
    `xlsr identify`. Translation models take the segmenting and decoding options of `xlsr translate`
    (`TRANSLATION_OPTIONS`); a row's `tgt_lang` is its target language, else `target_lang`, else the model's own.
    `manifest` is any data source of `data/sources.py` (its test split), its columns named by `text_column` (CTC),
    `label_column` (classifiers) and `audio_column`; a bad row is a failed utterance.
    """
    if json_path:
        warnings.warn("evaluate(json_path=...) / --json PATH is now output_dir / --output-dir DIR (writes "
                      "DIR/report.json)", OldSpelling, stacklevel=2)  # fmt: skip
    net = inference_model(model, device, dtype)
    every = {k for _, _, names in KINDS.values() for k in names}
    given = {k: v for k, v in locals().items() if k in every and v not in (None, ())}
    kind = model_kind(net)
    wrong = [k for k in given if k not in KINDS[kind][2]]
    if wrong:
        others = [plural for name, (_, plural, names) in KINDS.items() if name != kind and set(wrong) & set(names)]
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ConfigError(f"{flags}: not an option for {KINDS[kind][0]} ({net.source}); it applies to "
                          f"{' and '.join(others)}")  # fmt: skip
    report_paths = [Path(output_dir) / REPORT_FILE] if output_dir else []
    report_paths += [Path(json_path)] if json_path else []
    common = dict(batch_seconds=batch_seconds, device=device, dtype=dtype, threads=threads, quiet=quiet,
                  audio_column=audio_column)  # fmt: skip
    if kind == "translation":
        report = _evaluate_translation(net, manifest, **given, **common)
    elif kind == "classifier":
        from .classify import CROP_SEED, evaluate_classifier

        if chunk_seconds is not None:
            common["chunk_seconds"] = chunk_seconds
        report = evaluate_classifier(net, manifest, label_column=label_column or "lang", crops=crops,
                                     crop_seconds=10.0 if crop_seconds is None else crop_seconds, plot=plot,
                                     seed=CROP_SEED if seed is None else seed, **common)  # fmt: skip
    else:
        given.pop("chunk_seconds", None)
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


def _evaluate_translation(
    net: SpeechTranslationModel, manifest: str | Path, audio_column: str | None = None, **options: Any
) -> TranslationReport:
    """Translates the data (each row into its `tgt_lang`, else `target_lang`, else the model's own target) with
    `xlsr translate`'s options, then scores hypotheses against the `translation` column with sacrebleu."""
    from .translate import translate

    rows = read_source(manifest, Columns(audio=audio_column), "test")
    utterances = rows.utterances
    if utterances and all(u.translation is None for u in utterances):
        raise DataError(f"{manifest}: no 'translation' column (the reference translations)")
    default = options.pop("target_lang", None)
    targets = [(u.get("tgt_lang") or "").strip() or default for u in utterances]
    report = TranslationReport(corpus_scores([], []), {})
    report.failed = [{"path": bad.where, "error": bad.cause} for bad in rows.bad]
    translations: list = [None] * len(utterances)
    for target in dict.fromkeys(targets):  # one pass per target language, in order of first appearance
        chosen = [i for i, t in enumerate(targets) if t == target]
        done = translate(net, [utterances[i] for i in chosen], target_lang=target, **options)
        for i, t in zip(chosen, done, strict=True):
            translations[i] = t
    groups: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for u, t, target in zip(utterances, translations, targets, strict=True):
        if t.error:
            report.failed.append({"path": str(u.path), "error": t.error})
            continue
        ref = (u.translation or "").strip()
        if not ref:
            report.skipped_empty += 1
            continue
        pair = f"{u.lang or '?'}-{target or t.target_lang}"
        for key in ("all", pair):
            groups[key][0].append(t.text)
            groups[key][1].append(ref)
        report.utterances.append({"path": str(u.path), "pair": pair, "reference": ref, "hypothesis": t.text})
    if "all" not in groups:
        raise DataError(f"{manifest}: no utterance could be scored")
    report.overall = corpus_scores(*groups.pop("all"))
    report.per_pair = {k: corpus_scores(*v) for k, v in groups.items()}
    return report
