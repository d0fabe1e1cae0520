"""Gumbel-softmax product quantizer (fairseq `GumbelVectorQuantizer`; transformers `Wav2Vec2GumbelVectorQuantizer`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (N, G * d) concatenated codebook entries
    codes: Tensor  # (N, G) long, the entry used per group (a Gumbel sample in training)
    prob_perplexity: Tensor  # () perplexity of the batch-average softmax, summed over groups
    code_perplexity: Tensor  # () perplexity of the batch-average argmax choices, summed over groups


def perplexity(probs: Tensor) -> Tensor:
    """probs: (N, G, V) -> () sum over groups of exp(entropy of the average distribution over N).

    fairseq adds 1e-7 inside the log; transformers uses xlogy (exactly 0 * log 0 = 0). We follow
    transformers: the two differ by less than 1e-5 for any realistic codebook usage.
    """
    avg = probs.float().mean(dim=0)  # (G, V)
    return torch.exp(-torch.xlogy(avg, avg).sum(-1)).sum()


class GumbelVectorQuantizer(nn.Module):
    """G groups of V entries; each frame picks one entry per group and the picks are concatenated.

    Args:
        dim: input size (the feature encoder's channels; fairseq `embed`).
        num_vars: V, entries per group (fairseq `latent_vars`; transformers `num_codevectors_per_group`).
        groups: G (fairseq `latent_groups`; transformers `num_codevector_groups`).
        vq_dim: output size G * d (fairseq `latent_dim` or `final_dim`; transformers `codevector_dim`).

    Training samples a hard one-hot with the Gumbel-softmax straight-through estimator at
    `self.temperature` (the trainer decays it; fairseq `latent_temp`); evaluation takes the argmax.
    """

    def __init__(self, dim: int, num_vars: int, groups: int, vq_dim: int):
        super().__init__()
        self.num_vars, self.groups = num_vars, groups
        self.weight_proj = nn.Linear(dim, groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        # fairseq `vars`, transformers `codevectors`: (1, G * V, d)
        self.codevectors = nn.Parameter(torch.rand(1, groups * num_vars, vq_dim // groups))
        self.temperature = 2.0

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """x: (N, dim) frames to quantize (only the frames that need targets) -> QuantizerOutput.
        `generator` draws the Gumbel noise in training (None: the global generator)."""
        N = x.shape[0]
        logits = self.weight_proj(x).view(N, self.groups, self.num_vars).float()  # (N, G, V)
        argmax = F.one_hot(logits.argmax(-1), self.num_vars).to(logits.dtype)
        onehot = self._gumbel_onehot(logits, generator) if self.training else argmax
        prob_ppl = perplexity(logits.softmax(-1))
        code_ppl = perplexity(argmax)
        codebook = self.codevectors.view(self.groups, self.num_vars, -1)  # (G, V, d)
        # (G, N, V) @ (G, V, d) -> (G, N, d): a batched matmul instead of materialising (N, G*V, d)
        quantized = torch.bmm(onehot.to(codebook.dtype).transpose(0, 1), codebook)
        codes = onehot.argmax(-1)
        return QuantizerOutput(quantized.transpose(0, 1).reshape(N, -1), codes, prob_ppl, code_ppl)

    def _gumbel_onehot(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """F.gumbel_softmax(logits, tau, hard=True), with the noise drawn from `generator`: a hard one-hot
        forward, the soft sample's gradient backward (straight-through)."""
        gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
        soft = ((logits + gumbels) / self.temperature).softmax(-1)
        hard = F.one_hot(soft.argmax(-1), self.num_vars).to(soft.dtype)
        return hard - soft.detach() + soft
