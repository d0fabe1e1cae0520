"""xlsr's own checkpoint: one torch file holding the model family, its config, weights, tokenizer and
preprocessing (and, for training runs, the optimizer and progress; see `training/`).

Only plain data and tensors go in, so it loads through the same safe loader as everything else.
Files written before families existed have no `family` entry: they are wav2vec2 models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..config import Preprocessing
from ..errors import CheckpointError
from ..text import tokenizer_from_dict
from .families import Loaded, family_named, family_of

FORMAT = "xlsr"
VERSION = 2  # 2: a `family` entry, tokenizers with a `kind`


def checkpoint_dict(model: nn.Module, **extra: Any) -> dict[str, Any]:
    tok = model.tokenizer
    return {
        "format": FORMAT,
        "version": VERSION,
        "family": family_of(model).name,
        "config": model.cfg.to_dict(),
        "preprocessing": model.preprocessing.to_dict(),
        "tokenizer": None if tok is None else tok.to_dict(),
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        **extra,
    }


def is_native(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


def load_native(ckpt: dict[str, Any], path: str | Path) -> Loaded:
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer xlsr (format version {ckpt['version']}); upgrade xlsr")
    family = family_named(ckpt.get("family", "wav2vec2"))
    cfg = family.config.from_dict(ckpt["config"])
    try:
        model = family.model.from_state_dict(cfg, ckpt["model"])
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not match the stored config: {e}") from None
    try:
        tokenizer = tokenizer_from_dict(ckpt.get("tokenizer"))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return Loaded(model, tokenizer, Preprocessing.from_dict(ckpt.get("preprocessing") or {}))
