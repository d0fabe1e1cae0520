"""Classifier evaluation (`xlsr evaluate` on a classification model: language ID, speaker ID, ...).

Accuracy overall, per class and per duration bucket (0-5 s, 5-20 s, 20 s and more: the buckets of the
XLS-R paper's VoxLingua107 table), and a confusion matrix (text, and a PNG with matplotlib). Utterances are
classified as `xlsr identify` does (windows of `chunk_seconds`, probabilities averaged); `crops=N` is
fairseq's LID evaluation instead: N random crops of at most `crop_seconds` per utterance (an utterance no
longer than that is used whole, once), softmax per crop, probabilities averaged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .audio import load_audio, normalize
from .checkpoints.io import atomic_path, atomic_write_text
from .data.manifest import Columns
from .data.sources import read_source
from .errors import ConfigError, DataError, XlsrError
from .identify import CHUNK_SECONDS, classification_model, identify
from .inference import model_placement, prepare_batch
from .runtime import progress, set_threads

BUCKETS = ((0.0, 5.0, "0-5 s"), (5.0, 20.0, "5-20 s"), (20.0, float("inf"), ">20 s"))


# -- evaluation ------------------------------------------------------------------------------------------
CROP_SEED = 123  # fairseq examples/wav2vec/xlsr/scripts/gen_audio_embedding.py: np.random.seed(123)


def crop_starts(lengths: list[int], crop: int, n: int, seed: int = CROP_SEED) -> list[list[int]]:
    """fairseq's LID evaluation crops (gen_audio_embedding.py `resample_sample`), drawn in its order: one
    RandomState seeded once; for each of the n crops, for each utterance in turn, a start in
    [0, length - crop] when the utterance is longer than `crop` (only those draw), else 0 (used whole)."""
    rng = np.random.RandomState(seed)
    starts: list[list[int]] = [[] for _ in lengths]
    for _ in range(n):
        for i, length in enumerate(lengths):
            starts[i].append(int(rng.randint(0, length - crop + 1)) if length > crop else 0)
    return starts


@torch.inference_mode()
def crop_probabilities(net: nn.Module, audio: np.ndarray, crop: int, starts: list[int]) -> np.ndarray:
    """Softmax per crop, averaged ("mean_logit" averages probabilities): (K,). As fairseq's FileAudioDataset,
    the utterance is normalised over ALL its samples before it is cut, and the crops are not normalised again."""
    device, dtype = model_placement(net)
    pre = net.preprocessing
    whole = torch.from_numpy(audio)[None]
    if pre.do_normalize:
        whole = normalize(whole, None, pre.normalize_eps)
    unique = sorted(set(starts))  # an utterance no longer than a crop is the same crop n times
    crops = [whole[0, s : s + crop].numpy() for s in unique]
    waves, lengths = prepare_batch(crops, replace(pre, do_normalize=False), device, dtype)
    probs = net(waves, lengths).float().softmax(-1).cpu().numpy()
    return probs[[unique.index(s) for s in starts]].mean(0)


@dataclass
class Accuracy:
    correct: int = 0
    total: int = 0

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")


@dataclass
class ClassificationReport:
    labels: tuple[str, ...]
    overall: Accuracy
    per_class: dict[str, Accuracy]
    per_bucket: dict[str, Accuracy]
    confusion: np.ndarray  # (reference, predicted) counts over `labels`
    utterances: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        acc = lambda a: {"accuracy": a.value, "correct": a.correct, "total": a.total}  # noqa: E731
        return {
            "overall": acc(self.overall),
            "per_class": {k: acc(v) for k, v in self.per_class.items()},
            "per_duration": {k: acc(v) for k, v in self.per_bucket.items()},
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
            "failed": self.failed,
            "utterances": self.utterances,
        }

    def table(self) -> str:
        lines = [f"{'class':<14} {'utts':>6} {'accuracy %':>11}"]
        for name, a in sorted(self.per_class.items()):
            lines.append(f"{name:<14} {a.total:>6} {100 * a.value:>11.2f}")
        for name, a in self.per_bucket.items():
            lines.append(f"{'[' + name + ']':<14} {a.total:>6} {100 * a.value:>11.2f}")
        lines.append(f"{'all':<14} {self.overall.total:>6} {100 * self.overall.value:>11.2f}")
        return "\n".join(lines) + "\n\n" + self.confusion_text()

    def confusion_text(self) -> str:
        used = [i for i in range(len(self.labels)) if self.confusion[i].sum() or self.confusion[:, i].sum()]
        width = max(5, *(len(self.labels[i]) for i in used))
        first = max(len("ref \\ hyp"), width)
        head = "ref \\ hyp".ljust(first) + " " + " ".join(self.labels[i].rjust(width) for i in used)
        rows = [
            self.labels[r].ljust(first) + " " + " ".join(str(self.confusion[r, c]).rjust(width) for c in used)
            for r in used
        ]
        return "confusion matrix (rows: reference, columns: prediction)\n" + "\n".join([head, *rows])

    def plot(self, path: str | Path) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ConfigError("a confusion-matrix plot needs matplotlib (pip install 'xlsr[plot]')") from None
        n = len(self.labels)
        fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
        rates = self.confusion / np.maximum(self.confusion.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), self.labels, rotation=90)
        ax.set_yticks(range(n), self.labels)
        ax.set_xlabel("prediction")
        ax.set_ylabel("reference")
        for r in range(n):
            for c in range(n):
                if self.confusion[r, c]:
                    ax.text(c, r, str(self.confusion[r, c]), ha="center", va="center", fontsize=7,
                            color="white" if rates[r, c] > 0.5 else "black")  # fmt: skip
        ax.set_title(f"accuracy {100 * self.overall.value:.1f}%")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)


def score(labels: tuple[str, ...], rows: list[tuple[str, str, float]]) -> ClassificationReport:
    """rows: (reference, prediction, seconds) -> accuracies overall, per class, per duration bucket, confusion."""
    index = {label: i for i, label in enumerate(labels)}
    report = ClassificationReport(labels, Accuracy(), {}, {}, np.zeros((len(labels), len(labels)), dtype=np.int64))
    for ref, hyp, seconds in rows:
        ok = int(ref == hyp)
        bucket = next(name for lo, hi, name in BUCKETS if lo <= seconds < hi)
        for acc in (report.overall, report.per_class.setdefault(ref, Accuracy()),
                    report.per_bucket.setdefault(bucket, Accuracy())):  # fmt: skip
            acc.correct += ok
            acc.total += 1
        if ref in index:
            report.confusion[index[ref], index[hyp]] += 1
    order = [name for _, _, name in BUCKETS if name in report.per_bucket]
    report.per_bucket = {name: report.per_bucket[name] for name in order}
    return report


def _crop_rows(
    net: nn.Module, utterances: list, crop: int, n: int, seed: int, failed: list[dict[str, str]], quiet: bool
) -> list[tuple[Any, np.ndarray, float]]:
    """fairseq's crop evaluation over a manifest -> (utterance, averaged probabilities, seconds) rows; an
    unreadable file goes to `failed` and draws no crop."""
    rate = net.preprocessing.sample_rate
    fail = lambda u, e: failed.append({"path": str(u.path), "error": str(e).removeprefix(f"{u.path}: ")})  # noqa: E731
    lengths: dict[int, int] = {}  # every length first: fairseq draws the crops of all utterances in turn
    for i, u in enumerate(utterances):
        try:
            lengths[i] = u.samples or len(load_audio(u.path, rate))
        except XlsrError as e:
            fail(u, e)
    rows = []
    bar = progress(len(lengths), "evaluate", "utt", quiet)
    for i, starts in zip(lengths, crop_starts(list(lengths.values()), crop, n, seed), strict=True):
        bar.update(1)
        u = utterances[i]
        try:
            audio = load_audio(u.path, rate)
        except XlsrError as e:
            fail(u, e)
            continue
        if len(audio) != lengths[i]:
            fail(u, f"{len(audio)} samples at {rate} Hz, but the manifest says {lengths[i]}")
            continue
        rows.append((u, crop_probabilities(net, audio, crop, starts), len(audio) / rate))
    bar.close()
    return rows


def evaluate_classifier(
    model: str | Path | nn.Module | None,
    manifest: str | Path,
    json_path: str | Path | None = None,
    label_column: str = "lang",
    crops: int | None = None,
    crop_seconds: float = 10.0,
    plot: str | Path | None = None,
    seed: int = CROP_SEED,
    chunk_seconds: float = CHUNK_SECONDS,
    batch_seconds: float = 60.0,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    quiet: bool = False,
    audio_column: str | None = None,
) -> ClassificationReport:
    """Classifies every utterance of `manifest` (any data source of `data/sources.py`, its test split) and scores
    it against its `label_column`; a row without a label is a failed utterance."""
    if crops is not None and crops < 1:
        raise ConfigError(f"--crops must be at least 1, got {crops}")
    set_threads(threads)
    net = classification_model(model, device, dtype)
    source = read_source(manifest, Columns(audio=audio_column, label=label_column), "test")
    utterances = source.utterances
    refs = [u.get(label_column) for u in utterances]
    if utterances and all(r is None for r in refs):
        raise DataError(f"{manifest}: no '{label_column}' column to score against (set --label-column)")
    rows, report_rows, failed = [], [], [{"path": bad.where, "error": bad.cause} for bad in source.bad]
    if crops:
        rows = _crop_rows(net, utterances, int(crop_seconds * net.preprocessing.sample_rate), crops, seed, failed,
                          quiet)  # fmt: skip
    else:
        results = identify(net, utterances, top_k=len(net.cfg.labels), chunk_seconds=chunk_seconds,
                           batch_seconds=batch_seconds, quiet=quiet)  # fmt: skip
        for u, r in zip(utterances, results, strict=True):
            if r.error:
                failed.append({"path": str(u.path), "error": r.error})
                continue
            probs = dict(r.top)
            rows.append((u, np.array([probs[label] for label in net.cfg.labels]), r.duration))
    listed = []
    for u, probs, seconds in rows:
        ref = u.get(label_column)
        if ref is None:
            continue
        hyp = net.cfg.labels[int(np.argmax(probs))]
        report_rows.append((ref, hyp, seconds))
        listed.append({"path": str(u.path), "reference": ref, "prediction": hyp, "seconds": round(seconds, 3)})
    if not report_rows:
        raise DataError(f"{manifest}: no utterance could be scored")
    report = score(net.cfg.labels, report_rows)
    report.failed, report.utterances = failed, listed
    if json_path:
        atomic_write_text(json_path, json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    if plot:
        report.plot(plot)
    return report
