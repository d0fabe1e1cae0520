"""Pretraining throughput: xlsr against transformers' Wav2Vec2ForPreTraining, same weights, batch, mask and
negatives, in the same run. One step = forward + backward + AdamW step. Prints audio seconds per second and
the xlsr/transformers ratio (target: >= 2.0), after checking that both compute the same losses.

Model: the issue's 6-layer, 384-dim XLS-R layout (standard 512-channel feature encoder, 2 x 320 codebook,
100 negatives); batch: 4 x 8 s. Dropout is off in both, so the only randomness left is the Gumbel noise.

    python benchmarks/pretrain.py                         # 1 warm-up + 3 timed steps each
    python benchmarks/pretrain.py --steps 5 --device cuda --layout group_norm
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xlsr.audio import normalize  # noqa: E402
from xlsr.checkpoints import load_model  # noqa: E402
from xlsr.pretraining.losses import pretraining_forward  # noqa: E402
from xlsr.pretraining.negatives import sample_negatives  # noqa: E402
from xlsr.training.masking import compute_mask  # noqa: E402


def hf_config(layout: str):
    from transformers import Wav2Vec2Config

    stable = layout == "layer_norm"
    return Wav2Vec2Config(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
        feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable, conv_bias=stable,
        num_codevectors_per_group=320, num_codevector_groups=2, codevector_dim=256, proj_codevector_dim=256,
        num_negatives=100, diversity_loss_weight=0.1, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, feat_quantizer_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.65, mask_time_length=10,
    )  # fmt: skip


def hf_negatives(mask: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """xlsr's (N, K) positions among an utterance's masked frames -> transformers' (B, T, K) flat indices."""
    B, T = mask.shape
    out = torch.zeros(B, T, negatives.shape[1], dtype=torch.long)
    utterance, frame = mask.nonzero(as_tuple=True)
    for b in range(B):
        positions = mask[b].nonzero()[:, 0]
        rows = (utterance == b).nonzero()[:, 0]
        out[b, frame[rows]] = b * T + positions[negatives[rows]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--layout", default="layer_norm", choices=["layer_norm", "group_norm"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import Wav2Vec2ForPreTraining

    device = torch.device(args.device)
    torch.manual_seed(0)
    hf = Wav2Vec2ForPreTraining(hf_config(args.layout))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = load_model(tmp)
    hf, ours = hf.to(device), ours.to(device)
    rng = np.random.default_rng(0)
    S = int(args.seconds * 16000)
    wave = normalize(torch.from_numpy(rng.standard_normal((args.batch, S)).astype(np.float32) * 0.1)).to(device)
    frames = ours.frame_lengths(torch.full((args.batch,), S))
    mask = compute_mask(frames, int(frames.max()), 0.65, 10, 2, torch.Generator().manual_seed(1))
    negatives = sample_negatives(mask, 100, torch.Generator().manual_seed(2))
    hf_neg = hf_negatives(mask, negatives).to(device)
    mask_dev = mask.to(device)

    def xlsr_step(model, optimizer):
        out = pretraining_forward(model, wave, None, mask_dev, negatives)
        loss = out.loss((0.1, 0.0))
        return loss, out

    def hf_step(model, optimizer):
        out = model(wave, mask_time_indices=mask_dev, sampled_negative_indices=hf_neg)
        return out.loss, out

    # same losses in eval mode (no Gumbel noise): xlsr's summed contrastive loss vs transformers'
    with torch.no_grad():
        ours.eval(), hf.eval()
        a, b = xlsr_step(ours, None)[1], hf_step(hf, None)[1]
        print(f"contrastive loss: xlsr {float(a.contrastive):.4f}  transformers {float(b.contrastive_loss):.4f}")
        print(f"diversity loss:   xlsr {float(a.diversity * a.count):.4f}  transformers {float(b.diversity_loss):.4f}")
        assert abs(float(a.contrastive) - float(b.contrastive_loss)) < 1e-3 * abs(float(b.contrastive_loss))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = {}
    for name, model, step in (("transformers", hf, hf_step), ("xlsr", ours, xlsr_step)):
        model.train()
        optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
        times = []
        for i in range(args.steps + 1):
            sync()
            t = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, _ = step(model, optimizer)
            loss.backward()
            optimizer.step()
            sync()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t)
        results[name] = statistics.median(times)
        audio = args.batch * args.seconds
        print(f"{name:<13} {results[name]:.2f} s/step  {audio / results[name]:.1f} audio s/s  (steps: "
              f"{', '.join(f'{x:.2f}' for x in times)})")  # fmt: skip
    print(f"throughput ratio xlsr / transformers: {results['transformers'] / results['xlsr']:.2f}x (target >= 2.0)")


if __name__ == "__main__":
    main()
