"""Loading any model xlsr reads, and writing Hugging Face directories.

MODEL may be a Hugging Face directory, a fairseq `.pt`, an xlsr checkpoint, or a hub id (downloaded
through huggingface_hub only when it is installed and the network allows it; nothing requires it).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models import Wav2Vec2Model
from .fairseq import load_fairseq
from .hf import load_hf_dir, save_hf_dir
from .io import safe_torch_load
from .native import checkpoint_dict, is_native, load_native

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{repo_id}: no such file or directory (to download it from the Hugging Face hub, "
            "pip install huggingface_hub)"
        ) from None
    try:
        patterns = ["*.json", "*.safetensors", "*.txt"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, gated repo: the hub raises many types
        raise CheckpointError(
            f"{repo_id}: not a local path, and the hub download failed ({type(e).__name__})"
        ) from None


def load_model(
    model: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    dict_path: str | Path | None = None,
) -> Wav2Vec2Model:
    """Any model xlsr reads -> a Wav2Vec2Model in eval mode, with `.tokenizer` (CTC models),
    `.preprocessing` and `.source` set. `dict_path` is a fairseq CTC model's letter dictionary
    (default: `dict.ltr.txt` beside the checkpoint)."""
    path = Path(model)
    if path.suffix == ".safetensors" and path.is_file():
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path}: a model directory needs config.json (Hugging Face format)")
        net, tokenizer, pre = load_hf_dir(path)
        kind = "Hugging Face directory"
    elif path.is_file():
        ckpt = safe_torch_load(path)
        if is_native(ckpt):
            net, tokenizer, pre = load_native(ckpt, path)
            kind = "xlsr checkpoint"
        else:
            net, tokenizer, pre = load_fairseq(path, dict_path, ckpt)
            kind = "fairseq checkpoint"
    elif HUB_ID.match(str(model)):
        return load_model(_download(str(model)), device, dtype)
    else:
        raise CheckpointError(f"{model}: no such file or directory")
    net.tokenizer, net.preprocessing, net.source = tokenizer, pre, f"{kind} {path}"
    return net.to(device=device, dtype=dtype).eval()


BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "model"


def bundled_model(kind: str = "asr") -> Path:
    """The small reference models shipped with xlsr (recipes/reference_model.py): `asr` (CTC, 10 languages'
    shared characters) and `lid` (language ID, fine-tuned from the CTC model's encoder)."""
    path = BUNDLED_MODEL / kind
    if not (path / "config.json").exists():
        raise CheckpointError(f"the bundled {kind} model is missing from {path}: name a MODEL")
    return path


def _encoder_only(model: Wav2Vec2Model) -> Wav2Vec2Model:
    """The same network without its head (transformers' Wav2Vec2Model)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    bare = Wav2Vec2Model.from_state_dict(model.cfg.replace(head="none", vocab_size=0, labels=()), state)
    bare.preprocessing, bare.source = model.preprocessing, model.source
    return bare


def convert(
    src: str | Path, dst: str | Path, dict_path: str | Path | None = None, encoder_only: bool = False
) -> Wav2Vec2Model:
    """Any model xlsr reads -> a Hugging Face model directory at `dst` (written atomically).

    encoder_only: write transformers' Wav2Vec2Model, dropping the head (needed for a fairseq pretraining
    model without a quantizer, which transformers' Wav2Vec2ForPreTraining cannot hold).
    """
    model = load_model(src, dict_path=dict_path)
    _check_destination(Path(dst))
    out = _encoder_only(model) if encoder_only else model
    save_hf_dir(out, dst, None if encoder_only else model.tokenizer, model.preprocessing)
    return out


def _check_destination(dst: Path) -> None:
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / "config.json").exists():
        raise CheckpointError(f"{dst}: a non-empty directory that is not a model directory; refusing to replace it")


def info(model: str | Path | Wav2Vec2Model) -> dict:
    """What a model is: architecture, sizes, parameter count, vocabulary or labels, preprocessing, origin."""
    net = model if isinstance(model, Wav2Vec2Model) else load_model(model)
    cfg = net.cfg
    heads = {"none": "encoder only", "pretraining": "pretraining (quantizer + contrastive projections)"}
    head = heads.get(cfg.head, cfg.head)
    if cfg.head == "pretraining" and not cfg.quantize_targets:
        head = "pretraining (contrastive projections, unquantized targets)"
    encoder = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("head."))
    out = {
        "source": net.source,
        "head": head,
        "layout": cfg.layout,
        "layers": cfg.encoder_layers,
        "dim": cfg.encoder_embed_dim,
        "ffn_dim": cfg.encoder_ffn_embed_dim,
        "heads": cfg.encoder_attention_heads,
        "conv_layers": [list(c) for c in cfg.conv_feature_layers],
        "frame_ms": 1000 * cfg.frame_stride / net.preprocessing.sample_rate,
        "parameters": net.num_parameters(),
        "encoder_parameters": encoder,
        "preprocessing": net.preprocessing.to_dict(),
    }
    if cfg.head == "pretraining" and cfg.quantize_targets:
        out["codebook"] = f"{cfg.latent_groups} groups x {cfg.latent_vars} entries, dim {cfg.codevector_dim}"
    if net.tokenizer is not None:
        out["vocabulary"] = list(net.tokenizer.tokens)
    if cfg.labels:
        out["labels"] = list(cfg.labels)
    return out


def init(out: str | Path, preset: str = "tiny", seed: int = 0) -> Wav2Vec2Model:
    """A new, randomly initialised pretraining model of a preset, written as a Hugging Face directory."""
    from ..config import preset as get_preset

    torch.manual_seed(seed)
    model = Wav2Vec2Model(get_preset(preset))
    _check_destination(Path(out))
    save_hf_dir(model, out)
    return model


__all__ = ["bundled_model", "checkpoint_dict", "convert", "info", "init", "load_model", "save_hf_dir"]
