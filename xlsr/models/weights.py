"""Building a network with exactly the weights of a state dict: the one way every model family does it."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def build_with_weights(cls: type[nn.Module], cfg, state: dict[str, Tensor], optional: str | None = None) -> nn.Module:
    """`cls(cfg)` built on the meta device (no time spent on random weights that are overwritten at once: seconds
    for the 2B model), then given `state` as its weights. A missing, unexpected or wrongly shaped weight raises
    ValueError; only `optional` may be absent, and it is then left on the meta device for the caller to
    initialise."""
    with torch.device("meta"):
        model = cls(cfg)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state) - {optional})
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"missing weights: {missing}; unexpected weights: {unexpected}")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a weight of the wrong shape
        raise ValueError(str(e)) from None
    return model
