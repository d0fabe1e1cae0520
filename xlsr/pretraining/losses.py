"""The wav2vec 2.0 / XLS-R objective: contrastive loss + codebook diversity loss + feature penalty.

For each masked frame t, the context vector c_t (final_proj of the Transformer output) must pick its
quantized target q_t among q_t and K distractors by cosine similarity / temperature (logit_temp, 0.1).

Reductions and scaling, which differ between the references:
- fairseq (Wav2vecCriterion): loss = sum_t CE_t + w_div * L_div * N + w_pen * features_pen * N, where N is
  the number of masked frames (sample_size); gradients are then divided by N summed over the whole update
  (all micro-batches and all GPUs). L_div = (G*V - prob_perplexity) / (G*V) from the softmax averaged over
  the masked frames.
- transformers (Wav2Vec2ForPreTraining): loss = sum_t CE_t + w_div * L_div * N, not divided by N (its
  example script divides by N itself), no feature penalty; in eval mode its perplexity comes from the
  argmax codes rather than the softmax.
xlsr returns the parts separately (`contrastive` is the sum over frames, `diversity` the unscaled
L_div) and the trainer combines and normalises them as fairseq does. In eval mode `diversity` uses the
argmax perplexity, so that it equals transformers' (fairseq would use the softmax one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Wav2Vec2Model
from ..models.heads import PretrainingHead


@dataclass
class PretrainingOutput:
    contrastive: Tensor  # () summed over the masked frames
    diversity: Tensor  # () (G*V - perplexity) / (G*V); 0 without a quantizer
    features_pen: Tensor  # () mean square of the conv features (fairseq features_pen)
    correct: int  # masked frames whose target scored highest
    count: int  # masked frames (fairseq sample_size)
    prob_perplexity: float
    code_perplexity: float

    def loss(self, loss_weights: tuple[float, float]) -> Tensor:
        """fairseq's sum: contrastive + N * (w_div * diversity + w_pen * features_pen); divide by N yourself."""
        w_div, w_pen = loss_weights
        return self.contrastive + self.count * (w_div * self.diversity + w_pen * self.features_pen)


def contrastive_loss(
    context: Tensor,
    targets: Tensor,
    negatives: Tensor,
    utterance: Tensor,
    position: Tensor,
    same_as_target: Tensor,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """InfoNCE over cosine similarities (fairseq `compute_preds` + cross entropy with reduction sum).

    context, targets: (N, F) for the N masked frames; negatives: (N, K) positions of the distractors within
    the frame's utterance; utterance, position: (N,) which utterance each frame is in, and where among its
    masked frames; same_as_target: (N, K) bool, distractors identical to the target (their logit is -inf,
    as in both references). Returns the summed loss () and logits (N, 1 + K).

    Similarities are computed once per pair of masked frames of an utterance, (B, n, n) by one batched
    matmul, and the K distractors are read from it: no (N, K, F) tensor of gathered targets.
    """
    c = F.normalize(context.float(), dim=-1, eps=1e-8)
    t = F.normalize(targets.float(), dim=-1, eps=1e-8)
    B, n = int(utterance.max()) + 1, int(position.max()) + 1
    c_pad = c.new_zeros(B, n, c.shape[-1]).index_put((utterance, position), c)
    t_pad = t.new_zeros(B, n, t.shape[-1]).index_put((utterance, position), t)
    sims = torch.bmm(c_pad, t_pad.transpose(1, 2))  # (B, n, n): context i of utterance b vs target j
    positive = (c * t).sum(-1, keepdim=True)  # (N, 1)
    negative = sims[utterance[:, None], position[:, None], negatives]  # (N, K)
    negative = negative.masked_fill(same_as_target, float("-inf"))
    logits = torch.cat([positive, negative], dim=1) / temperature
    loss = F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long), reduction="sum")
    return loss, logits


def diversity_loss(perplexity: Tensor, num_vars: int) -> Tensor:
    """(G*V - perplexity) / (G*V): 0 when every codebook entry is used equally, ~1 when one is used."""
    return (num_vars - perplexity) / num_vars


def count_correct(logits: Tensor) -> int:
    """fairseq's accuracy: the target scores highest, and not all logits are equal."""
    best, worst = logits.argmax(-1) == 0, logits.argmin(-1) == 0
    return int((best & ~worst).sum())


def pretraining_forward(
    model: Wav2Vec2Model,
    waveforms: Tensor,
    lengths: Tensor | None,
    mask: Tensor,
    negatives: Tensor,
    feature_grad_mult: float = 1.0,
    generator: torch.Generator | None = None,
) -> PretrainingOutput:
    """waveforms: (B, S) normalised; lengths: (B,) or None; mask: (B, T) bool, True = masked (never
    padding); negatives: (N, K) from `sample_negatives(mask, K)`. `generator` draws the Gumbel noise."""
    head = model.head
    if not isinstance(head, PretrainingHead):
        raise ValueError("pretraining needs a model with a pretraining head")
    mask = mask.to(waveforms.device)
    out = model.encode(waveforms, lengths, time_mask=mask, feature_grad_mult=feature_grad_mult)
    utterance, frame = mask.nonzero(as_tuple=True)  # (N,) each
    counts = mask.sum(1)
    position = torch.arange(len(utterance), device=mask.device) - (torch.cumsum(counts, 0) - counts)[utterance]
    context = head.final_proj(out.x[utterance, frame])  # (N, F)
    latent = F.dropout(out.features, model.cfg.dropout_features, model.training)[utterance, frame]  # (N, C)
    negatives = negatives.to(waveforms.device)
    flat = negatives + (torch.cumsum(counts, 0) - counts)[utterance][:, None]  # (N, K) index among all N
    cfg = model.cfg
    if head.quantizer is not None:
        q = head.quantizer(latent, generator=generator)
        targets = head.project_q(q.quantized.to(latent.dtype))
        same = (q.codes[flat] == q.codes[:, None]).all(-1)  # identical code choice = identical target
        ppl = q.prob_perplexity if model.training else q.code_perplexity
        diversity = diversity_loss(ppl, cfg.latent_vars * cfg.latent_groups)
        prob_ppl, code_ppl = float(q.prob_perplexity.detach()), float(q.code_perplexity.detach())
    else:  # fairseq quantize_targets=False: the projected latent features are the targets
        targets = head.project_q(latent)
        same = (targets[flat] == targets[:, None]).all(-1)
        diversity, prob_ppl, code_ppl = targets.new_zeros(()), 0.0, 0.0
    loss, logits = contrastive_loss(context, targets, negatives, utterance, position, same, cfg.logit_temp)
    return PretrainingOutput(
        loss, diversity, out.features_pen, count_correct(logits.detach()), len(utterance), prob_ppl, code_ppl
    )
