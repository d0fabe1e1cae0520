"""The pretraining objective: span masking, negatives, and the losses against transformers 5.23's
Wav2Vec2ForPreTraining given the same mask, negatives and weights (eval mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import hf_config, randomize, speechlike

from xlsr.audio import normalize, pad_batch
from xlsr.checkpoints import load_model
from xlsr.models.padding import padding_mask
from xlsr.pretraining.losses import pretraining_forward
from xlsr.pretraining.negatives import sample_negatives
from xlsr.training.masking import compute_mask


def test_masks_cover_about_half_of_the_frames_in_spans_and_never_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([400, 250, 60, 25])
    mask = compute_mask(lengths, 400, mask_prob=0.65, mask_length=10, min_masks=2, generator=g)
    assert not mask[padding_mask(lengths, 400)].any()
    share = mask[0].float().mean().item()
    assert 0.40 < share < 0.58  # spans overlap: E[share] = 1 - (1 - 10/390)^26 ~ 0.49
    assert (mask.sum(1) >= 2).all()
    # spans are runs of mask_length (possibly merged)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], mask[0].int().numpy(), [0]]))))[::2]
    assert all(r >= 10 for r in runs)
    again = compute_mask(lengths, 400, 0.65, 10, 2, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    shares = [
        compute_mask(torch.tensor([500]), 500, 0.65, 10, 2, torch.Generator().manual_seed(s)).float().mean()
        for s in range(50)
    ]
    assert abs(float(torch.stack(shares).mean()) - (1 - (1 - 10 / 490) ** 32.5)) < 0.02


def test_negatives_come_from_other_masked_frames_of_the_same_utterance():
    mask = torch.zeros(3, 50, dtype=torch.bool)
    mask[0, 5:25] = True
    mask[1, [3, 40]] = True
    mask[2, 10:13] = True
    neg = sample_negatives(mask, 100, torch.Generator().manual_seed(0))
    counts = mask.sum(1).tolist()
    assert neg.shape == (sum(counts), 100)
    own = torch.cat([torch.arange(c) for c in counts])
    limit = torch.tensor([c for c in counts for _ in range(c)])
    assert (neg != own[:, None]).all() and (neg >= 0).all() and (neg < limit[:, None]).all()
    assert (neg[20] == 1).all() and (neg[21] == 0).all()  # 2 masked frames: each one's only distractor is the other
    first = torch.bincount(neg[0], minlength=20)[1:]  # uniform over the 19 others
    assert first.min() > 0
    with pytest.raises(ValueError, match="at least 2 masked frames"):
        sample_negatives(torch.tensor([[True, False, False]]), 5)


def to_hf_negatives(mask: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """xlsr's (N, K) positions among an utterance's masked frames -> transformers' (B, T, K) flat indices."""
    B, T = mask.shape
    out = torch.zeros(B, T, negatives.shape[1], dtype=torch.long)
    utterance, frame = mask.nonzero(as_tuple=True)
    for i, (b, t) in enumerate(zip(utterance.tolist(), frame.tolist())):
        positions = mask[b].nonzero()[:, 0]
        out[b, t] = b * T + positions[negatives[i]]
    return out


@pytest.mark.parametrize("layout", ["layer_norm", "group_norm"])
def test_losses_equal_transformers_given_the_same_mask_and_negatives(layout, tmp_path):
    from transformers import Wav2Vec2ForPreTraining

    torch.manual_seed(0)
    hf = randomize(Wav2Vec2ForPreTraining(hf_config(layout)), scale=0.3).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    wave, lengths = pad_batch([speechlike(2.0, seed=1), speechlike(1.4, seed=2)])
    wave = normalize(wave, lengths)
    frames = ours.frame_lengths(lengths)
    mask = compute_mask(frames, int(frames.max()), 0.65, 10, 2, torch.Generator().manual_seed(1))
    negatives = sample_negatives(mask, 20, torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = pretraining_forward(ours, wave, lengths, mask, negatives)
        ref = hf(
            wave,
            attention_mask=(~padding_mask(lengths, wave.shape[1])).long(),
            mask_time_indices=mask,
            sampled_negative_indices=to_hf_negatives(mask, negatives),
        )
    torch.testing.assert_close(out.contrastive, ref.contrastive_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.diversity * out.count, ref.diversity_loss, rtol=1e-5, atol=1e-5)
    assert out.code_perplexity == pytest.approx(float(ref.codevector_perplexity), rel=1e-5)
    assert out.count == int(mask.sum()) and 0 <= out.correct <= out.count
    # the identical-target rule is exercised: a 12-entry codebook repeats codes across frames
    assert torch.isfinite(out.contrastive)


def test_training_mode_backpropagates_and_draws_gumbel_noise_from_the_generator(tmp_path):
    from xlsr.config import preset
    from xlsr.models import Wav2Vec2Model

    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny", dropout=0.0, attention_dropout=0.0, dropout_input=0.0, dropout_features=0.0))
    model.train()
    wave = normalize(torch.from_numpy(speechlike(1.5))[None])
    frames = model.frame_lengths(torch.tensor([wave.shape[1]]))
    mask = compute_mask(frames, int(frames[0]), 0.65, 10, 2, torch.Generator().manual_seed(0))
    neg = sample_negatives(mask, 10, torch.Generator().manual_seed(0))
    a = pretraining_forward(model, wave, None, mask, neg, generator=torch.Generator().manual_seed(5))
    b = pretraining_forward(model, wave, None, mask, neg, generator=torch.Generator().manual_seed(5))
    c = pretraining_forward(model, wave, None, mask, neg, generator=torch.Generator().manual_seed(6))
    assert a.contrastive.item() == b.contrastive.item() != c.contrastive.item()
    (a.loss((0.1, 10.0)) / a.count).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in (
        "head.quantizer.codevectors",
        "head.quantizer.weight_proj.weight",
        "head.final_proj.weight",
        "feature_encoder.conv_layers.0.conv.weight",
        "mask_emb",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
