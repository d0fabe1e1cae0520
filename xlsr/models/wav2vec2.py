"""The wav2vec 2.0 / XLS-R network: feature encoder -> feature projection -> (masking) -> Transformer -> head.

fairseq `Wav2Vec2Model` (+ `Wav2VecCtc`); transformers `Wav2Vec2Model`, `Wav2Vec2ForPreTraining`,
`Wav2Vec2ForCTC`, `Wav2Vec2ForSequenceClassification`; torchaudio `Wav2Vec2Model`.

Dimension letters: B batch, S samples, T frames (20 ms), C conv channels, D model dim, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, Preprocessing
from ..text.ctc_tokenizer import CTCTokenizer
from .feature_encoder import FeatureEncoder, GradMultiply
from .heads import ClassificationHead, CTCHead, PretrainingHead
from .padding import padding_mask as make_padding_mask
from .transformer import TransformerEncoder
from .weights import build_with_weights


@dataclass
class EncoderOutput:
    x: Tensor  # (B, T, D) final output (transformers `last_hidden_state`)
    hidden_states: list[Tensor]  # input of block 0, then each block's output (transformers `hidden_states`), on request
    features: Tensor  # (B, T, C) layer-normed conv features, the quantizer's input (transformers `extract_features`)
    padding_mask: Tensor | None  # (B, T) bool, True = padded frame; None when nothing is padded
    lengths: Tensor | None  # (B,) long, valid frames
    features_pen: Tensor  # () mean square of the raw conv features (fairseq `features_pen`)


class FeatureProjection(nn.Module):
    """Layer norm over the conv channels, then a linear map to the model dim, then dropout.

    fairseq: `layer_norm` + `post_extract_proj` (absent when the conv dim already equals the model dim)
    + `dropout_input`; transformers `Wav2Vec2FeatureProjection`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim, eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim, cfg.encoder_embed_dim) if cfg.post_extract_proj else None
        self.dropout = cfg.dropout_input

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features: (B, T, C) -> projected (B, T, D), normed (B, T, C)."""
        normed = self.layer_norm(features)
        x = normed if self.projection is None else self.projection(normed)
        return F.dropout(x, self.dropout, self.training), normed


class Wav2Vec2Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_encoder = FeatureEncoder(cfg.conv_feature_layers, cfg.extractor_mode, cfg.conv_bias)
        self.feature_projection = FeatureProjection(cfg)
        # learned vector that replaces masked frames (fairseq `mask_emb`; transformers `masked_spec_embed`)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = TransformerEncoder(cfg)
        # What a loaded model carries besides its weights (set by `xlsr.checkpoints.load_model`).
        self.tokenizer: CTCTokenizer | None = None
        self.preprocessing = Preprocessing()
        self.source = "new model"
        heads = {"pretraining": PretrainingHead, "ctc": CTCHead, "classification": ClassificationHead}
        self.head = heads[cfg.head](cfg) if cfg.head in heads else None

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, state: dict[str, Tensor]) -> Wav2Vec2Model:
        """A float32 model holding exactly `state`; a missing or unexpected weight raises ValueError.

        `mask_emb` alone may be absent (transformers drops it from models saved without masking): it
        then gets a fresh initialisation. The network is built on the meta device first, so no time
        goes into random weights that are overwritten at once (seconds for the 2B model).
        """
        model = build_with_weights(cls, cfg, state, optional="mask_emb")
        if "mask_emb" not in state:
            model.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        return model.float()

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames."""
        return self.feature_encoder.output_lengths(lengths)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.feature_encoder.gradient_checkpointing = enabled
        self.encoder.gradient_checkpointing = enabled

    def encode(
        self,
        waveforms: Tensor,
        lengths: Tensor | None = None,
        time_mask: Tensor | None = None,
        channel_mask: Tensor | None = None,
        num_layers: int | None = None,
        feature_grad_mult: float = 1.0,
        return_hidden_states: bool = False,
        features: Tensor | None = None,
    ) -> EncoderOutput:
        """waveforms: (B, S) float, already normalised as the model's preprocessing says;
        lengths: (B,) long valid samples (None: nothing is padded);
        time_mask: (B, T) bool, True = replace the frame with `mask_emb` (pretraining, SpecAugment);
        channel_mask: (B, D) bool, True = zero this channel in every frame (SpecAugment);
        num_layers: stop after this many blocks (see `TransformerEncoder.forward`);
        return_hidden_states: keep every block's output in `hidden_states` (else it is empty);
        feature_grad_mult: gradient scale into the feature encoder (0 freezes it; fairseq `feature_grad_mult`);
        features: (B, T, C) the feature encoder's output for `waveforms`, computed before (a frozen feature
            encoder's, kept across epochs: finetuning/feature_cache.py); the feature encoder then does not run.
        """
        if features is not None:
            frame_lengths = None if lengths is None else self.feature_encoder.output_lengths(lengths)
        elif feature_grad_mult > 0 or not torch.is_grad_enabled():
            features, frame_lengths = self.feature_encoder(waveforms, lengths)
            if feature_grad_mult != 1.0 and features.requires_grad:
                features = GradMultiply.apply(features, feature_grad_mult)
        else:
            with torch.no_grad():
                features, frame_lengths = self.feature_encoder(waveforms, lengths)
        features_pen = features.float().pow(2).mean()
        T = features.shape[1]
        pad = None
        if frame_lengths is not None and bool((frame_lengths < T).any()):
            pad = make_padding_mask(frame_lengths, T)
        x, normed = self.feature_projection(features)
        if time_mask is not None:
            x = torch.where(time_mask[..., None], self.mask_emb.to(x.dtype), x)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask[:, None, :], 0.0)
        x, hidden_states = self.encoder(x, pad, num_layers, return_hidden_states)
        return EncoderOutput(x, hidden_states, normed, pad, frame_lengths, features_pen)

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
        """waveforms: (B, S), lengths: (B,) -> CTC logits (B, T, V), class logits (B, num_labels),
        or, for the other heads, the encoder output (B, T, D)."""
        out = self.encode(waveforms, lengths, return_hidden_states=self.cfg.use_weighted_layer_sum)
        if isinstance(self.head, CTCHead):
            return self.head(out.x)
        if isinstance(self.head, ClassificationHead):
            return self.head(out.x, out.hidden_states, out.padding_mask)
        return out.x

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards one by one (the Transformer blocks); the rest is sharded with the root."""
        return list(self.encoder.layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
