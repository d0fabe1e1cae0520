"""Hugging Face model directories: read and write what transformers' `Wav2Vec2*` classes load.

A directory holds config.json, model.safetensors (or pytorch_model.bin, possibly sharded), and for
CTC models vocab.json + tokenizer_config.json; preprocessor_config.json describes the input
normalisation. Two pure pieces do the conversion: `parse_config` (config.json -> ModelConfig) and
`map_key` (a transformers weight name -> an xlsr one), each raising on what it does not know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..config import ModelConfig, Preprocessing
from ..errors import CheckpointError
from ..models import Wav2Vec2Model
from ..text.ctc_tokenizer import CTCTokenizer
from .io import atomic_path, safe_torch_load
from .keys import KeyMap

ARCHITECTURES = {
    "Wav2Vec2Model": "none",
    "Wav2Vec2ForPreTraining": "pretraining",
    "Wav2Vec2ForCTC": "ctc",
    "Wav2Vec2ForSequenceClassification": "classification",
}
HEAD_ARCHITECTURE = {head: arch for arch, head in ARCHITECTURES.items()}
BASE_PREFIX = "wav2vec2."  # transformers' prefix for the encoder inside a model with a head

KEYS = KeyMap(
    [
        ("feature_extractor.conv_layers.{n}.conv.{w}", "feature_encoder.conv_layers.{n}.conv.{w}"),
        ("feature_extractor.conv_layers.{n}.layer_norm.{w}", "feature_encoder.conv_layers.{n}.norm.{w}"),
        ("feature_projection.layer_norm.{w}", "feature_projection.layer_norm.{w}"),
        ("feature_projection.projection.{w}", "feature_projection.projection.{w}"),
        ("masked_spec_embed", "mask_emb"),
        ("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.bias"),
        ("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.weight_g"),
        ("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.weight_v"),
        ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv.weight_g"),  # transformers < 4.33 (read only)
        ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv.weight_v"),
        ("encoder.layer_norm.{w}", "encoder.layer_norm.{w}"),
        ("encoder.layers.{n}.attention.{p}_proj.{w}", "encoder.layers.{n}.self_attn.{p}_proj.{w}"),
        ("encoder.layers.{n}.layer_norm.{w}", "encoder.layers.{n}.self_attn_layer_norm.{w}"),
        ("encoder.layers.{n}.feed_forward.intermediate_dense.{w}", "encoder.layers.{n}.fc1.{w}"),
        ("encoder.layers.{n}.feed_forward.output_dense.{w}", "encoder.layers.{n}.fc2.{w}"),
        ("encoder.layers.{n}.final_layer_norm.{w}", "encoder.layers.{n}.final_layer_norm.{w}"),
        # heads: outside the `wav2vec2.` prefix
        ("quantizer.codevectors", "head.quantizer.codevectors"),
        ("quantizer.weight_proj.{w}", "head.quantizer.weight_proj.{w}"),
        ("project_q.{w}", "head.project_q.{w}"),
        ("project_hid.{w}", "head.final_proj.{w}"),
        ("lm_head.{w}", "head.proj.{w}"),
        ("projector.{w}", "head.projector.{w}"),
        ("classifier.{w}", "head.classifier.{w}"),
        ("layer_weights", "head.layer_weights"),
    ]
)


def map_key(key: str) -> str:
    """A transformers weight name (with or without the `wav2vec2.` prefix) -> the xlsr name."""
    bare = key[len(BASE_PREFIX) :] if key.startswith(BASE_PREFIX) else key
    mapped = KEYS.to_xlsr(bare)
    if mapped is None:
        raise CheckpointError(f"unknown weight {key!r}: not part of a Wav2Vec2 model xlsr knows")
    return mapped


def to_hf_key(key: str, head: str) -> str:
    hf = KEYS.from_xlsr(key)
    if hf is None:
        raise CheckpointError(f"weight {key!r} has no transformers equivalent")
    return hf if key.startswith("head.") or head == "none" else BASE_PREFIX + hf


def _head_of(hf: dict[str, Any]) -> str:
    archs = hf.get("architectures") or ["Wav2Vec2Model"]
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    raise CheckpointError(f"architecture {archs[0]} is not supported; xlsr reads {', '.join(ARCHITECTURES)}")


def parse_config(hf: dict[str, Any]) -> ModelConfig:
    """transformers' Wav2Vec2Config (config.json as a dict) -> ModelConfig."""
    if hf.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(f"model_type {hf.get('model_type')!r} is not wav2vec2")
    if hf.get("add_adapter") or hf.get("adapter_attn_dim") is not None:
        raise CheckpointError("Wav2Vec2 adapters (add_adapter / adapter_attn_dim, as in MMS) are not supported")
    for key in ("hidden_act", "feat_extract_activation"):
        if hf.get(key, "gelu") != "gelu":
            raise CheckpointError(f"{key}={hf[key]!r} is not supported (only gelu)")
    head = _head_of(hf)
    labels: tuple[str, ...] = ()
    if head == "classification":
        id2label = hf.get("id2label") or {}
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    try:
        return ModelConfig(
            conv_feature_layers=tuple(zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], strict=True)),
            extractor_mode="layer_norm" if hf.get("feat_extract_norm", "group") == "layer" else "group_norm",
            conv_bias=bool(hf.get("conv_bias", False)),
            encoder_layers=hf["num_hidden_layers"],
            encoder_embed_dim=hf["hidden_size"],
            encoder_ffn_embed_dim=hf["intermediate_size"],
            encoder_attention_heads=hf["num_attention_heads"],
            layer_norm_first=bool(hf.get("do_stable_layer_norm", False)),
            conv_pos=hf.get("num_conv_pos_embeddings", 128),
            conv_pos_groups=hf.get("num_conv_pos_embedding_groups", 16),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
            dropout=hf.get("hidden_dropout", 0.1),
            attention_dropout=hf.get("attention_dropout", 0.1),
            activation_dropout=hf.get("activation_dropout", 0.1),
            dropout_input=hf.get("feat_proj_dropout", 0.0),
            dropout_features=hf.get("feat_quantizer_dropout", 0.0),
            encoder_layerdrop=hf.get("layerdrop", 0.1),
            final_dropout=hf.get("final_dropout", 0.1),
            latent_vars=hf.get("num_codevectors_per_group", 320),
            latent_groups=hf.get("num_codevector_groups", 2),
            # 0 means "same as final_dim", fairseq's convention, so each config has one spelling
            latent_dim=0
            if hf.get("codevector_dim", 256) == hf.get("proj_codevector_dim", 256)
            else hf["codevector_dim"],
            final_dim=hf.get("proj_codevector_dim", 256),
            logit_temp=hf.get("contrastive_logits_temperature", 0.1),
            head=head,
            vocab_size=hf.get("vocab_size", 0) if head == "ctc" else 0,
            labels=labels,
            classifier_proj_size=hf.get("classifier_proj_size", 256),
            use_weighted_layer_sum=bool(hf.get("use_weighted_layer_sum", False)) and head == "classification",
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks {e.args[0]!r}") from None


def to_hf_config(cfg: ModelConfig, tokenizer: CTCTokenizer | None = None, **extra: Any) -> dict[str, Any]:
    """ModelConfig -> transformers' config.json. `extra` sets training options transformers keeps there
    (mask_time_prob, ctc_zero_infinity, ...)."""
    conv_dim, conv_kernel, conv_stride = (list(x) for x in zip(*cfg.conv_feature_layers, strict=True))
    hf: dict[str, Any] = {
        "architectures": [HEAD_ARCHITECTURE[cfg.head]],
        "model_type": "wav2vec2",
        "conv_dim": conv_dim,
        "conv_kernel": conv_kernel,
        "conv_stride": conv_stride,
        "num_feat_extract_layers": len(conv_dim),
        "feat_extract_norm": "layer" if cfg.extractor_mode == "layer_norm" else "group",
        "feat_extract_activation": "gelu",
        "conv_bias": cfg.conv_bias,
        "num_hidden_layers": cfg.encoder_layers,
        "hidden_size": cfg.encoder_embed_dim,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "num_attention_heads": cfg.encoder_attention_heads,
        "hidden_act": cfg.activation_fn,
        "do_stable_layer_norm": cfg.layer_norm_first,
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "feat_proj_dropout": cfg.dropout_input,
        "feat_quantizer_dropout": cfg.dropout_features,
        "layerdrop": cfg.encoder_layerdrop,
        "final_dropout": cfg.final_dropout,
        "num_codevectors_per_group": cfg.latent_vars,
        "num_codevector_groups": cfg.latent_groups,
        "codevector_dim": cfg.codevector_dim,
        "proj_codevector_dim": cfg.final_dim,
        "contrastive_logits_temperature": cfg.logit_temp,
        "classifier_proj_size": cfg.classifier_proj_size,
        "use_weighted_layer_sum": cfg.use_weighted_layer_sum,
        "apply_spec_augment": True,
        "mask_time_prob": 0.05,  # transformers keeps `masked_spec_embed` only when a mask probability is > 0
        "add_adapter": False,
    }
    if cfg.head == "ctc":
        hf["vocab_size"] = cfg.vocab_size
        if tokenizer is not None:
            hf["pad_token_id"] = tokenizer.blank_id
            for name in ("bos", "eos"):
                token = getattr(tokenizer, f"{name}_token")
                if token in tokenizer.index:
                    hf[f"{name}_token_id"] = tokenizer.index[token]
    if cfg.head == "classification":
        hf["id2label"] = {str(i): label for i, label in enumerate(cfg.labels)}
        hf["label2id"] = {label: i for i, label in enumerate(cfg.labels)}
        hf["num_labels"] = len(cfg.labels)
    hf.update(extra)
    return hf


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None


def _read_weights(path: Path) -> dict[str, Tensor]:
    for name, reader in (("model.safetensors", load_file), ("pytorch_model.bin", safe_torch_load)):
        if (path / name).exists():
            try:
                return dict(reader(path / name))
            except CheckpointError:
                raise
            except Exception as e:  # safetensors raises its own error types on corrupt files
                raise CheckpointError(f"{path / name}: cannot read the weights ({e})") from None
        index = path / f"{name}.index.json"
        if index.exists():
            state: dict[str, Tensor] = {}
            for shard in sorted(set(_read_json(index)["weight_map"].values())):
                state.update(reader(path / shard))
            return state
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")


def read_preprocessing(path: Path) -> Preprocessing:
    """preprocessor_config.json (or transformers 5's processor_config.json) -> Preprocessing."""
    if (path / "preprocessor_config.json").exists():
        fe = _read_json(path / "preprocessor_config.json")
    elif (path / "processor_config.json").exists():
        fe = _read_json(path / "processor_config.json").get("feature_extractor", {})
    else:
        fe = {}
    return Preprocessing(
        sample_rate=fe.get("sampling_rate", 16000),
        do_normalize=fe.get("do_normalize", True),
        normalize_eps=fe.get("normalize_eps", 1e-7),
        return_attention_mask=fe.get("return_attention_mask", True),
    )


def load_hf_dir(path: str | Path) -> tuple[Wav2Vec2Model, CTCTokenizer | None, Preprocessing]:
    path = Path(path)
    hf = _read_json(path / "config.json")
    cfg = parse_config(hf)
    state = {map_key(k): v for k, v in _read_weights(path).items()}
    try:
        model = Wav2Vec2Model.from_state_dict(cfg, state)
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not match config.json: {e}") from None
    tokenizer = CTCTokenizer.from_hf_dir(path) if cfg.head == "ctc" and (path / "vocab.json").exists() else None
    return model, tokenizer, read_preprocessing(path)


def preprocessor_config(pre: Preprocessing) -> dict[str, Any]:
    config = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "processor_class": "Wav2Vec2Processor",
        "feature_size": 1,
        "sampling_rate": pre.sample_rate,
        "padding_side": "right",
        "padding_value": 0.0,
        "do_normalize": pre.do_normalize,
        "return_attention_mask": pre.return_attention_mask,
    }
    if pre.normalize_eps != 1e-7:
        config["normalize_eps"] = pre.normalize_eps  # xlsr's own key: transformers always uses 1e-7
    return config


def hf_state_dict(model: Wav2Vec2Model) -> dict[str, Tensor]:
    """The model's weights under transformers' names (an identity projection where fairseq had none)."""
    cfg = model.cfg
    if cfg.head == "pretraining" and not cfg.quantize_targets:
        raise CheckpointError(
            "this pretraining model has no quantizer (fairseq quantize_targets=False), which transformers' "
            "Wav2Vec2ForPreTraining cannot hold; convert with --encoder-only to write the encoder alone"
        )
    state = {to_hf_key(k, cfg.head): v.detach().contiguous() for k, v in model.state_dict().items()}
    if not cfg.post_extract_proj:
        prefix = "" if cfg.head == "none" else BASE_PREFIX
        D = cfg.encoder_embed_dim
        state[prefix + "feature_projection.projection.weight"] = torch.eye(D, dtype=model.mask_emb.dtype)
        state[prefix + "feature_projection.projection.bias"] = torch.zeros(D, dtype=model.mask_emb.dtype)
    return state


def save_hf_dir(
    model: Wav2Vec2Model,
    path: str | Path,
    tokenizer: CTCTokenizer | None = None,
    preprocessing: Preprocessing = Preprocessing(),
    **config_extra: Any,
) -> None:
    """Writes a directory transformers' `from_pretrained` (and for CTC `AutoProcessor`) loads; atomically."""
    state = hf_state_dict(model)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        hf = to_hf_config(model.cfg, tokenizer, **config_extra)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(preprocessing), indent=2))
        if tokenizer is not None:
            for name, text in tokenizer.hf_files().items():
                (tmp / name).write_text(text, encoding="utf-8")
