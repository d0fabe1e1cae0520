"""What CTC and classification fine-tuning share: the fairseq fine-tuning options (masking, freezing,
regularisation), building the fine-tuned network from any pretrained model, and SpecAugment-style masks.

fairseq names: `apply_mask`, `mask_prob`, `mask_length`, `mask_channel_prob`, `mask_channel_length`,
`layerdrop`, `feature_grad_mult` (0.0 = feature encoder frozen), `freeze_finetune_updates`
(fairseq/models/wav2vec/wav2vec2_asr.py, Wav2Vec2AsrConfig).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..checkpoints import load_model
from ..errors import ConfigError
from ..models import Wav2Vec2Model
from ..models.wav2vec2 import EncoderOutput
from ..training.config import Scheduler, TrainConfig
from ..training.initialize import init_from
from ..training.logging import log
from ..training.masking import compute_mask
from ..training.trainer import Task
from .feature_cache import FeatureCache


@dataclass
class FinetuneConfig(TrainConfig):
    # fairseq examples/wav2vec/xlsr/config/finetune.yaml (XLS-R fine-tuning)
    max_update: int = 20_000
    lr: float = 3e-5
    lr_scheduler: Scheduler = "tri_stage"
    max_tokens: int = 1_280_000
    max_sample_size: int = 480_000  # 30 s: longer utterances are dropped (a crop would cut their label)
    min_sample_size: int = 0
    pad: bool = True
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    validate_interval_updates: int = 500
    save_interval_updates: int = 500
    freeze_finetune_updates: int = 10_000  # only the new head trains for this many updates
    freeze_feature_encoder: bool = True  # fairseq feature_grad_mult 0.0; transformers freeze_feature_encoder()
    apply_mask: bool = True  # SpecAugment-style time and channel masking in training
    mask_prob: float = 0.75  # time masking (replaced by the learned mask embedding)
    mask_length: int = 10  # frames per time span
    mask_channel_prob: float = 0.25  # channel masking (zeroed)
    mask_channel_length: int = 64  # channels per span (at most half the model dim)
    layerdrop: float = 0.1  # probability of skipping a Transformer block in training (model.encoder_layerdrop)
    dropout: float = 0.0  # fairseq wav2vec_ctc: dropout, attention_dropout 0.0, activation_dropout 0.1
    attention_dropout: float = 0.0  # on the attention weights
    activation_dropout: float = 0.1  # inside the feed-forward blocks
    final_dropout: float = 0.0  # before the head

    def check(self) -> None:
        super().check()
        if 0 < self.freeze_finetune_updates >= self.max_update:
            raise ConfigError(
                f"freeze_finetune_updates={self.freeze_finetune_updates} is not below max_update={self.max_update}: "
                "only the new head would ever train; lower freeze_finetune_updates (fairseq's XLS-R recipe: "
                "10000 of 20000 updates) or raise max_update"
            )

    def model_changes(self) -> dict:
        """The fine-tuning regularisation, as ModelConfig changes (then `model.*` overrides)."""
        return {
            "encoder_layerdrop": self.layerdrop,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
            "final_dropout": self.final_dropout,
            **self.model,
        }


def build_finetune_model(
    start: Wav2Vec2Model | str, cfg: FinetuneConfig, keep_head: bool = False, **head: object
) -> Wav2Vec2Model:
    """The encoder of any model xlsr reads (`start`: the model, or a path to it) with a new head (`head`:
    ModelConfig changes such as head, vocab_size, labels), initialised as the Hugging Face classes do theirs
    (normal, std 0.02, zero bias); `keep_head` keeps the model's own head (fine-tuning it further)."""
    start = start if isinstance(start, torch.nn.Module) else load_model(start)
    model = init_from(start, {**head, **cfg.model_changes()}, keep_head)
    if not keep_head:
        for module in model.head.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.02)
                torch.nn.init.zeros_(module.bias)
    if cfg.freeze_feature_encoder:
        for p in model.feature_encoder.parameters():
            p.requires_grad_(False)
    if start.cfg.head == "pretraining":
        log.info("%s: the quantizer and contrastive projections are dropped", start.source)
    return model


def encoder_frozen(cfg: FinetuneConfig, update: int) -> bool:
    """fairseq: the pretrained network takes no gradient while num_updates < freeze_finetune_updates."""
    return 0 <= update < cfg.freeze_finetune_updates


def frozen_context(cfg: FinetuneConfig, update: int):
    return torch.no_grad() if encoder_frozen(cfg, update) else contextlib.nullcontext()


def encode_batch(
    model: Wav2Vec2Model,
    batch: dict,
    cfg: FinetuneConfig,
    update: int,
    cache: FeatureCache | None = None,
    feature_grad_mult: float | None = None,
) -> EncoderOutput:
    """The encoder over a fine-tuning batch (audio, audio_lens, time_mask, channel_mask; `keys` where it holds
    whole utterances), frozen as the schedule says, the frozen feature encoder's output from `cache` where it
    can be; the head is the task's (it always trains). `feature_grad_mult`: None, 0 if `freeze_feature_encoder`
    else 1."""
    device = next(model.parameters()).device
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    if feature_grad_mult is None:
        feature_grad_mult = 0.0 if cfg.freeze_feature_encoder else 1.0
    audio, lengths = move(batch["audio"]), move(batch["audio_lens"])
    features = None
    if cache is not None and cache.usable(model, batch):
        features = cache.features(model, audio, lengths, batch["keys"])
    with frozen_context(cfg, update):
        return model.encode(
            audio,
            lengths,
            time_mask=move(batch["time_mask"]),
            channel_mask=move(batch["channel_mask"]),
            feature_grad_mult=feature_grad_mult,
            return_hidden_states=model.cfg.use_weighted_layer_sum,
            features=features,
        )


class FinetuneTask(Task):
    """What the fine-tuning tasks share: the encoder call and the layer-drop schedule."""

    may_skip_parameters = True  # a frozen encoder, layer drop

    def __init__(self, cfg: FinetuneConfig, train, valid, init: str):
        super().__init__(cfg, train, valid)
        self.init = init
        # the tasks whose batches are whole utterances (CTC, translation) keep a frozen feature encoder's output
        self.feature_cache: FeatureCache | None = None

    def before_update(self, model: Wav2Vec2Model, update: int) -> None:
        """Which blocks layer drop skips follows (seed, update): the same on every process, and after a resume."""
        model.encoder.layerdrop_generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + update)


def spec_augment(
    cfg: FinetuneConfig, frames: torch.Tensor, dim: int, g: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """fairseq `apply_mask` in fine-tuning: time spans replaced by the mask embedding (at least 2 spans, as
    fairseq's mask_min_space / transformers' mask_time_min_masks), channel spans zeroed (no minimum).
    A channel span is at most half the model dim (only tiny models notice: 64 of 1024 channels is the norm)."""
    if not cfg.apply_mask:
        return None, None
    time_mask = channel_mask = None
    if cfg.mask_prob > 0:
        time_mask = compute_mask(frames, int(frames.max()), cfg.mask_prob, cfg.mask_length, 2, g)
    if cfg.mask_channel_prob > 0:
        dims = torch.full((len(frames),), dim, dtype=torch.long)
        channel_mask = compute_mask(dims, dim, cfg.mask_channel_prob, min(cfg.mask_channel_length, dim // 2), 0, g)
    return time_mask, channel_mask
