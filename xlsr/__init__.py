"""xlsr: XLS-R / wav2vec 2.0 -- use, fine-tune and pretrain cross-lingual speech models."""

__version__ = "0.1.0"

# A function named like its module (xlsr.transcribe in xlsr/transcribe.py) is imported here, eagerly: the
# import system sets `xlsr.<module>` to the submodule when it is first loaded, so a lazily imported function
# would be replaced by its module on the next access. Only the training entry points, which pull in more
# libraries and live in modules of other names, are imported on first use.
from .audio import load_audio  # noqa: E402
from .checkpoints import convert, info, init, load_model  # noqa: E402
from .config import ModelConfig, Preprocessing, preset  # noqa: E402
from .errors import XlsrError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .features import features  # noqa: E402
from .identify import identify  # noqa: E402
from .models import Wav2Vec2Model  # noqa: E402
from .synth import synth  # noqa: E402
from .transcribe import transcribe  # noqa: E402
from .translate import translate  # noqa: E402

_LAZY = {
    "pretrain": ".pretraining.task",
    "finetune_ctc": ".finetuning.ctc",
    "finetune_classify": ".finetuning.classify",
    "finetune_st": ".finetuning.st",
    "serve": ".server",  # the [serve] extra: imported only when called
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        func = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = func  # the next access finds the function itself
        return func
    raise AttributeError(f"module 'xlsr' has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "ModelConfig",
    "Preprocessing",
    "Wav2Vec2Model",
    "XlsrError",
    "convert",
    "evaluate",
    "features",
    "identify",
    "info",
    "init",
    "load_audio",
    "load_model",
    "preset",
    "synth",
    "transcribe",
    "translate",
]
