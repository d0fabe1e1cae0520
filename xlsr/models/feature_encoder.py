"""The convolutional feature encoder: raw 16 kHz waveform -> one latent vector per 20 ms.

fairseq `ConvFeatureExtractionModel`; transformers `Wav2Vec2FeatureEncoder`; torchaudio `FeatureExtractor`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class ConvLayer(nn.Module):
    """conv -> (layer norm over channels | group norm per channel | nothing) -> GELU.

    The "layer_norm" mode (XLS-R) normalises every frame over its channels, so a frame never sees
    its neighbours' statistics: padding cannot leak into valid frames. The "group_norm" mode
    (wav2vec2-base, only in the first layer) normalises each channel over the whole time axis.
    """

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        if norm == "layer":
            self.norm = nn.LayerNorm(n_out)
        elif norm == "group":
            self.norm = nn.GroupNorm(n_out, n_out)
        else:
            self.norm = None
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, S) -> (B, C_out, S')."""
        x = self.conv(x)
        if isinstance(self.norm, nn.LayerNorm):
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm is not None:
            x = self.norm(x)
        return F.gelu(x)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1


class FeatureEncoder(nn.Module):
    """Args:
    conv_layers: (dim, kernel, stride) per layer; fairseq `conv_feature_layers`,
        transformers `conv_dim` / `conv_kernel` / `conv_stride`.
    mode: "layer_norm" (fairseq extractor_mode=layer_norm, transformers feat_extract_norm="layer")
        or "group_norm" (fairseq extractor_mode=default, transformers feat_extract_norm="group").
    bias: conv bias (fairseq / transformers `conv_bias`).
    """

    def __init__(self, conv_layers: tuple[tuple[int, int, int], ...], mode: str, bias: bool):
        super().__init__()
        layers, n_in = [], 1
        for i, (dim, kernel, stride) in enumerate(conv_layers):
            norm = "layer" if mode == "layer_norm" else ("group" if i == 0 else None)
            layers.append(ConvLayer(n_in, dim, kernel, stride, bias, norm))
            n_in = dim
        self.conv_layers = nn.ModuleList(layers)
        self.gradient_checkpointing = False

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """waveforms: (B, S) float, lengths: (B,) long samples -> features (B, T, C), lengths (B,) frames."""
        x = waveforms[:, None]  # (B, 1, S)
        for layer in self.conv_layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x.transpose(1, 2), None if lengths is None else self.output_lengths(lengths)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames produced from `lengths` samples, each conv applying its own formula: (B,) -> (B,)."""
        for layer in self.conv_layers:
            lengths = layer.output_lengths(lengths)
        return lengths.clamp(min=0)


class GradMultiply(torch.autograd.Function):
    """Scales the gradient flowing back into the feature encoder (fairseq `feature_grad_mult`)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None
