"""The convolutional adapter between the XLS-R encoder and the translation decoder.

fairseq `Conv1dAdaptor` (xm_transformer, with the optional `w2v_encoder.proj` + `w2v_proj_ln` before it);
transformers `Wav2Vec2Adapter` (`proj`, `proj_layer_norm`, `layers.N.conv`). Each layer halves the frame
rate (stride 2): the published models turn 20 ms encoder frames into 160 ms decoder memory.

Padding: neither reference gives a padded utterance its unpadded output (transformers zeroes no padded
frame, fairseq only before the first and after the last conv). xlsr zeroes the padded frames before every
conv and after the last, so each utterance of a padded batch gets exactly what it gets alone.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .feature_encoder import conv_output_lengths
from .padding import padding_mask


class Adapter(nn.Module):
    """Optional Linear + LayerNorm down-projection, then n x (Conv1d(d, 2d, kernel, stride) + GLU over channels).

    in_dim: encoder width (HF hidden_size). proj_dim: 0 = no projection (the 300M layout, encoder width =
        decoder width), else the width to project to (HF output_hidden_size, the 1B/2B layout; fairseq
        `w2v_encoder.proj` + `w2v_proj_ln`). n_layers / kernel / stride: fairseq adaptor_n_layers /
        adaptor_kernel_size / adaptor_stride; HF num_adapter_layers / adapter_kernel_size / adapter_stride.
    Each conv pads kernel // 2 frames on both sides (fairseq; transformers pads 1, the same for kernel 3), so
    L frames become floor((L + 2 * (kernel // 2) - kernel) / stride) + 1 (= floor((L - 1) / 2) + 1 for 3, 2).

    Weights: `proj.{weight,bias}`, `proj_layer_norm.{weight,bias}` (HF names; fairseq keeps them outside the
    adaptor), `layers.N.{weight,bias}` (fairseq; HF `layers.N.conv.*`).
    """

    def __init__(self, in_dim: int, proj_dim: int, n_layers: int, kernel: int, stride: int):
        super().__init__()
        dim = proj_dim or in_dim
        self.proj = nn.Linear(in_dim, dim) if proj_dim else None
        self.proj_layer_norm = nn.LayerNorm(dim) if proj_dim else None
        self.layers = nn.ModuleList(
            nn.Conv1d(dim, 2 * dim, kernel, stride=stride, padding=kernel // 2) for _ in range(n_layers)
        )
        self.kernel, self.stride, self.padding = kernel, stride, kernel // 2

    def _conv_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths + 2 * self.padding, [(self.kernel, self.stride)])

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) encoder frames -> (B,) adapter frames."""
        for _ in self.layers:
            lengths = self._conv_lengths(lengths)
        return lengths

    @staticmethod
    def _zero_padding(x: Tensor, lengths: Tensor | None) -> Tensor:
        """x: (B, D, T); zeroes frames >= length, so the next conv reads zeros there as it would past the end."""
        if lengths is None:
            return x
        return x.masked_fill(padding_mask(lengths, x.shape[-1])[:, None, :], 0.0)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, D_in) encoder output; lengths: (B,) long valid frames (None: nothing is padded)
        -> (B, T', D) with padded frames exactly 0, and lengths (B,) long (None if given None)."""
        if self.proj is not None:
            x = self.proj_layer_norm(self.proj(x))
        x = x.transpose(1, 2)  # (B, D, T): Conv1d's layout
        for conv in self.layers:
            x = F.glu(conv(self._zero_padding(x, lengths)), dim=1)  # (B, 2D, T') -> (B, D, T')
            lengths = None if lengths is None else self._conv_lengths(lengths)
        return self._zero_padding(x, lengths).transpose(1, 2), lengths
