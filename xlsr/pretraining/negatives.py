"""Distractors for the contrastive loss: for each masked frame, K other masked frames of the same
utterance (fairseq `sample_negatives` with negatives_from_everywhere=False; transformers
`_sample_negative_indices`). Never the frame itself; never padding (padding is never masked)."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_negatives(mask: Tensor, num_negatives: int, generator: torch.Generator | None = None) -> Tensor:
    """mask: (B, T) bool -> (N, K) long: for each of the N masked frames (in `mask.nonzero()` order), the
    positions of its K distractors among the masked frames of its own utterance (0 = that utterance's
    first masked frame). Drawn uniformly, with replacement, from the n_b - 1 other masked frames."""
    counts = mask.sum(1)  # (B,)
    if bool((counts < 2).any()):
        raise ValueError("every utterance needs at least 2 masked frames to draw negatives from")
    n = counts.repeat_interleave(counts)  # (N,) masked frames in each frame's utterance
    starts = torch.cumsum(counts, 0) - counts
    own = torch.arange(int(counts.sum())) - starts.repeat_interleave(counts)  # (N,) position within utterance
    u = torch.rand(len(n), num_negatives, generator=generator)
    neg = (u * (n - 1)[:, None]).long()  # uniform in [0, n - 2]
    return neg + (neg >= own[:, None]).long()  # skip the frame itself
