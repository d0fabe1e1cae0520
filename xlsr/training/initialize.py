"""Starting a training run from another model's weights (`--init`): one function every task uses.

Pretraining continues a pretrained model (or puts a new quantizer on any encoder); fine-tuning puts a new
CTC or classification head on any encoder, or fine-tunes a model's own head further. In every case the
new model is the start model's family, its config the start's changed by the task and by `--set model.*`,
and every weight it keeps must keep its shape: a change that would need other weights (more layers, another
width, no conv bias) is the user's mistake, said in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError


def init_from(start: torch.nn.Module | str | Path, changes: dict[str, Any], keep_head: bool) -> torch.nn.Module:
    """A new model of `start`'s class, its config `start.cfg` with `changes`, holding `start`'s weights: all of
    them with `keep_head`, else all but the head (`head.*`). Head weights `start` lacks (a new head, or a
    quantizer added to one) are initialised as the model class does; tasks re-initialise them as they need.
    `start` may be a path (anything `xlsr.load_model` reads). The preprocessing and origin go with the
    weights; the tokenizer does not (the task sets its own).

    Raises ConfigError when the changed config does not fit the weights (say `--set model.encoder_layers=3`
    on a 2-layer model), naming the changed keys and the first weights that do not fit."""
    if not isinstance(start, torch.nn.Module):
        from ..checkpoints import load_model

        start = load_model(start)
    try:
        cfg = start.cfg.replace(**changes)
    except TypeError as e:  # a key the config does not have
        raise ConfigError(f"{start.source}: cannot change the model config: {e}") from None
    state = {k: v for k, v in start.state_dict().items() if keep_head or not k.startswith("head.")}
    model = type(start)(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith("head.")]  # a head may gain new parts
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and expected[k].shape != state[k].shape]
    if missing or unexpected or reshaped:
        changed = ", ".join(f"model.{k}={json.dumps(v)}" for k, v in _culprits(start, changes, keep_head).items())
        problems = [
            _some(what, names) for what, names in (("missing", missing), ("unexpected", unexpected),
                                                  ("of another shape", reshaped)) if names
        ]  # fmt: skip
        raise ConfigError(
            f"{start.source}: its weights do not fit the model as changed ({changed}): "
            f"{'; '.join(problems)}; keep the network's shape as the start model has it (changes such as "
            "model.dropout are fine)"
        )
    model.load_state_dict(state, strict=False)
    model.preprocessing, model.source = start.preprocessing, start.source
    return model


def _weight_shapes(cls: type, cfg: Any, keep_head: bool) -> dict[str, torch.Size] | None:
    """The shapes of the weights `init_from` keeps, for a model of `cls` with `cfg` (built on the meta device:
    no memory, no time); None if `cfg` is no valid config."""
    try:
        with torch.device("meta"):
            net = cls(cfg)
    except (ConfigError, ValueError):
        return None
    return {k: v.shape for k, v in net.state_dict().items() if keep_head or not k.startswith("head.")}


def _culprits(start: torch.nn.Module, changes: dict[str, Any], keep_head: bool) -> dict[str, Any]:
    """The changes that alone alter a kept weight (all the changes made, if none does so alone)."""
    made = {k: v for k, v in changes.items() if getattr(start.cfg, k) != v}
    base = _weight_shapes(type(start), start.cfg, keep_head)
    alone = {}
    for k, v in made.items():
        try:
            cfg = start.cfg.replace(**{k: v})
        except ConfigError:
            continue
        shapes = _weight_shapes(type(start), cfg, keep_head)
        if shapes is not None and shapes != base:
            alone[k] = v
    return alone or made


def _some(what: str, names: list[str], shown: int = 2) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{what} {', '.join(names[:shown])}{more}"
