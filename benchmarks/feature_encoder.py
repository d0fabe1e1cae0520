"""The convolutional feature encoder alone: xlsr's channels-last convolutions against transformers'
Wav2Vec2FeatureEncoder (F.conv1d + transposes around each layer norm), same weights, same run.

Inference (one utterance) and training (forward + backward of a batch) are timed; prints the ratios.

    python benchmarks/feature_encoder.py [--layout layer_norm|group_norm] [--seconds 10] [--batch 4x8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", default="layer_norm", choices=["layer_norm", "group_norm"])
    p.add_argument("--seconds", type=float, default=10.0, help="inference: one utterance of this length")
    p.add_argument("--batch", default="4x8", help="training: BATCHxSECONDS")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from transformers import Wav2Vec2Config
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

    from xlsr.checkpoints.hf import to_hf_config
    from xlsr.config import preset
    from xlsr.models.feature_encoder import FeatureEncoder

    cfg = preset("xlsr-300m" if args.layout == "layer_norm" else "wav2vec2-base")
    torch.manual_seed(0)
    ours = FeatureEncoder(cfg.conv_feature_layers, cfg.extractor_mode, cfg.conv_bias)
    theirs = Wav2Vec2FeatureEncoder(Wav2Vec2Config(**to_hf_config(cfg)))
    theirs.load_state_dict({k.replace(".norm.", ".layer_norm."): v for k, v in ours.state_dict().items()})

    wave = torch.randn(1, int(args.seconds * 16000))
    with torch.inference_mode():
        diff = (ours(wave)[0] - theirs(wave).transpose(1, 2)).abs().max().item()
        t_ours = timed(lambda: ours(wave), args.repeats)
        t_theirs = timed(lambda: theirs(wave), args.repeats)
    print(f"{args.layout}, inference on {args.seconds:g} s (max abs difference {diff:.1e})")
    print(f"  transformers {t_theirs:.3f} s   xlsr {t_ours:.3f} s   ratio {t_ours / t_theirs:.2f}")

    b, s = args.batch.split("x")
    batch = torch.randn(int(b), int(float(s) * 16000))
    ours.train()
    theirs.train()
    theirs._requires_grad = False  # do not ask for the waveform's gradient, which xlsr never computes
    t_ours = timed(lambda: ours(batch)[0].pow(2).mean().backward(), args.repeats)
    t_theirs = timed(lambda: theirs(batch).pow(2).mean().backward(), args.repeats)
    print(f"{args.layout}, forward + backward on {args.batch} s")
    print(f"  transformers {t_theirs:.3f} s   xlsr {t_ours:.3f} s   ratio {t_ours / t_theirs:.2f}")


if __name__ == "__main__":
    main()
