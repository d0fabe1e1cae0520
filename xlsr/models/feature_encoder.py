"""The convolutional feature encoder: raw 16 kHz waveform -> one latent vector per 20 ms.

fairseq `ConvFeatureExtractionModel`; transformers `Wav2Vec2FeatureEncoder`; torchaudio `FeatureExtractor`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

IM2COL_CHUNK = 1024  # output frames per GEMM in inference: big enough for a fast GEMM, small enough for the cache


def strided_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, epilogue: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """A 1-D convolution (no padding) computed channels-last: x (B, T, C_in) -> (B, T', C_out).

    `weight` keeps nn.Conv1d's (C_out, C_in, K) layout. Channels-last lets a layer norm over channels run
    on contiguous memory with no transposed copies: for the XLS-R encoder on CPU this takes 0.66x the time of
    `F.conv1d` plus transposes in inference and 0.86x forward + backward (benchmarks/feature_encoder.py).
    When x needs no gradient, one GEMM runs over an im2col view; when it does, one strided GEMM per kernel
    tap, since the backward of overlapping im2col windows is slow.

    `epilogue` (norm, activation) is applied to the output; without gradients it runs chunk by chunk in
    place, while the chunk is in cache, so no second copy of the (largest) output is ever made.
    """
    B, T, C = x.shape
    k = weight.shape[-1]
    T_out = (T - k) // stride + 1
    if T_out < 1:
        raise ValueError(f"input of {T} steps is shorter than the kernel ({k})")
    if x.requires_grad:
        end = (T_out - 1) * stride + 1
        y = x[:, 0:end:stride] @ weight[:, :, 0].t()
        for j in range(1, k):
            y = y + x[:, j : j + end : stride] @ weight[:, :, j].t()
        y = y if bias is None else y + bias
        return y if epilogue is None else epilogue(y)
    # im2col in time chunks written straight into the output: the (T', K * C) copy never exists whole.
    # A window of K frames is K * C consecutive numbers of a contiguous (B, T, C) tensor.
    x = x.contiguous()
    cols = x.as_strided((B, T_out, k * C), (x.stride(0), stride * x.stride(1), x.stride(2)))
    w = weight.permute(2, 1, 0).reshape(k * C, -1)  # (K * C_in, C_out), rows in the order of a window
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        y = cols @ w  # training the first layer: the weights need a gradient, the waveform does not
        y = y if bias is None else y + bias
        return y if epilogue is None else epilogue(y)
    y = x.new_empty(B, T_out, w.shape[1])
    b = torch.zeros(w.shape[1], dtype=x.dtype, device=x.device) if bias is None else bias
    for i in range(B):
        for t in range(0, T_out, IM2COL_CHUNK):
            chunk = y[i, t : t + IM2COL_CHUNK]
            torch.addmm(b, cols[i, t : t + IM2COL_CHUNK], w, out=chunk)
            if epilogue is not None:
                chunk.copy_(epilogue(chunk))
    return y


class ConvLayer(nn.Module):
    """conv -> (layer norm over channels | group norm per channel | nothing) -> GELU.

    The "layer_norm" mode (XLS-R) normalises every frame over its channels, so a frame never sees
    its neighbours' statistics: padding cannot leak into valid frames. The "group_norm" mode
    (wav2vec2-base, only in the first layer) normalises each channel over the whole time axis.
    Weights are stored as nn.Conv1d / nn.LayerNorm / nn.GroupNorm store them (fairseq, transformers).
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

    @property
    def channels_last(self) -> bool:
        """A layer with a layer norm works on (B, T, C), the others on (B, C, T): whichever needs no
        transposed copy (F.conv1d is the faster convolution when nothing has to be transposed)."""
        return isinstance(self.norm, nn.LayerNorm)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C_in) -> (B, T', C_out) if `channels_last`, else (B, C_in, T) -> (B, C_out, T')."""
        if self.channels_last:
            return strided_conv(x, self.conv.weight, self.conv.bias, self.stride, lambda y: F.gelu(self.norm(y)))
        x = self.conv(x)
        if self.norm is not None:  # GroupNorm(C, C), in float32 as fairseq's Fp32GroupNorm
            x = F.group_norm(x.float(), x.shape[1], self.norm.weight, self.norm.bias, self.norm.eps).to(x.dtype)
        if not x.requires_grad:  # nothing needs the pre-activation: save a copy
            return torch.ops.aten.gelu_(x)
        return F.gelu(x)


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
        if waveforms.shape[0] > 1 and not torch.is_grad_enabled():
            # Inference: one utterance at a time (the convolutions never mix them), so the first layers'
            # large outputs (512 channels at 3.2 kHz) exist for one utterance, not the batch.
            features = torch.cat([self(w[None])[0] for w in waveforms])
            return features, None if lengths is None else self.output_lengths(lengths)
        channels_last = self.conv_layers[0].channels_last
        x = waveforms[:, :, None] if channels_last else waveforms[:, None]  # (B, S, 1) or (B, 1, S)
        for layer in self.conv_layers:
            if layer.channels_last != channels_last:
                x, channels_last = x.transpose(1, 2), layer.channels_last
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        x = x if channels_last else x.transpose(1, 2)  # (B, T, C)
        return x, None if lengths is None else self.output_lengths(lengths)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames produced from `lengths` samples: (B,) -> (B,)."""
        return conv_output_lengths(lengths, [(layer.kernel, layer.stride) for layer in self.conv_layers])


def conv_output_lengths(lengths: Tensor, kernels_strides: list[tuple[int, int]]) -> Tensor:
    """Each unpadded conv maps L samples to floor((L - kernel) / stride) + 1: (B,) -> (B,)."""
    for kernel, stride in kernels_strides:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
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
