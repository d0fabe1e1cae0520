"""Model families: what xlsr must know to read, build, write and describe one kind of network.

A family is registered once, in `FAMILIES`. `load_model` asks each family whether a checkpoint is
one of its own (a Hugging Face directory's config.json, a fairseq checkpoint, an xlsr checkpoint's
`family` entry) and hands it to that family's reader; nothing outside this table names a model class.

What a family provides (see ARCHITECTURE.md, "Adding a model family"):
- `config`: a frozen dataclass (config.py) with `to_dict` / `from_dict`, stored in every xlsr checkpoint;
- `model`: the network (models/), built as `model(cfg)` or `model.from_state_dict(cfg, state)` (which
  raises ValueError on a missing or unexpected weight), with `cfg`, `num_parameters()` and optionally
  `fsdp_units()` (the submodules FSDP shards one by one);
- `tokenizer`: the kind of tokenizer its outputs are read with (text/), or None;
- readers and writers: `is_hf` + `load_hf` + `save_hf` (Hugging Face directories), `is_fairseq` +
  `load_fairseq` (fairseq checkpoints), and `describe` (what `xlsr info` prints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ModelConfig, Preprocessing, SpeechTranslationConfig
from ..errors import CheckpointError
from ..models import Wav2Vec2Model
from ..models.speech_translation import SpeechTranslationModel
from ..text import Tokenizer


@dataclass
class Loaded:
    """What a reader returns: the network (float32, CPU) and what it needs to be used."""

    model: nn.Module
    tokenizer: Tokenizer | None
    preprocessing: Preprocessing


@dataclass(frozen=True)
class Family:
    name: str
    config: type
    model: type[nn.Module]
    tokenizer: str | None
    is_hf: Callable[[dict[str, Any]], bool]  # config.json -> is it this family's?
    load_hf: Callable[[Path], Loaded]
    save_hf: Callable[[nn.Module, Path], None]
    is_fairseq: Callable[[dict[str, Any]], bool]  # a fairseq checkpoint (its dict) -> is it this family's?
    load_fairseq: Callable[..., Loaded]  # (path, ckpt, dict_path=..., spm_path=...) -> Loaded
    describe: Callable[[nn.Module], dict[str, Any]]


def carry(model: nn.Module, tokenizer: Tokenizer | None, preprocessing: Preprocessing, source: str) -> nn.Module:
    """The one place a model is given what it carries besides its weights."""
    model.tokenizer, model.preprocessing, model.source = tokenizer, preprocessing, source
    return model


# -- wav2vec 2.0 / XLS-R: pretraining, CTC and classification heads ---------------------------------------
def _wav2vec2_load_hf(path: Path) -> Loaded:
    from .hf import load_hf_dir

    return Loaded(*load_hf_dir(path))


def _wav2vec2_save_hf(model: Wav2Vec2Model, path: Path) -> None:
    from .hf import save_hf_dir

    save_hf_dir(model, path, model.tokenizer, model.preprocessing)


def _wav2vec2_load_fairseq(path: Path, ckpt: dict[str, Any], dict_path: str | Path | None = None, **_: Any) -> Loaded:
    from .fairseq import load_fairseq

    return Loaded(*load_fairseq(path, dict_path, ckpt))


def _wav2vec2_describe(net: Wav2Vec2Model) -> dict[str, Any]:
    cfg = net.cfg
    heads = {"none": "encoder only", "pretraining": "pretraining (quantizer + contrastive projections)"}
    head = heads.get(cfg.head, cfg.head)
    if cfg.head == "pretraining" and not cfg.quantize_targets:
        head = "pretraining (contrastive projections, unquantized targets)"
    if cfg.head == "classification":
        act = "" if cfg.classifier_activation == "linear" else f", {cfg.classifier_activation}"
        head = f"classification (projection {cfg.classifier_proj_size}, mean over frames{act})"
    encoder = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("head."))
    out = {
        "family": "wav2vec2",
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


WAV2VEC2 = Family(
    name="wav2vec2",
    config=ModelConfig,
    model=Wav2Vec2Model,
    tokenizer="ctc",
    is_hf=lambda hf: hf.get("model_type", "wav2vec2") == "wav2vec2",
    load_hf=_wav2vec2_load_hf,
    save_hf=_wav2vec2_save_hf,
    is_fairseq=lambda ckpt: True,  # the fallback: every other family recognises its own checkpoints first
    load_fairseq=_wav2vec2_load_fairseq,
    describe=_wav2vec2_describe,
)


# -- speech translation: XLS-R encoder + adapter + mBART-style decoder ------------------------------------
def _st_load_hf(path: Path) -> Loaded:
    from ..text.spm_tokenizer import SentencePieceTokenizer
    from .hf_st import load_hf_st_dir

    model, generation = load_hf_st_dir(path)
    model.generation = generation  # decoder start, forced target-language token, max length, beams
    has_spm = (path / "sentencepiece.bpe.model").exists()
    tokenizer = SentencePieceTokenizer.from_hf_dir(path) if has_spm else None
    return Loaded(model, tokenizer, model.preprocessing)


def _st_save_hf(model: SpeechTranslationModel, path: Path) -> None:
    from .hf_st import save_hf_st_dir

    save_hf_st_dir(model, path, getattr(model, "generation", None))


def _st_load_fairseq(path: Path, ckpt: dict[str, Any], dict_path=None, spm_path=None, **_: Any) -> Loaded:
    from .fairseq_st import load_fairseq_st

    return Loaded(*load_fairseq_st(path, ckpt, dict_path=dict_path, spm_path=spm_path))


def _st_is_fairseq(ckpt: dict[str, Any]) -> bool:
    from .fairseq_st import is_fairseq_st

    return is_fairseq_st(ckpt)


def _st_describe(net: SpeechTranslationModel) -> dict[str, Any]:
    cfg, enc = net.cfg, net.cfg.encoder
    out = {
        "family": "speech_translation",
        "source": net.source,
        "head": "speech translation (encoder + adapter + decoder)",
        "layout": enc.layout,
        "layers": enc.encoder_layers,
        "dim": enc.encoder_embed_dim,
        "ffn_dim": enc.encoder_ffn_embed_dim,
        "heads": enc.encoder_attention_heads,
        "conv_layers": [list(c) for c in enc.conv_feature_layers],
        "frame_ms": 1000 * enc.frame_stride / net.preprocessing.sample_rate,
        "adapter": f"{cfg.adaptor_n_layers} x conv (kernel {cfg.adaptor_kernel_size}, stride {cfg.adaptor_stride})"
        + (f", projection to {cfg.adaptor_proj_dim}" if cfg.adaptor_proj_dim else ""),
        "decoder": f"{cfg.decoder_layers} layers, dim {cfg.decoder_embed_dim}, FFN {cfg.decoder_ffn_embed_dim}, "
        f"{cfg.decoder_attention_heads} heads, {cfg.activation_fn}",
        "parameters": net.num_parameters(),
        "encoder_parameters": sum(p.numel() for p in net.encoder.parameters()),
        "preprocessing": net.preprocessing.to_dict(),
        "vocabulary_size": cfg.vocab_size,
    }
    if net.tokenizer is not None:
        from .hf_st import target_languages

        out["languages"] = target_languages(net)  # those it was fine-tuned on, when recorded
    return out


SPEECH_TRANSLATION = Family(
    name="speech_translation",
    config=SpeechTranslationConfig,
    model=SpeechTranslationModel,
    tokenizer="sentencepiece",
    is_hf=lambda hf: hf.get("model_type") == "speech-encoder-decoder",
    load_hf=_st_load_hf,
    save_hf=_st_save_hf,
    is_fairseq=_st_is_fairseq,
    load_fairseq=_st_load_fairseq,
    describe=_st_describe,
)

# Order matters for `is_fairseq`: the most specific family first, wav2vec2 (the fallback) last.
FAMILIES: dict[str, Family] = {"speech_translation": SPEECH_TRANSLATION, "wav2vec2": WAV2VEC2}


def family_named(name: str) -> Family:
    if name not in FAMILIES:
        raise CheckpointError(f"unknown model family {name!r} (xlsr knows {', '.join(FAMILIES)}); upgrade xlsr")
    return FAMILIES[name]


def family_of(model: nn.Module) -> Family:
    """The family of a built network."""
    for family in FAMILIES.values():
        if isinstance(model, family.model):
            return family
    raise TypeError(f"{type(model).__name__} is not a registered model family")


def hf_family(config: dict[str, Any], path: Path) -> Family:
    for family in FAMILIES.values():
        if family.is_hf(config):
            return family
    raise CheckpointError(
        f"{path}: model_type {config.get('model_type')!r} is not a family xlsr reads ({', '.join(FAMILIES)})"
    )


def fairseq_family(ckpt: dict[str, Any]) -> Family:
    return next(f for f in FAMILIES.values() if f.is_fairseq(ckpt))
