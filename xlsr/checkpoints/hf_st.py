"""Hugging Face speech-translation directories: what transformers' `SpeechEncoderDecoderModel` loads.

A directory holds config.json (`model_type` "speech-encoder-decoder"; `encoder`: a wav2vec2 config with
`add_adapter`; `decoder`: an mBART config for `MBartForCausalLM`), model.safetensors or pytorch_model.bin,
generation_config.json (absent from the 2021 directories, whose generation values sit in config.json),
preprocessor_config.json, and the target tokenizer's files. The wav2vec2 half is read and written by
`hf.py`'s parser and key table; this module adds the adapter and the decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..config import SpeechTranslationConfig
from ..errors import CheckpointError
from ..models.speech_translation import SpeechTranslationModel
from ..models.transformer import ACTIVATIONS
from .hf import _read_json, _read_weights, hf_state_dict, parse_config, preprocessor_config, read_preprocessing
from .hf import map_key as map_wav2vec2_key
from .hf import to_hf_config as to_hf_wav2vec2_config
from .io import atomic_path
from .keys import KeyMap

ENCODER = "encoder."  # transformers' prefix of the Wav2Vec2Model, and xlsr's
LM_HEAD = "decoder.lm_head.weight"  # tied to the token embeddings: not an xlsr weight
PROCESSOR_CLASS = "Wav2Vec2Processor"  # the model cards' Speech2Text2Processor fails on mBART-50 tokenizers

# transformers -> xlsr for everything but the wav2vec2 encoder (which `hf.map_key` renames).
_DEC = "decoder.model.decoder."
KEYS = KeyMap(
    [
        ("encoder.adapter.proj.{w}", "adapter.proj.{w}"),
        ("encoder.adapter.proj_layer_norm.{w}", "adapter.proj_layer_norm.{w}"),
        ("encoder.adapter.layers.{n}.conv.{w}", "adapter.layers.{n}.{w}"),
        (_DEC + "embed_tokens.weight", "decoder.embed_tokens.weight"),
        (_DEC + "embed_positions.weight", "decoder.embed_positions.weight"),
        (_DEC + "layernorm_embedding.{w}", "decoder.layernorm_embedding.{w}"),
        (_DEC + "layers.{n}.self_attn.{p}_proj.{w}", "decoder.layers.{n}.self_attn.{p}_proj.{w}"),
        (_DEC + "layers.{n}.self_attn_layer_norm.{w}", "decoder.layers.{n}.self_attn_layer_norm.{w}"),
        (_DEC + "layers.{n}.encoder_attn.{p}_proj.{w}", "decoder.layers.{n}.encoder_attn.{p}_proj.{w}"),
        (_DEC + "layers.{n}.encoder_attn_layer_norm.{w}", "decoder.layers.{n}.encoder_attn_layer_norm.{w}"),
        (_DEC + "layers.{n}.fc1.{w}", "decoder.layers.{n}.fc1.{w}"),
        (_DEC + "layers.{n}.fc2.{w}", "decoder.layers.{n}.fc2.{w}"),
        (_DEC + "layers.{n}.final_layer_norm.{w}", "decoder.layers.{n}.final_layer_norm.{w}"),
        (_DEC + "layer_norm.{w}", "decoder.layer_norm.{w}"),
    ]
)


@dataclass(frozen=True)
class GenerationDefaults:
    """The generation values a directory carries (transformers' GenerationConfig fields of the same names)."""

    decoder_start_token_id: int = 2  # the decoder's first input (</s> for mBART, as fairseq)
    forced_bos_token_id: int | None = None  # forced first generated token: the target-language tag, if any
    max_length: int | None = None  # transformers' max_length (decoder start token included); None: not set
    num_beams: int = 1
    # the language codes the model was fine-tuned to produce (xlsr's own field; empty: not recorded, as in the
    # published directories, and then any language of the vocabulary is accepted)
    target_languages: tuple[str, ...] = ()


def target_languages(net: Any) -> list[str]:
    """The languages a speech-translation model translates into: those it was fine-tuned on when its generation
    config records them, else every language of its vocabulary."""
    trained = getattr(getattr(net, "generation", None), "target_languages", ())
    return list(trained) if trained else list(net.tokenizer.languages if net.tokenizer is not None else [])


def is_hf_st_config(config: dict[str, Any]) -> bool:
    """Whether a config.json (as a dict) describes a transformers SpeechEncoderDecoderModel."""
    archs = config.get("architectures") or []
    return config.get("model_type") == "speech-encoder-decoder" or "SpeechEncoderDecoderModel" in archs


def map_key(key: str) -> str:
    """A transformers SpeechEncoderDecoderModel weight name -> the xlsr name (raises on unknown names)."""
    mapped = KEYS.to_xlsr(key)
    if mapped is not None:
        return mapped
    if key.startswith(ENCODER) and not key.startswith(ENCODER + "adapter."):
        return ENCODER + map_wav2vec2_key(key[len(ENCODER) :])
    raise CheckpointError(f"unknown weight {key!r}: not part of a speech-translation model xlsr knows")


def _decoder_value(hf: dict[str, Any], key: str) -> Any:
    """A value transformers reads from the top level of config.json, else from its decoder."""
    value = hf.get(key)
    return value if value is not None else (hf.get("decoder") or {}).get(key)


def parse_st_config(hf: dict[str, Any]) -> SpeechTranslationConfig:
    """config.json of a SpeechEncoderDecoderModel -> SpeechTranslationConfig (transformers' defaults where a
    key is absent, as transformers would read it)."""
    if not is_hf_st_config(hf):
        raise CheckpointError("config.json is not a SpeechEncoderDecoderModel (model_type speech-encoder-decoder)")
    enc, dec = hf.get("encoder") or {}, hf.get("decoder") or {}
    if enc.get("model_type") != "wav2vec2":
        raise CheckpointError(f"encoder model_type {enc.get('model_type')!r} is not supported (only wav2vec2)")
    if dec.get("model_type") != "mbart":
        raise CheckpointError(f"decoder model_type {dec.get('model_type')!r} is not supported (only mbart)")
    width = enc.get("hidden_size", 768)
    out_width = enc.get("output_hidden_size") or width
    d_model = dec.get("d_model", 1024)
    if out_width != d_model or dec.get("cross_attention_hidden_size") is not None:
        raise CheckpointError(
            f"the encoder's output width {out_width} differs from the decoder's d_model {d_model} "
            "(transformers' enc_to_dec_proj / cross_attention_hidden_size): not supported"
        )
    adapter = bool(enc.get("add_adapter", False))
    if adapter and enc.get("adapter_kernel_size", 3) != 3:
        raise CheckpointError(
            f"adapter_kernel_size {enc['adapter_kernel_size']}: transformers' Wav2Vec2Adapter pads one frame, "
            "which xlsr (padding kernel // 2, as fairseq) matches for kernel 3 only"
        )
    encoder = parse_config({**enc, "add_adapter": False, "architectures": ["Wav2Vec2Model"]})
    start = _decoder_value(hf, "decoder_start_token_id")
    try:
        return SpeechTranslationConfig(
            encoder=encoder,
            adaptor_n_layers=enc.get("num_adapter_layers", 3) if adapter else 0,
            adaptor_kernel_size=3,
            adaptor_stride=enc.get("adapter_stride", 2),
            adaptor_proj_dim=out_width if adapter and out_width != width else 0,
            **mbart_decoder_fields(dec),
            decoder_start_token_id=2 if start is None else start,
        )
    except Exception as e:  # ConfigError: a combination xlsr cannot build
        raise CheckpointError(f"config.json: {e}") from None


def mbart_decoder_fields(dec: dict[str, Any]) -> dict[str, Any]:
    """An mBART config (a SpeechEncoderDecoderModel's `decoder`, or an mBART directory's config.json) -> the
    SpeechTranslationConfig decoder fields, with transformers' defaults where a key is absent."""
    activation = dec.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"decoder activation_function {activation!r} is not supported ({', '.join(ACTIVATIONS)})")
    return dict(
        decoder_layers=dec.get("decoder_layers", 12),
        decoder_embed_dim=dec.get("d_model", 1024),
        decoder_ffn_embed_dim=dec.get("decoder_ffn_dim", 4096),
        decoder_attention_heads=dec.get("decoder_attention_heads", 16),
        vocab_size=dec.get("vocab_size", 50265),
        max_target_positions=dec.get("max_position_embeddings", 1024),
        activation_fn=activation,
        scale_embedding=bool(dec.get("scale_embedding", False)),
        layernorm_embedding=True,
        decoder_dropout=dec.get("dropout", 0.1),
        decoder_attention_dropout=dec.get("attention_dropout", 0.0),
        decoder_activation_dropout=dec.get("activation_dropout", 0.0),
        decoder_layerdrop=dec.get("decoder_layerdrop", 0.0),
        pad_token_id=dec.get("pad_token_id", 1),
        bos_token_id=dec.get("bos_token_id", 0),
        eos_token_id=dec.get("eos_token_id", 2),
    )


MBART_DECODER = "model.decoder."  # the decoder's prefix in MBartForConditionalGeneration and MBartForCausalLM
MBART_EMBEDDINGS = ("model.shared.weight", "lm_head.weight")  # where a tied token embedding may be saved instead


def load_mbart_decoder_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A transformers mBART directory (`MBartForConditionalGeneration`, mBART-50 itself, or `MBartForCausalLM`, a
    decoder alone) -> (the SpeechTranslationConfig decoder fields, the decoder's weights under xlsr's names,
    `decoder.*`). A ConditionalGeneration model's encoder is left out; its `final_logits_bias` must be zero
    (xlsr's output projection has no bias; mBART-50's is zero). The vocabulary is the directory's
    MBart50Tokenizer (`SentencePieceTokenizer.from_hf_dir`). CheckpointError (one line) for anything else."""
    path = Path(path)
    hf = _read_json(path / "config.json")
    if hf.get("model_type") != "mbart":
        raise CheckpointError(
            f"{path}: model_type {hf.get('model_type')!r} is not an mBART decoder (MBartForConditionalGeneration or "
            "MBartForCausalLM)"
        )
    fields = mbart_decoder_fields(hf)
    state: dict[str, Tensor] = {}
    tied: dict[str, Tensor] = {}
    for key, value in _read_weights(path).items():
        if key.startswith(MBART_DECODER):
            state[map_key("decoder." + key)] = value  # decoder.model.decoder.* is the SpeechEncoderDecoder spelling
        elif key in MBART_EMBEDDINGS:
            tied[key] = value
        elif key == "final_logits_bias":
            if bool(value.abs().max() > 0):
                raise CheckpointError(f"{path}: final_logits_bias is not zero; xlsr's output projection has no bias")
        elif not key.startswith("model.encoder."):
            raise CheckpointError(f"{path}: unknown weight {key!r}: not part of an mBART model xlsr knows")
    embed = "decoder.embed_tokens.weight"
    if embed not in state:
        if not tied:
            raise CheckpointError(f"{path}: no decoder token embeddings (model.decoder.embed_tokens, model.shared)")
        state[embed] = next(iter(tied.values()))
    for key, value in tied.items():
        if not torch.equal(value, state[embed]):
            raise CheckpointError(f"{path}: {key} differs from the decoder's token embeddings (xlsr ties them)")
    return fields, state


def read_generation(path: Path, hf: dict[str, Any], cfg: SpeechTranslationConfig) -> GenerationDefaults:
    """generation_config.json if the directory has one (transformers then reads nothing else), else the
    values of config.json, its top level first, then its decoder (as transformers 5 reads old directories)."""
    gen_file = path / "generation_config.json"
    if gen_file.exists():
        gen = _read_json(gen_file)
        value = gen.get
    else:
        value = lambda key: _decoder_value(hf, key)  # noqa: E731
    start = value("decoder_start_token_id")
    return GenerationDefaults(
        decoder_start_token_id=cfg.decoder_start_token_id if start is None else start,
        forced_bos_token_id=value("forced_bos_token_id"),
        max_length=value("max_length"),
        num_beams=value("num_beams") or 1,
        target_languages=_codes(value("target_languages"), gen_file if gen_file.exists() else path / "config.json"),
    )


def _codes(value: Any, where: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CheckpointError(f"{where}: target_languages must be a list of language codes, not {value!r}")
    return tuple(value)


def load_hf_st_dir(path: str | Path) -> tuple[SpeechTranslationModel, GenerationDefaults]:
    """A SpeechEncoderDecoderModel directory -> (model in float32 with `.preprocessing` and `.source` set,
    generation values). The target tokenizer is not read here (`.tokenizer` stays None).

    Weights are read once (memory-mapped where the format allows) and handed to the model as they are.
    """
    path = Path(path)
    hf = _read_json(path / "config.json")
    cfg = parse_st_config(hf)
    state: dict[str, Tensor] = {}
    raw = _read_weights(path)
    lm_head = raw.pop(LM_HEAD, None)
    for key in list(raw):
        state[map_key(key)] = raw.pop(key)
    embed = "decoder.embed_tokens.weight"
    if lm_head is not None:
        if embed not in state:
            state[embed] = lm_head
        elif not torch.equal(lm_head, state[embed]):
            raise CheckpointError(f"{path}: decoder.lm_head differs from the token embeddings (xlsr ties them)")
    try:
        model = SpeechTranslationModel.from_state_dict(cfg, state)
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not match config.json: {e}") from None
    model.preprocessing = read_preprocessing(path)
    model.source = f"Hugging Face directory {path}"
    return model, read_generation(path, hf, cfg)


def to_hf_st_config(cfg: SpeechTranslationConfig, generation: GenerationDefaults) -> dict[str, Any]:
    """SpeechTranslationConfig -> transformers' config.json."""
    if not cfg.layernorm_embedding:
        raise CheckpointError("transformers' MBart decoder always has layernorm_embedding: cannot write this model")
    if cfg.adaptor_n_layers and cfg.adaptor_kernel_size != 3:
        raise CheckpointError("transformers' Wav2Vec2Adapter matches xlsr's adapter for kernel 3 only")
    encoder = to_hf_wav2vec2_config(cfg.encoder)
    encoder.update(
        add_adapter=bool(cfg.adaptor_n_layers or cfg.adaptor_proj_dim),
        num_adapter_layers=cfg.adaptor_n_layers,
        adapter_kernel_size=cfg.adaptor_kernel_size,
        adapter_stride=cfg.adaptor_stride,
        output_hidden_size=cfg.adapter_dim,
    )
    ids = dict(pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
    decoder = {
        "architectures": ["MBartForCausalLM"],
        "model_type": "mbart",
        "is_decoder": True,
        "is_encoder_decoder": False,
        "add_cross_attention": True,
        "d_model": cfg.decoder_embed_dim,
        "decoder_layers": cfg.decoder_layers,
        "decoder_ffn_dim": cfg.decoder_ffn_embed_dim,
        "decoder_attention_heads": cfg.decoder_attention_heads,
        "activation_function": cfg.activation_fn,
        "scale_embedding": cfg.scale_embedding,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_target_positions,
        "dropout": cfg.decoder_dropout,
        "attention_dropout": cfg.decoder_attention_dropout,
        "activation_dropout": cfg.decoder_activation_dropout,
        "decoder_layerdrop": cfg.decoder_layerdrop,
        "tie_word_embeddings": True,
        "use_cache": True,
        **ids,
    }
    return {
        "architectures": ["SpeechEncoderDecoderModel"],
        "model_type": "speech-encoder-decoder",
        "is_encoder_decoder": True,
        "tie_word_embeddings": False,  # encoder and decoder share nothing (the decoder ties its own lm_head)
        "decoder_start_token_id": generation.decoder_start_token_id,
        "processor_class": PROCESSOR_CLASS,
        **ids,
        "encoder": encoder,
        "decoder": decoder,
    }


def generation_config(cfg: SpeechTranslationConfig, generation: GenerationDefaults) -> dict[str, Any]:
    """generation_config.json; `</s>` is forced at max_length, as fairseq's generator and mBART do."""
    config: dict[str, Any] = {
        "bos_token_id": cfg.bos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": generation.decoder_start_token_id,
        "forced_eos_token_id": cfg.eos_token_id,
        "num_beams": generation.num_beams,
    }
    if generation.forced_bos_token_id is not None:
        config["forced_bos_token_id"] = generation.forced_bos_token_id
    if generation.max_length is not None:
        config["max_length"] = generation.max_length
    if generation.target_languages:
        config["target_languages"] = list(generation.target_languages)
    return config


def hf_st_state_dict(model: SpeechTranslationModel) -> dict[str, Tensor]:
    """The model's weights under transformers' names (the tied lm_head is left to transformers to tie)."""
    state = {ENCODER + k: v for k, v in hf_state_dict(model.encoder).items()}
    for key, value in model.state_dict().items():
        if key.startswith(ENCODER):
            continue
        hf_key = KEYS.from_xlsr(key)
        if hf_key is None:
            raise CheckpointError(f"weight {key!r} has no transformers equivalent")
        state[hf_key] = value.detach().contiguous()
    return state


def save_hf_st_dir(
    model: SpeechTranslationModel, dst: str | Path, generation: GenerationDefaults | None = None
) -> None:
    """Writes a directory transformers' SpeechEncoderDecoderModel.from_pretrained loads, atomically, with
    the model's preprocessing and, if `model.tokenizer` has `hf_files()`, its tokenizer files."""
    cfg = model.cfg
    generation = generation or GenerationDefaults(decoder_start_token_id=cfg.decoder_start_token_id)
    config = to_hf_st_config(cfg, generation)
    state = hf_st_state_dict(model)
    with atomic_path(dst) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, content in (
            ("config.json", config),
            ("generation_config.json", generation_config(cfg, generation)),
            ("preprocessor_config.json", preprocessor_config(model.preprocessing)),
        ):
            (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        hf_files = getattr(model.tokenizer, "hf_files", None)
        for name, data in (hf_files() if hf_files is not None else {}).items():
            if isinstance(data, bytes):
                (tmp / name).write_bytes(data)
            else:
                (tmp / name).write_text(data, encoding="utf-8")
