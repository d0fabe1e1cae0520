"""xlsr: XLS-R / wav2vec 2.0 -- use, fine-tune and pretrain cross-lingual speech models."""

__version__ = "0.1.0"

from .audio import load_audio  # noqa: E402
from .checkpoints import convert, info, init, load_model  # noqa: E402
from .config import ModelConfig, Preprocessing, preset  # noqa: E402
from .errors import XlsrError  # noqa: E402
from .features import features  # noqa: E402
from .models import Wav2Vec2Model  # noqa: E402

__all__ = [
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
