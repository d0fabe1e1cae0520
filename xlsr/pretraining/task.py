"""`xlsr pretrain`: self-supervised training with the XLS-R objective (masking + contrastive loss)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_model
from ..config import preset as get_preset
from ..data.dataset import AudioDataset, BatchSampler, crop_and_pad, dropped_counts, evaluation_sampler
from ..models import Wav2Vec2Model
from ..training.config import TrainConfig, build_config
from ..training.distributed import World
from ..training.initialize import init_from
from ..training.logging import log
from ..training.masking import batch_generator, compute_mask
from ..training.trainer import StepOutput, Task, Trainer
from .losses import pretraining_forward
from .negatives import sample_negatives

# fairseq's pretraining configs per layout (wav2vec2_base_librispeech.yaml, wav2vec2_large_librivox.yaml, XLS-R)
LAYOUT_DEFAULTS = {
    "group_norm": {"latent_temp": (2.0, 0.5, 0.999995), "loss_weights": (0.1, 10.0), "feature_grad_mult": 0.1},
    "layer_norm": {"latent_temp": (2.0, 0.1, 0.999995), "loss_weights": (0.1, 0.0), "feature_grad_mult": 1.0},
}


@dataclass
class PretrainConfig(TrainConfig):
    preset: str = "xlsr-300m"  # model shape when starting from scratch (ignored with --init)
    mask_prob: float = 0.65  # share of frames that start a masked span (about 49% end up masked)
    mask_length: int = 10  # frames per span
    min_masks: int = 2  # at least this many spans per utterance
    num_negatives: int = 100  # distractors per masked frame, from the same utterance's masked frames
    # None: fairseq's value for the model's layout (LAYOUT_DEFAULTS)
    latent_temp: tuple[float, float, float] | None = None  # Gumbel temperature (start, end, decay per update)
    loss_weights: tuple[float, float] | None = None  # (diversity, feature penalty)
    feature_grad_mult: float | None = None  # scales the feature encoder's gradient
    sampling_alpha: float = 0.5  # language sampling p_l ~ (n_l / N)^alpha (XLS-R); 1.0 = as the data comes


class PretrainTask(Task):
    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, train, valid, init: str | None):
        super().__init__(cfg, train, valid)
        self.init = init
        self.temperature: float | None = None

    def build_model(self) -> Wav2Vec2Model:
        cfg: PretrainConfig = self.cfg
        if self.init:
            start = load_model(self.init)
            keep_head = start.cfg.head == "pretraining"
            new_head = {} if keep_head else {"head": "pretraining", "vocab_size": 0, "labels": ()}
            if not keep_head:
                log.warning("%s has no pretraining head: a new quantizer and projections are initialised", self.init)
            model = init_from(start, {**cfg.model, **new_head}, keep_head)
        else:
            model = Wav2Vec2Model(get_preset(cfg.preset, head="pretraining").replace(**cfg.model))
        self.may_skip_parameters = model.cfg.encoder_layerdrop > 0  # DDP: a dropped block has no gradient
        layout = LAYOUT_DEFAULTS[model.cfg.extractor_mode]
        for key, value in layout.items():  # resolve the layout's defaults, so config.yaml shows them
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        return model

    def datasets(self, model: Wav2Vec2Model, world: World):
        cfg: PretrainConfig = self.cfg
        self.model_cfg, pre = model.cfg, model.preprocessing
        self.sample_rate = pre.sample_rate
        train = AudioDataset(self.utterances("train"), pre, cfg.min_sample_size)
        self.dropped["train"] = dropped_counts(train)
        sampler = BatchSampler(
            train.sizes,
            cfg.max_tokens,
            cfg.max_sample_size,
            cfg.seed,
            [u.lang for u in train.utterances],
            cfg.sampling_alpha,
            True,
            world.rank,
            world.size,
        )
        valid = valid_sampler = None
        if self.valid_manifest:
            valid = AudioDataset(self.utterances("valid"), pre, cfg.min_sample_size)
            self.dropped["valid"] = dropped_counts(valid)
            valid_sampler = evaluation_sampler(valid.sizes, cfg.max_tokens, cfg.max_sample_size, world.rank, world.size)
        return train, sampler, valid, valid_sampler

    def collate(self, items: list[dict]) -> dict:
        cfg: PretrainConfig = self.cfg
        audio, lengths = crop_and_pad(items, cfg.max_sample_size, cfg.pad, cfg.seed)
        frames = self.model_cfg.num_frames(lengths)
        g = batch_generator(cfg.seed, items[0]["epoch"], [it["index"] for it in items])
        mask = compute_mask(frames, int(frames.max()), cfg.mask_prob, cfg.mask_length, cfg.min_masks, g)
        negatives = sample_negatives(mask, cfg.num_negatives, g)
        padded = bool((lengths < audio.shape[1]).any())
        return {
            "audio": audio,
            "audio_lens": lengths if padded else None,
            "mask": mask,
            "negatives": negatives,
            "sample_size": int(mask.sum()),
            "audio_seconds": float(lengths.sum()) / self.sample_rate,
            "noise_seed": int(g.initial_seed()) ^ 0x5EED,
        }

    def before_update(self, model: Wav2Vec2Model, update: int) -> None:
        start, end, decay = self.cfg.latent_temp
        if model.head.quantizer is not None:
            self.temperature = model.head.quantizer.temperature = max(start * decay**update, end)
        model.encoder.layerdrop_generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + update)

    def forward(self, model, batch: dict, update: int) -> StepOutput:
        device = next(model.parameters()).device
        lengths = batch["audio_lens"]
        noise = torch.Generator(device=device).manual_seed(batch["noise_seed"])
        out = pretraining_forward(
            model,
            batch["audio"].to(device),
            None if lengths is None else lengths.to(device),
            batch["mask"],
            batch["negatives"],
            self.cfg.feature_grad_mult,
            generator=noise,
        )
        loss = out.loss(self.cfg.loss_weights)
        n = out.count
        stats = {
            "loss": float(loss.detach()),
            "contrastive": float(out.contrastive.detach()),
            "diversity": float(out.diversity.detach()) * n,
            "features_pen": float(out.features_pen.detach()) * n,
            "correct": out.correct,
            "sample_size": n,
            "prob_perplexity": out.prob_perplexity,
            "code_perplexity": out.code_perplexity,
            "batches": 1,
        }
        return StepOutput(loss, stats)

    def summarize(self, s: dict[str, float]) -> dict[str, float]:
        n, b = max(s.get("sample_size", 0), 1), max(s.get("batches", 0), 1)
        metrics = {
            "loss": s["loss"] / n,
            "contrastive": s["contrastive"] / n,
            "diversity": s["diversity"] / n,
            "features_pen": s["features_pen"] / n,
            "accuracy": s["correct"] / n,
            "prob_perplexity": s["prob_perplexity"] / b,
            "code_perplexity": s["code_perplexity"] / b,
        }
        if self.temperature is not None:
            metrics["temperature"] = self.temperature
        return metrics

    def check(self, metrics: dict[str, float], update: int) -> None:
        mc = self.model_cfg
        if not mc.quantize_targets or update < max(self.cfg.warmup_updates, 1):
            return
        codes = mc.latent_vars * mc.latent_groups
        if metrics["code_perplexity"] < max(2.0, 0.05 * codes):
            log.warning(
                "codebook collapse: code perplexity %.1f of %d entries at update %d; raise the diversity "
                "loss weight (loss_weights), lower lr, or check the audio",
                metrics["code_perplexity"],
                codes,
                update,
            )


def pretrain(
    train: str | Path,
    out: str | Path,
    valid: str | Path | None = None,
    config: str | Path | None = None,
    preset: str | None = None,
    init: str | None = None,
    set: list[str] = (),  # noqa: A002 (the CLI's --set)
    quiet: bool = False,
    audio_column: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Pretrains (or continues pretraining) a model on the audio of `train`; writes checkpoints to `out`.
    `train` and `valid` are data sources of `data/sources.py`; `audio_column` names their audio column."""
    cfg = build_config(PretrainConfig, config, set, preset=preset, audio_column=audio_column, device=device,
                       threads=threads)  # fmt: skip
    task = PretrainTask(cfg, train, valid, init)
    return Trainer(task, out, quiet).run()
