"""Span masking, shared by pretraining (the masked frames the contrastive loss predicts) and fine-tuning
(SpecAugment-style time and channel masks), and the per-batch random generator both draw masks from.

It lives in `training/` because it is what the training tasks have in common: `pretraining/` and
`finetuning/` both build on `training/`, and fine-tuning must not depend on pretraining; `data/` stays
unaware of frames and models.

`compute_mask` is fairseq's `compute_mask_indices` with mask_selection="static". Per utterance of T valid
frames: int(mask_prob * T / mask_length + u) spans (u uniform in [0, 1): a probabilistic rounding), at
least `min_masks`, each `mask_length` frames long, starting at distinct positions drawn uniformly from
[0, T - mask_length); spans may overlap, so the masked share is below mask_prob (about 49% of frames for
0.65 and 10). Padding is never masked. True means masked, as True means padded in every padding mask.

Differences from fairseq, on purpose: no `require_same_masks` trimming (fairseq makes every utterance
of a batch mask the same number of frames because its loss needs a rectangular tensor; ours does not),
and a torch.Generator instead of NumPy's global state, so a resumed run draws the same masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def compute_mask(
    lengths: Tensor,
    max_len: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """lengths: (B,) valid frames -> (B, T) bool, True = masked."""
    B = len(lengths)
    mask = torch.zeros(B, max_len, dtype=torch.bool)
    if mask_prob <= 0:
        return mask
    for b, n in enumerate(lengths.tolist()):
        u = torch.rand((), generator=generator).item()
        num = max(min_masks, int(mask_prob * n / mask_length + u))
        span = mask_length
        if n - span <= num:  # short utterance: fairseq shortens the spans
            span = max(1, n - num - 1)
        positions = max(n - span, 1)
        num = min(num, positions)
        starts = torch.randperm(positions, generator=generator)[:num]
        idx = (starts[:, None] + torch.arange(span)[None, :]).flatten()
        mask[b, idx[idx < n]] = True
    return mask


def batch_generator(seed: int, epoch: int, indices: list[int]) -> torch.Generator:
    """Randomness for one batch (masks, negatives, noise), fixed by (seed, epoch, utterances): a resumed run
    draws the same."""
    key = [seed, epoch, *sorted(indices)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
