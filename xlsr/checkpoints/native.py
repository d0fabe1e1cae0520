"""xlsr's own checkpoint: one torch file holding the model config, weights, vocabulary and
preprocessing (and, for training runs, the optimizer and progress; see `training/`).

Only plain data and tensors go in, so it loads through the same safe loader as everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelConfig, Preprocessing
from ..errors import CheckpointError
from ..models import Wav2Vec2Model
from ..text.ctc_tokenizer import CTCTokenizer

FORMAT = "xlsr"
VERSION = 1


def checkpoint_dict(model: Wav2Vec2Model, **extra: Any) -> dict[str, Any]:
    tok = model.tokenizer
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.cfg.to_dict(),
        "preprocessing": model.preprocessing.to_dict(),
        "tokenizer": None
        if tok is None
        else {
            "tokens": list(tok.tokens),
            "pad_token": tok.pad_token,
            "unk_token": tok.unk_token,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "word_delimiter_token": tok.word_delimiter_token,
            "do_lower_case": tok.do_lower_case,
        },
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        **extra,
    }


def is_native(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


def load_native(ckpt: dict[str, Any], path: str | Path) -> tuple[Wav2Vec2Model, CTCTokenizer | None, Preprocessing]:
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer xlsr (format version {ckpt['version']}); upgrade xlsr")
    cfg = ModelConfig.from_dict(ckpt["config"])
    try:
        model = Wav2Vec2Model.from_state_dict(cfg, ckpt["model"])
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not match the stored config: {e}") from None
    tok = CTCTokenizer(**ckpt["tokenizer"]) if ckpt.get("tokenizer") else None
    return model, tok, Preprocessing.from_dict(ckpt.get("preprocessing") or {})
