"""`xlsr finetune classify`: utterance classification (language ID, speaker ID, any label column).

The head is transformers' Wav2Vec2ForSequenceClassification: projection, mean over the valid frames
(padding excluded), classifier; optionally a learned softmax-weighted sum of the Transformer's hidden
states (`weighted_layer_sum`, transformers `use_weighted_layer_sum`). Labels are the sorted values of the
label column in the training manifest, stored in the model (`id2label`). Training sees random crops of
`crop_seconds`; validation the whole utterance (up to `max_sample_size`). `balanced=true` samples every
class equally often (XLS-R's language sampling with alpha = 0 over the labels).

Defaults differ from CTC fine-tuning where transformers' audio-classification recipe does: light time
masking (mask_prob 0.05), no channel masking, no frozen phase, lr 1e-4 with 10% linear warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import load_model, save_hf_dir
from ..data.dataset import AudioDataset, BatchSampler, crop_and_pad, dropped_counts, evaluation_sampler
from ..data.manifest import Columns
from ..errors import DataError
from ..models import Wav2Vec2Model
from ..training.config import Scheduler, build_config
from ..training.distributed import World
from ..training.logging import log
from ..training.masking import batch_generator
from ..training.trainer import StepOutput, Trainer
from .common import FinetuneConfig, FinetuneTask, build_finetune_model, encode_batch, spec_augment


@dataclass
class ClassifyConfig(FinetuneConfig):
    label_column: str = "lang"  # the manifest column holding the labels
    crop_seconds: float = 6.0  # training crops
    balanced: bool = False  # class-balanced sampling
    weighted_layer_sum: bool = False  # a learned softmax-weighted sum of the hidden states (HF use_weighted_layer_sum)
    classifier_proj_size: int = 256  # the projection before the mean over frames
    lr: float = 1e-4
    lr_scheduler: Scheduler = "polynomial_decay"
    warmup_updates: int = 2000
    freeze_finetune_updates: int = 0
    mask_prob: float = 0.05
    mask_channel_prob: float = 0.0
    max_update: int = 20_000


class ClassificationTask(FinetuneTask):
    name = "classify"
    best_metric = "accuracy"
    maximize = True

    def __init__(self, cfg: ClassifyConfig, train, valid, init: str):
        super().__init__(cfg, train, valid, init)
        self.labels: tuple[str, ...] = ()

    def columns(self) -> Columns:
        return Columns(audio=self.cfg.audio_column, label=self.cfg.label_column)

    def build_model(self) -> Wav2Vec2Model:
        cfg: ClassifyConfig = self.cfg
        values = [u.get(cfg.label_column) for u in self.utterances("train")]
        if all(v is None for v in values):
            raise DataError(f"{self.train_manifest}: no '{cfg.label_column}' column (set --label-column)")
        self.labels = tuple(sorted({v for v in values if v}))
        if len(self.labels) < 2:
            raise DataError(f"{self.train_manifest}: '{cfg.label_column}' has fewer than two distinct values")
        start = load_model(self.init)
        keep = start.cfg.head == "classification" and start.cfg.labels == self.labels
        if keep:
            log.info("%s already classifies these labels: its head is fine-tuned further", self.init)
        log.info("%d labels (%s): %s", len(self.labels), cfg.label_column, " ".join(self.labels))
        return build_finetune_model(start, cfg, keep_head=keep, head="classification",
                                    labels=self.labels, use_weighted_layer_sum=cfg.weighted_layer_sum,
                                    classifier_proj_size=cfg.classifier_proj_size)  # fmt: skip

    def _dataset(self, manifest, model: Wav2Vec2Model, training: bool) -> AudioDataset:
        cfg: ClassifyConfig = self.cfg
        ds = AudioDataset(self.utterances("train" if training else "valid"), model.preprocessing, cfg.min_sample_size)
        ds.training = training
        keep = np.array([u.get(cfg.label_column) in self.index for u in ds.utterances], dtype=bool)
        reason = f"no {cfg.label_column}, or one the training manifest does not have"
        self.dropped["train" if training else "valid"] = {reason: int((~keep).sum()), **dropped_counts(ds)}
        ds.select(keep)
        return ds

    def datasets(self, model: Wav2Vec2Model, world: World):
        cfg: ClassifyConfig = self.cfg
        self.model_cfg, self.sample_rate = model.cfg, model.preprocessing.sample_rate
        self.index = {label: i for i, label in enumerate(model.cfg.labels)}
        self.crop = int(cfg.crop_seconds * self.sample_rate)
        train = self._dataset(self.train_manifest, model, True)
        labels = [u.get(cfg.label_column) for u in train.utterances]
        sampler = BatchSampler(train.sizes, cfg.max_tokens, self.crop, cfg.seed, labels,
                               0.0 if cfg.balanced else 1.0, True, world.rank, world.size)  # fmt: skip
        valid = self._dataset(self.valid_manifest, model, False)
        valid_sampler = evaluation_sampler(valid.sizes, cfg.max_tokens, cfg.max_sample_size, world.rank, world.size)
        return train, sampler, valid, valid_sampler

    def collate(self, items: list[dict]) -> dict:
        cfg: ClassifyConfig = self.cfg
        training = items[0]["training"]
        audio, lengths = crop_and_pad(items, self.crop if training else cfg.max_sample_size, True, cfg.seed)
        frames = self.model_cfg.num_frames(lengths)
        time_mask = channel_mask = None
        if training:
            g = batch_generator(cfg.seed, items[0]["epoch"], [it["index"] for it in items])
            time_mask, channel_mask = spec_augment(cfg, frames, self.model_cfg.encoder_embed_dim, g)
        labels = torch.tensor([self.index[it["utterance"].get(cfg.label_column)] for it in items])
        return {
            "audio": audio,
            "audio_lens": lengths,
            "labels": labels,
            "time_mask": time_mask,
            "channel_mask": channel_mask,
            "sample_size": len(items),
            "audio_seconds": float(lengths.sum()) / self.sample_rate,
        }

    def forward(self, model: Wav2Vec2Model, batch: dict, update: int) -> StepOutput:
        cfg: ClassifyConfig = self.cfg
        out = encode_batch(model, batch, cfg, update)
        device = out.x.device
        logits = model.head(out.x, out.hidden_states, out.padding_mask).float()
        labels = batch["labels"].to(device)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct = float((logits.detach().argmax(-1) == labels).sum())
        return StepOutput(loss, {"loss": float(loss.detach()), "correct": correct, "sample_size": len(labels)})

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        n = max(s["sample_size"], 1)
        return {"loss": s["loss"] / n, "accuracy": s["correct"] / n}

    def on_best(self, model: Wav2Vec2Model, out_dir: Path) -> None:
        save_hf_dir(model, out_dir / "best", None, model.preprocessing, xlsr_label_column=self.cfg.label_column)


def finetune_classify(
    init: str,
    train: str | Path,
    valid: str | Path,
    out: str | Path,
    label_column: str | None = None,
    config: str | Path | None = None,
    set: list[str] = (),  # noqa: A002 (the CLI's --set)
    quiet: bool = False,
    audio_column: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fine-tunes `init` to classify utterances by `label_column`; the best model by validation accuracy is
    written to `out/best/` (a Hugging Face Wav2Vec2ForSequenceClassification directory). `train` and `valid`
    are data sources of `data/sources.py`; `audio_column` names their audio column."""
    cfg = build_config(ClassifyConfig, config, set, label_column=label_column, audio_column=audio_column,
                       device=device, threads=threads)  # fmt: skip
    return Trainer(ClassificationTask(cfg, train, valid, init), out, quiet).run()
