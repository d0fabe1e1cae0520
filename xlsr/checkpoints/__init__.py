"""Loading any model xlsr reads, and writing Hugging Face directories.

MODEL may be a Hugging Face directory, a fairseq `.pt`, an xlsr checkpoint, or a hub id (downloaded
through huggingface_hub only when it is installed and the network allows it; nothing requires it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import Wav2Vec2Model
from .families import FAMILIES, Family, Loaded, carry, fairseq_family, family_of, hf_family
from .hf import _read_json, save_hf_dir
from .io import safe_torch_load
from .native import checkpoint_dict, is_native, load_native

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # owner/name, as the Hugging Face hub spells repository ids
MODEL_FILE_SUFFIXES = (".pt", ".safetensors", ".bin", ".ckpt")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{repo_id}: no such model file or directory (to download it from the Hugging Face hub, "
            "pip install huggingface_hub)"
        ) from None
    try:
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, gated repo: the hub raises many types
        raise CheckpointError(
            f"{repo_id}: not a local path, and the hub download failed ({type(e).__name__})"
        ) from None


def looks_like_model(item: str | Path) -> bool:
    """Whether a path names a model (a directory with config.json, a checkpoint file), as opposed to audio."""
    path = Path(item)
    return (path.is_dir() and (path / "config.json").exists()) or path.suffix in MODEL_FILE_SUFFIXES


def model_and_inputs(model: str | None, items: list[str], work: str = "done") -> tuple[str | None, list[str]]:
    """The one rule for "which argument is the model": `model` when given; else the first input when it is an
    existing model directory or checkpoint file (unambiguous: it cannot be audio). A first input that is neither
    an existing path nor audio nor a manifest, followed by others, stops the command before any work: it is taken
    for a mistyped model, never replaced by the bundled one."""
    from ..audio import AUDIO_EXTENSIONS
    from ..data.sources import TABLE_SUFFIXES, TSV_SUFFIXES
    from ..errors import ConfigError

    items = list(items)
    if model is None and items and looks_like_model(items[0]):
        return items[0], items[1:]
    if model is None and len(items) > 1 and not Path(items[0]).exists():
        suffix = Path(items[0]).suffix.lower()
        if suffix not in AUDIO_EXTENSIONS and suffix not in TSV_SUFFIXES + TABLE_SUFFIXES:
            raise ConfigError(f"{items[0]}: no such model (no such file or directory); nothing was {work}")
    return model, items


def load_model(
    model: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    dict_path: str | Path | None = None,
    spm_path: str | Path | None = None,
    kind: str = "asr",
) -> nn.Module:
    """Any model xlsr reads -> its network in eval mode, with `.tokenizer`, `.preprocessing` and `.source`.

    model: a Hugging Face directory, a fairseq `.pt`, an xlsr checkpoint, or a hub id; None: the bundled
    reference model of `kind` (`asr`, `lid`). `dict_path` / `spm_path`: a fairseq model's target dictionary
    and sentencepiece model (default: beside the checkpoint). The family (wav2vec2, speech translation, ...)
    is recognised from the checkpoint itself (`checkpoints/families.py`).
    """
    if model is None:
        model = bundled_model(kind)
    path = Path(model)
    if path.suffix == ".safetensors" and path.is_file():
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path}: not a model: a model directory needs config.json (Hugging Face format)")
        loaded = hf_family(_read_json(path / "config.json"), path).load_hf(path)
        kind_of = "Hugging Face directory"
    elif path.is_file():
        ckpt = safe_torch_load(path)
        if is_native(ckpt):
            loaded, kind_of = load_native(ckpt, path), "xlsr checkpoint"
        elif isinstance(ckpt, dict) and "model" in ckpt:
            loaded = fairseq_family(ckpt).load_fairseq(path, ckpt, dict_path=dict_path, spm_path=spm_path)
            kind_of = "fairseq checkpoint"
        else:
            raise CheckpointError(
                f"{path}: a torch file, but neither an xlsr nor a fairseq checkpoint (no `model` weights)"
            )
    elif HUB_ID.match(str(model)):
        return load_model(_download(str(model)), device, dtype, dict_path, spm_path)
    else:
        raise CheckpointError(f"{model}: no such file or directory (the model to load)")
    net = carry(loaded.model, loaded.tokenizer, loaded.preprocessing, f"{kind_of} {path}")
    return net.to(device=device, dtype=dtype).eval()


def inference_model(
    model: str | Path | nn.Module | None, device: str | None, dtype: str | None, kind: str = "asr"
) -> nn.Module:
    """What every inference command starts with: a loaded model (as given, or read with `load_model`; None: the
    bundled `kind`), on `device` (default: cuda when available) in `dtype` (default: float32 on the CPU,
    float16 on a GPU), in eval mode."""
    from ..runtime import resolve_device, resolve_dtype

    dev = resolve_device(device)
    net = model if isinstance(model, nn.Module) else load_model(model, device=dev, kind=kind)
    return net.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()


BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "model"


def bundled_model(kind: str = "asr") -> Path:
    """The small reference models shipped with xlsr (recipes/reference_model.py): `asr` (CTC, 10 languages'
    shared characters) and `lid` (language ID, fine-tuned from the CTC model's encoder)."""
    path = BUNDLED_MODEL / kind
    if not (path / "config.json").exists():
        raise CheckpointError(f"the bundled {kind} model is missing from {path}: name a model with --model")
    return path


def _encoder_only(model: Wav2Vec2Model) -> Wav2Vec2Model:
    """The same network without its head (transformers' Wav2Vec2Model)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    bare = Wav2Vec2Model.from_state_dict(model.cfg.replace(head="none", vocab_size=0, labels=()), state)
    return carry(bare, None, model.preprocessing, model.source)


@dataclass
class Converted:
    model: nn.Module  # what was written
    left_out: str | None = None  # what the source had that the directory does not hold, in a phrase


def convert(
    src: str | Path,
    dst: str | Path,
    dict_path: str | Path | None = None,
    spm_path: str | Path | None = None,
    encoder_only: bool = False,
) -> Converted:
    """Any model xlsr reads -> a Hugging Face model directory at `dst` (written atomically), or, when `dst`
    ends in .pt, an xlsr checkpoint (every family and head, exactly: see `native.py`).

    encoder_only: write transformers' Wav2Vec2Model, dropping the head. A fairseq pretraining model without a
    quantizer (`quantize_targets=False`) cannot be a transformers Wav2Vec2ForPreTraining: its encoder is
    written, and `left_out` says so.
    """
    model = load_model(src, dict_path=dict_path, spm_path=spm_path)
    if Path(dst).suffix == ".pt" and not encoder_only:  # xlsr's own checkpoint: every family, exactly
        from .io import atomic_torch_save
        from .native import checkpoint_dict

        if Path(dst).is_dir():
            raise CheckpointError(f"{dst}: is a directory; an xlsr checkpoint is one file")
        atomic_torch_save(checkpoint_dict(model), dst)
        return Converted(model, None)
    _check_destination(Path(dst))
    left_out = None
    if isinstance(model, Wav2Vec2Model) and model.cfg.head == "pretraining" and not model.cfg.quantize_targets:
        encoder_only = True
        left_out = (
            "the contrastive projection (no quantizer: fairseq quantize_targets=False, which transformers' "
            "Wav2Vec2ForPreTraining cannot hold); wrote the encoder (Wav2Vec2Model)"
        )
    cfg = getattr(model, "cfg", None)
    if not encoder_only and getattr(cfg, "classifier_activation", "linear") != "linear":
        raise CheckpointError(
            f"{src}: its classifier applies {cfg.classifier_activation} after pooling (fairseq MeanPoolingFast), "
            "which transformers' Wav2Vec2ForSequenceClassification cannot represent; an xlsr checkpoint keeps it "
            "exactly (a destination ending in .pt)"
        )
    if encoder_only and not isinstance(model, Wav2Vec2Model):
        raise CheckpointError(f"{src}: --encoder-only applies to wav2vec2 models, not {family_of(model).name}")
    out = _encoder_only(model) if encoder_only else model
    family_of(out).save_hf(out, Path(dst))
    return Converted(out, left_out)


def _check_destination(dst: Path) -> None:
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / "config.json").exists():
        raise CheckpointError(f"{dst}: a non-empty directory that is not a model directory; refusing to replace it")


def info(model: str | Path | nn.Module | None = None) -> dict:
    """What a model is: family, architecture, sizes, parameter count, vocabulary or labels, preprocessing, origin."""
    net = model if isinstance(model, nn.Module) else load_model(model)
    return family_of(net).describe(net)


def init(out: str | Path, preset: str = "tiny", seed: int = 0) -> nn.Module:
    """A new, randomly initialised model of a preset, written as a Hugging Face directory."""
    from ..config import preset as get_preset

    cfg = get_preset(preset)
    family = next(f for f in FAMILIES.values() if isinstance(cfg, f.config))
    torch.manual_seed(seed)
    model = family.model(cfg)
    _check_destination(Path(out))
    family.save_hf(model, Path(out))
    return model


__all__ = [
    "Converted",
    "Family",
    "Loaded",
    "bundled_model",
    "carry",
    "checkpoint_dict",
    "convert",
    "family_of",
    "inference_model",
    "info",
    "init",
    "load_model",
    "looks_like_model",
    "model_and_inputs",
    "save_hf_dir",
]
