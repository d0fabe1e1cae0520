"""The frozen feature encoder's output, computed once per utterance and kept for the rest of a fine-tuning run.

When no gradient reaches the feature encoder (CTC fine-tuning's default `freeze_feature_encoder`, or a translation
encoder kept frozen: `finetune_w2v_params` empty) and every epoch gives an utterance's whole audio (CTC and
translation fine-tuning: no crop, no change to the waveform), the convolutions compute the same features for it
every epoch. They are about half of a frozen encoder's forward time on a CPU, so they are computed once and kept.

The result is the same bit for bit: each utterance's valid frames depend on its own samples only (the same whether
it is computed alone or in any padded batch: tests/test_feature_cache.py checks both paths of the feature encoder),
and what stands in the padded frames is zeroed before anything reads it (`TransformerEncoder` zeroes padded frames
before the positional conv; attention and the adapter never read them). The cache holds the valid frames only, in
the dtype they were computed in, on the CPU, up to `feature_cache_gb` (0 turns it off); past that, the utterances
not cached are computed every time, as without a cache.

Classification fine-tuning takes a new random crop every epoch, so its training batches carry no `keys` and
never use the cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models import Wav2Vec2Model
from ..training.logging import log

Key = tuple[str, int]  # (split, index in that split's dataset)


def whole_utterances(items: list[dict]) -> list[Key]:
    """The keys of a batch of dataset items that hold their utterances' whole audio (a batch's `keys`)."""
    return [("train" if it["training"] else "valid", it["index"]) for it in items]


def check_cache_size(max_gb: float) -> None:
    """A config's `feature_cache_gb`: 0 (off) or more."""
    if not max_gb >= 0:  # NaN too
        raise ConfigError(f"feature_cache_gb must be 0 (no feature cache) or a size in GB, got {max_gb}")


class FeatureCache:
    def __init__(self, max_gb: float):
        check_cache_size(max_gb)
        self.max_bytes = int(max_gb * 2**30)
        self.store: dict[Key, Tensor] = {}
        self.bytes = 0
        self.full = False

    def usable(self, model: Wav2Vec2Model, batch: dict) -> bool:
        """The batch is whole utterances (it names them by `keys`), nothing trains the feature encoder, and each
        frame depends on its own samples only: the layer-norm extractor of XLS-R and XLSR-53, not the group-norm
        one of wav2vec 2.0 Base (its first layer normalises each channel over the padded batch's whole length)."""
        return (
            self.max_bytes > 0
            and batch.get("keys") is not None
            and model.cfg.extractor_mode == "layer_norm"
            and not any(p.requires_grad for p in model.feature_encoder.parameters())
        )

    def features(self, model: Wav2Vec2Model, audio: Tensor, lengths: Tensor, keys: list[Key]) -> Tensor:
        """audio: (B, S) float, lengths: (B,) long samples, keys: B utterance keys -> the feature encoder's
        output (B, T, C) for the padded batch (T frames from S samples), zeros in the padded frames."""
        fe = model.feature_encoder
        frames = fe.output_lengths(lengths.cpu()).tolist()
        T = int(fe.output_lengths(torch.tensor([audio.shape[1]]))[0])
        rows = []
        for b, key in enumerate(keys):
            x = self.store.get(key)
            if x is None:
                with torch.no_grad():  # one utterance, its own samples only
                    x = fe(audio[b : b + 1, : int(lengths[b])])[0][0]  # (T_b, C)
                self._keep(key, x)
            rows.append(x)
        out = rows[0].new_zeros(len(rows), T, rows[0].shape[-1], device=audio.device)
        for b, (x, n) in enumerate(zip(rows, frames)):
            out[b, :n] = x
        return out

    def _keep(self, key: Key, x: Tensor) -> None:
        size = x.numel() * x.element_size()
        if self.bytes + size > self.max_bytes:
            if not self.full:
                log.info("feature cache full (%d utterances, %.2f GB; feature_cache_gb=%g): the others' "
                         "features are computed every time", len(self.store), self.bytes / 2**30,
                         self.max_bytes / 2**30)  # fmt: skip
                self.full = True
            return
        self.store[key] = x.detach().to("cpu", copy=True)
        self.bytes += size
