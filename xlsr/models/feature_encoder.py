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
NARROW_INPUT = 64  # training: stride * C_in below this (the waveform layer) takes the im2col path
WEIGHT_GRAD_CHUNK = 1024  # rows per product in the im2col path's weight gradient


def _window_matrix(weight: Tensor) -> Tensor:
    """nn.Conv1d's (C_out, C_in, K) weight -> (K * C_in, C_out), rows in the order of a channels-last window."""
    return weight.permute(2, 1, 0).reshape(-1, weight.shape[0])


def _conv_weight(matrix: Tensor, shape: torch.Size) -> Tensor:
    """The inverse of `_window_matrix`: (K * C_in, C_out) -> a (C_out, C_in, K) view."""
    C_out, C_in, k = shape
    return matrix.view(k, C_in, C_out).permute(2, 1, 0)


def _tap_groups(x: Tensor, weight: Tensor, stride: int, T_out: int):
    """Splits a channels-last convolution into GEMMs that read the input in place.

    Output frame t reads input frames stride * t ... stride * t + K - 1. Taps stride * g ... stride * g +
    stride - 1 (group g) read stride consecutive frames, i.e. stride * C consecutive numbers of a contiguous
    (T, C) tensor, starting stride * C numbers further for each next output frame: a (T', stride * C) matrix
    whose row stride is its width, which BLAS reads where it lies. ceil(K / stride) GEMMs of stride * C
    inputs each do exactly the convolution's arithmetic, with no im2col copy in the forward and no
    overlapping scatter in the backward (the windows of one group never overlap).

    Yields (group index, its (stride * C, C_out) weight, a function utterance b -> its (T', stride * C) view
    of a (B, T, C) tensor shaped like x).
    """
    B, T, C = x.shape
    k = weight.shape[-1]
    taps = _window_matrix(weight)  # (K * C_in, C_out)
    for g, j in enumerate(range(0, k, stride)):
        width = min(stride, k - j) * C
        w = taps[j * C : j * C + width]

        def view(t: Tensor, b: int, j: int = j, width: int = width) -> Tensor:
            return t.as_strided((T_out, width), (stride * C, 1), t.storage_offset() + b * t.stride(0) + j * C)

        yield g, w, view


class _ChannelsLastConv(torch.autograd.Function):
    """x (B, T, C_in) contiguous -> (B, T', C_out), by `_tap_groups`: the training path of `strided_conv`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
        B, T, C = x.shape
        T_out = (T - weight.shape[-1]) // stride + 1
        y = x.new_empty(B, T_out, weight.shape[0])
        for g, w, view in _tap_groups(x, weight, stride, T_out):
            for b in range(B):
                if g > 0:
                    y[b].addmm_(view(x, b), w)
                elif bias is not None:
                    torch.addmm(bias, view(x, b), w, out=y[b])
                else:
                    torch.mm(view(x, b), w, out=y[b])
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, k = ctx.stride, weight.shape[-1]
        grad = grad.contiguous()
        B, T_out, _ = grad.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0] and k < stride:
            grad_x = torch.zeros_like(x)  # frames between the windows get no gradient
        elif ctx.needs_input_grad[0]:
            # group 0 covers frames 0 ... stride * T' - 1 once each: written, not added; the rest is zeroed
            grad_x = torch.empty_like(x)
            grad_x[:, stride * T_out :].zero_()
        parts = []
        for g, w, view in _tap_groups(x, weight, stride, T_out):
            if ctx.needs_input_grad[1]:
                part = w.new_zeros(w.shape)
                for b in range(B):
                    part.addmm_(view(x, b).t(), grad[b])
                parts.append(part)
            if grad_x is not None:
                for b in range(B):
                    out = view(grad_x, b)
                    if g == 0 and k >= stride:
                        torch.mm(grad[b], w.t(), out=out)
                    else:
                        out.addmm_(grad[b], w.t())
        if parts:
            grad_w = _conv_weight(torch.cat(parts), weight.shape)
        grad_b = grad.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class _Im2colConv(torch.autograd.Function):
    """A narrow input that needs no gradient (the waveform) -> (B, T', C_out): one GEMM over an im2col
    copy of K * C_in numbers per output frame (small when C_in is), whose weight gradient sums chunk
    products: MKL takes ~15x longer for the one (K * C_in, B * T') x (B * T', C_out) product."""

    @staticmethod
    def forward(ctx, cols: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        B, T_out, width = cols.shape
        cols = cols.reshape(B * T_out, width)
        w = _window_matrix(weight)
        y = cols @ w if bias is None else torch.addmm(bias, cols, w)
        ctx.save_for_backward(cols)
        ctx.weight_shape, ctx.has_bias = weight.shape, bias is not None
        return y.view(B, T_out, -1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (cols,) = ctx.saved_tensors
        grad = grad.reshape(cols.shape[0], -1)
        n = cols.shape[0] // WEIGHT_GRAD_CHUNK * WEIGHT_GRAD_CHUNK
        chunks = cols[:n].view(-1, WEIGHT_GRAD_CHUNK, cols.shape[1]).transpose(1, 2)
        grad_w = torch.bmm(chunks, grad[:n].view(-1, WEIGHT_GRAD_CHUNK, grad.shape[1])).sum(0)
        grad_w = grad_w.addmm_(cols[n:].t(), grad[n:])
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return None, _conv_weight(grad_w, ctx.weight_shape), grad_b


def strided_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, epilogue: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """A 1-D convolution (no padding) computed channels-last: x (B, T, C_in) -> (B, T', C_out).

    `weight` keeps nn.Conv1d's (C_out, C_in, K) layout. Channels-last lets a layer norm over channels run
    on contiguous memory with no transposed copies, and lets the convolution run as GEMMs straight over
    the input (`_tap_groups`): for the XLS-R encoder on CPU this takes about 0.6x the time of `F.conv1d`
    plus transposes (benchmarks/feature_encoder.py), in inference and in training.
    Layers with few input channels that need no input gradient (the first, on the waveform) use an im2col
    copy instead: it is small, and one GEMM over K * C inputs beats ceil(K / stride) narrow ones.

    `epilogue` (norm, activation) is applied to the output; without gradients it runs chunk by chunk in
    place, while the chunk is in cache, so no second copy of the (largest) output is ever made.
    """
    B, T, C = x.shape
    k = weight.shape[-1]
    T_out = (T - k) // stride + 1
    if T_out < 1:
        raise ValueError(f"input of {T} steps is shorter than the kernel ({k})")
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    device = x.device.type
    if torch.is_autocast_enabled(device):  # as autocast treats F.conv1d; the casts are differentiable
        dtype = torch.get_autocast_dtype(device)
        x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    x = x.contiguous()
    # im2col: a window of K frames is K * C consecutive numbers of a contiguous (B, T, C) tensor.
    cols = x.as_strided((B, T_out, k * C), (x.stride(0), stride * x.stride(1), x.stride(2)))
    if needs_grad:
        with torch.autocast(device, enabled=False):
            if x.requires_grad or stride * C >= NARROW_INPUT:
                y = _ChannelsLastConv.apply(x, weight, bias, stride)
            else:
                y = _Im2colConv.apply(cols, weight, bias)
        return y if epilogue is None else epilogue(y)
    w = _window_matrix(weight)
    # Inference: im2col in time chunks written straight into the output, so the (T', K * C) copy never
    # exists whole.
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
