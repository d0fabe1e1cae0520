"""What sits on top of the encoder: the pretraining projections, a CTC head, an utterance classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .quantizer import GumbelVectorQuantizer


class PretrainingHead(nn.Module):
    """The parts only self-supervised training needs (fairseq Wav2Vec2Model; transformers Wav2Vec2ForPreTraining).

    quantizer: latent features -> codebook targets (None when fairseq `quantize_targets=False`: the
        targets are then the projected latent features themselves).
    project_q: targets -> contrastive space (fairseq and transformers `project_q`).
    final_proj: context vectors -> contrastive space (fairseq `final_proj`; transformers `project_hid`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.quantize_targets:
            self.quantizer = GumbelVectorQuantizer(cfg.conv_dim, cfg.latent_vars, cfg.latent_groups, cfg.codevector_dim)
            self.project_q = nn.Linear(cfg.codevector_dim, cfg.final_dim)
        else:
            self.quantizer = None
            self.project_q = nn.Linear(cfg.conv_dim, cfg.final_dim)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, cfg.final_dim)


class CTCHead(nn.Module):
    """Dropout, then a linear layer over the vocabulary (fairseq wav2vec_ctc `proj`; transformers `lm_head`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dropout = cfg.final_dropout
        self.proj = nn.Linear(cfg.encoder_embed_dim, cfg.vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> logits (B, T, V)."""
        return self.proj(F.dropout(x, self.dropout, self.training))


class ClassificationHead(nn.Module):
    """An utterance classifier: optional learned weighted sum of the hidden states
    (`use_weighted_layer_sum`), projection, mean over the valid frames (padding excluded), activation,
    classifier: `logits = classifier(act(mean_t(projector(x_t))))`.

    transformers `Wav2Vec2ForSequenceClassification` (`projector`, `classifier`, no activation:
    classifier_activation "linear") and fairseq `wav2vec_classification`'s `MeanPoolingFast` (`linear`,
    `projection`, activation_fn "gelu" by default) are both this module.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.encoder_layers + 1
        self.layer_weights = nn.Parameter(torch.ones(n) / n) if cfg.use_weighted_layer_sum else None
        self.projector = nn.Linear(cfg.encoder_embed_dim, cfg.classifier_proj_size)
        self.classifier = nn.Linear(cfg.classifier_proj_size, len(cfg.labels))
        self.activation = nn.GELU() if cfg.classifier_activation == "gelu" else nn.Identity()

    def pool(self, x: Tensor, hidden_states: list[Tensor], padding_mask: Tensor | None) -> Tensor:
        """The utterance embedding, before the activation (fairseq `MeanPoolingFast.forward_latent`):
        x: (B, T, D) encoder output; padding_mask: (B, T) True = padded -> (B, P)."""
        if self.layer_weights is not None:
            weights = self.layer_weights.softmax(-1)
            x = (torch.stack(hidden_states, dim=1) * weights[None, :, None, None]).sum(dim=1)
        x = self.projector(x)  # (B, T, P)
        if padding_mask is None:
            return x.mean(dim=1)
        valid = (~padding_mask).to(x.dtype)[..., None]  # (B, T, 1)
        return (x * valid).sum(dim=1) / valid.sum(dim=1)

    def forward(self, x: Tensor, hidden_states: list[Tensor], padding_mask: Tensor | None) -> Tensor:
        """x: (B, T, D) encoder output; padding_mask: (B, T) True = padded -> logits (B, num_labels)."""
        return self.classifier(self.activation(self.pool(x, hidden_states, padding_mask)))
