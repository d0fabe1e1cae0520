"""The one place padding masks are built.

Convention, everywhere in xlsr: in a padding mask, True means *padded* (not a real sample or frame).
A span mask for pretraining or SpecAugment likewise uses True for *masked*. Attention takes the
complement (`~padding_mask`, True = may attend) because that is what SDPA's boolean mask means.
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """lengths: (B,) long -> (B, T) bool, True on the padding (positions >= length)."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]
