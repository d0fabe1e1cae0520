"""xlsr: XLS-R / wav2vec 2.0 -- use, fine-tune and pretrain cross-lingual speech models."""

__version__ = "0.1.0"

from .audio import load_audio  # noqa: E402
from .checkpoints import convert, info, init, load_model  # noqa: E402
from .config import ModelConfig, Preprocessing, preset  # noqa: E402
from .errors import XlsrError  # noqa: E402
from .features import features  # noqa: E402
from .models import Wav2Vec2Model  # noqa: E402

# The commands' functions, imported on first use (training and decoding pull in more libraries).
_LAZY = {
    "transcribe": ".transcribe",
    "evaluate": ".evaluate",
    "identify": ".classify",
    "synth": ".synth",
    "pretrain": ".pretraining.task",
    "finetune_ctc": ".finetuning.ctc",
    "finetune_classify": ".finetuning.classify",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'xlsr' has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "ModelConfig",
    "Preprocessing",
    "Wav2Vec2Model",
    "XlsrError",
    "convert",
    "features",
    "info",
    "init",
    "load_audio",
    "load_model",
    "preset",
]
