"""Original fairseq checkpoints: self-supervised `wav2vec2`, fine-tuned `wav2vec_ctc` and
`wav2vec_classification` (the `audio_classification` task: the XLS-R release's language-ID model).

Both the old style (an `args` argparse.Namespace) and the new style (a `cfg` dict, as fairseq's
hydra trainer saves it) are read, through the safe loader in `io.py`: nothing in the file runs.
Two pure pieces do the conversion: `parse_config` (the model's options -> ModelConfig) and
`map_key` (a fairseq weight name -> an xlsr one), each raising on what it does not know.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from ..config import CLASSIFIER_ACTIVATIONS, ModelConfig, Preprocessing
from ..errors import CheckpointError
from ..models import Wav2Vec2Model
from ..text.ctc_tokenizer import CTCTokenizer
from .io import FairseqDictionary, safe_torch_load
from .keys import KeyMap

CTC_PREFIX = "w2v_encoder.w2v_model."

KEYS = KeyMap(
    [
        ("feature_extractor.conv_layers.{n}.0.{w}", "feature_encoder.conv_layers.{n}.conv.{w}"),
        ("feature_extractor.conv_layers.{n}.2.1.{w}", "feature_encoder.conv_layers.{n}.norm.{w}"),  # layer norm
        ("feature_extractor.conv_layers.{n}.2.{w}", "feature_encoder.conv_layers.{n}.norm.{w}"),  # group norm
        ("layer_norm.{w}", "feature_projection.layer_norm.{w}"),
        ("post_extract_proj.{w}", "feature_projection.projection.{w}"),
        ("mask_emb", "mask_emb"),
        ("encoder.pos_conv.0.bias", "encoder.pos_conv.bias"),
        ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.weight_g"),
        ("encoder.pos_conv.0.weight_v", "encoder.pos_conv.weight_v"),
        ("encoder.layer_norm.{w}", "encoder.layer_norm.{w}"),
        ("encoder.layers.{n}.self_attn.{p}_proj.{w}", "encoder.layers.{n}.self_attn.{p}_proj.{w}"),
        ("encoder.layers.{n}.self_attn_layer_norm.{w}", "encoder.layers.{n}.self_attn_layer_norm.{w}"),
        ("encoder.layers.{n}.fc1.{w}", "encoder.layers.{n}.fc1.{w}"),
        ("encoder.layers.{n}.fc2.{w}", "encoder.layers.{n}.fc2.{w}"),
        ("encoder.layers.{n}.final_layer_norm.{w}", "encoder.layers.{n}.final_layer_norm.{w}"),
        ("quantizer.vars", "head.quantizer.codevectors"),
        ("quantizer.weight_proj.{w}", "head.quantizer.weight_proj.{w}"),
        ("project_q.{w}", "head.project_q.{w}"),
        ("final_proj.{w}", "head.final_proj.{w}"),
    ]
)
# Bookkeeping buffers some fairseq versions save beside the weights; they hold no model state.
IGNORED_SUFFIXES = (".version", "_float_tensor")

# fairseq's defaults for options an old-style `args` may lack (fairseq/models/wav2vec/wav2vec2.py).
DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
    "conv_bias": False,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "encoder_layerdrop": 0.0,
    "quantize_targets": False,
    "latent_vars": 320,
    "latent_groups": 2,
    "latent_dim": 0,
    "final_dim": 0,
    "logit_temp": 0.1,
}


# wav2vec_classification's head, fairseq `MeanPoolingFast`: linear -> masked mean -> activation -> projection
HEAD_KEYS = {
    "w2v_encoder.proj.weight": "head.proj.weight",  # wav2vec_ctc
    "w2v_encoder.proj.bias": "head.proj.bias",
    "pooling_layer.linear.weight": "head.projector.weight",
    "pooling_layer.linear.bias": "head.projector.bias",
    "pooling_layer.projection.weight": "head.classifier.weight",
    "pooling_layer.projection.bias": "head.classifier.bias",
}


def map_key(key: str) -> str:
    """A fairseq weight name (a `wav2vec2`, `wav2vec_ctc` or `wav2vec_classification` model's) -> the xlsr name."""
    if key in HEAD_KEYS:
        return HEAD_KEYS[key]
    bare = key[len(CTC_PREFIX) :] if key.startswith(CTC_PREFIX) else key
    mapped = KEYS.to_xlsr(bare)
    if mapped is None:
        raise CheckpointError(f"unknown weight {key!r}: not part of a wav2vec2 model xlsr knows")
    return mapped


def _as_dict(options: Any) -> dict[str, Any]:
    if isinstance(options, argparse.Namespace):
        return vars(options)
    if isinstance(options, dict):
        return options
    raise CheckpointError(f"unexpected fairseq options of type {type(options).__name__}")


def model_options(ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """-> (pretraining model options, fine-tuning model options or None, task options), old or new style."""
    if ckpt.get("cfg") is not None:
        cfg = _as_dict(ckpt["cfg"])
        model, task = _as_dict(cfg["model"]), _as_dict(cfg.get("task") or {})
    elif ckpt.get("args") is not None:
        model = task = _as_dict(ckpt["args"])
    else:
        raise CheckpointError("neither `cfg` nor `args`: not a fairseq checkpoint")
    name = model.get("_name") or model.get("arch", "")
    if name.startswith("wav2vec_ctc") or "w2v_args" in model or "w2v_path" in model:
        w2v = model.get("w2v_args")
        if w2v is None:
            raise CheckpointError(
                "this fine-tuned checkpoint does not embed its pretraining options (w2v_args); "
                "fairseq then reads them from w2v_path, which xlsr does not follow"
            )
        w2v = _as_dict(w2v)
        return (_as_dict(w2v["model"]) if "model" in w2v else w2v), model, task
    if name.startswith("wav2vec2") or "conv_feature_layers" in model:
        return model, None, task
    raise CheckpointError(
        f"fairseq model {name!r} is not supported; xlsr reads wav2vec2, wav2vec_ctc and wav2vec_classification"
    )


def is_classification(finetune: dict[str, Any] | None) -> bool:
    return finetune is not None and str(finetune.get("_name") or finetune.get("arch", "")).startswith(
        "wav2vec_classification"
    )


def classifier_options(finetune: dict[str, Any], encoder_dim: int) -> dict[str, Any]:
    """wav2vec_classification's head options -> ModelConfig fields. fairseq builds only `pooling="mean"`
    (`get_pooling_layer` asserts it); `latent_embed_dim` None means the encoder width."""
    pooling = finetune.get("pooling", "mean")
    if pooling != "mean":
        raise CheckpointError(f"pooling={pooling!r} is not supported (fairseq itself builds only 'mean')")
    activation = finetune.get("activation_fn") or "gelu"
    if activation not in CLASSIFIER_ACTIVATIONS:
        raise CheckpointError(
            f"head activation_fn={activation!r} is not supported ({', '.join(CLASSIFIER_ACTIVATIONS)})"
        )
    return {
        "classifier_proj_size": finetune.get("latent_embed_dim") or encoder_dim,
        "classifier_activation": activation,
    }


def parse_config(
    pretrain: dict[str, Any],
    finetune: dict[str, Any] | None = None,
    vocab_size: int = 0,
    labels: tuple[str, ...] = (),
) -> ModelConfig:
    """fairseq model options (and, for wav2vec_ctc / wav2vec_classification, the fine-tuning options) ->
    ModelConfig. `labels`: a classifier's class names, in class-index order."""
    o = {**DEFAULTS, **{k: v for k, v in pretrain.items() if v is not None}}
    unsupported = {
        "layer_type": ("transformer", None),
        "pos_conv_depth": (1, None),
        "quantize_input": (False, None),
        "target_glu": (False, None),
        "quantizer_depth": (1, None),
        "adp_num": (-1, None),
        "negatives_from_everywhere": (False, None),
    }
    for key, allowed in unsupported.items():
        if o.get(key) not in allowed:
            raise CheckpointError(f"fairseq option {key}={o[key]!r} is not supported")
    if o["activation_fn"] != "gelu":
        raise CheckpointError(f"activation_fn={o['activation_fn']!r} is not supported (only gelu)")
    layers = o["conv_feature_layers"]
    layers = parse_conv_layers(layers) if isinstance(layers, str) else layers
    embed = layers[-1][0]
    final_dim = o["final_dim"] or o["encoder_embed_dim"]
    dropouts = {k: o[k] for k in ("dropout", "attention_dropout", "activation_dropout", "dropout_input")}
    layerdrop, final_dropout = o["encoder_layerdrop"], 0.0
    head, extra = "pretraining", {}
    if finetune is not None:  # fine-tuning overrides the pretraining regularisation
        dropouts = {k: finetune.get(k, v) for k, v in dropouts.items()}
        layerdrop, final_dropout = finetune.get("layerdrop", layerdrop), finetune.get("final_dropout", 0.0)
        head = "ctc"
        if is_classification(finetune):
            head, extra = "classification", {"labels": labels, **classifier_options(finetune, o["encoder_embed_dim"])}
    return ModelConfig(
        conv_feature_layers=tuple(tuple(int(v) for v in c) for c in layers),
        extractor_mode="layer_norm" if o["extractor_mode"] == "layer_norm" else "group_norm",
        conv_bias=bool(o["conv_bias"]),
        encoder_layers=o["encoder_layers"],
        encoder_embed_dim=o["encoder_embed_dim"],
        encoder_ffn_embed_dim=o["encoder_ffn_embed_dim"],
        encoder_attention_heads=o["encoder_attention_heads"],
        layer_norm_first=bool(o["layer_norm_first"]),
        conv_pos=o["conv_pos"],
        conv_pos_groups=o["conv_pos_groups"],
        post_extract_proj=embed != o["encoder_embed_dim"],
        dropout_features=o["dropout_features"],
        encoder_layerdrop=layerdrop,
        final_dropout=final_dropout,
        quantize_targets=bool(o["quantize_targets"]),
        latent_vars=o["latent_vars"],
        latent_groups=o["latent_groups"],
        latent_dim=0 if o["latent_dim"] == final_dim else o["latent_dim"],
        final_dim=final_dim,
        logit_temp=o["logit_temp"],
        head=head,
        vocab_size=vocab_size,
        **dropouts,
        **extra,
    )


def classifier_labels(
    path: Path, ckpt: dict[str, Any], task: dict[str, Any], dict_path: str | Path | None
) -> tuple[str, ...]:
    """A wav2vec_classification model's class names, index = class id: `dict_path` when given, else the label
    Dictionary fairseq's trainer pickled into `task_state` (read as data, see io.FairseqDictionary), else
    `dict.<labels>.txt` beside the checkpoint. Label dictionaries have no special symbols
    (`Dictionary.load(..., add_special_symbols=False)`): line N is class N."""
    if dict_path is None:
        pickled = (ckpt.get("task_state") or {}).get("target_dictionary")
        if isinstance(pickled, FairseqDictionary) and pickled.symbols:
            return tuple(pickled.symbols)
    dict_path = Path(dict_path) if dict_path else path.parent / f"dict.{task.get('labels') or 'label'}.txt"
    if not dict_path.exists():
        raise CheckpointError(
            f"{path}: a wav2vec_classification checkpoint needs its label dictionary; {dict_path} does not exist "
            "(pass --dict PATH)"
        )
    try:
        lines = dict_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{dict_path}: cannot read the label dictionary ({e})") from None
    labels = tuple(line.split()[0] for line in lines if line.strip())
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise CheckpointError(f"{dict_path}: expected at least two distinct labels, one '<label> <count>' per line")
    return labels


def parse_conv_layers(text: str) -> list[tuple[int, int, int]]:
    """fairseq writes conv_feature_layers as list arithmetic, "[(512,10,5)] + [(512,3,2)] * 4 + ...":
    read it as data (never `eval`)."""
    layers: list[tuple[int, int, int]] = []
    try:
        for term in text.split("+"):
            block, _, times = term.partition("*")
            layers.extend(list(ast.literal_eval(block.strip())) * int(times or 1))
    except (ValueError, SyntaxError):
        raise CheckpointError(f"cannot read conv_feature_layers {text!r}") from None
    return layers


def load_fairseq(
    path: str | Path, dict_path: str | Path | None = None, ckpt: dict[str, Any] | None = None
) -> tuple[Wav2Vec2Model, CTCTokenizer | None, Preprocessing]:
    path = Path(path)
    ckpt = safe_torch_load(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: no `model` weights: not a fairseq checkpoint")
    pretrain, finetune, task = model_options(ckpt)
    weights = {k: v for k, v in ckpt["model"].items() if not k.endswith(IGNORED_SUFFIXES)}
    tokenizer, labels = None, ()
    if is_classification(finetune):
        labels = classifier_labels(path, ckpt, task, dict_path)
        classes = weights.get("pooling_layer.projection.weight")
        if classes is not None and classes.shape[0] != len(labels):
            raise CheckpointError(
                f"{path}: {len(labels)} labels, but the classifier has {classes.shape[0]} outputs: wrong label "
                "dictionary for this checkpoint"
            )
    elif finetune is not None:
        dict_path = Path(dict_path) if dict_path else path.parent / f"dict.{task.get('labels') or 'ltr'}.txt"
        if not dict_path.exists():
            raise CheckpointError(
                f"{path}: a wav2vec_ctc checkpoint needs its letter dictionary; {dict_path} does not exist "
                "(pass --dict PATH)"
            )
        tokenizer = CTCTokenizer.from_fairseq_dict(dict_path)
        vocab_size = weights["w2v_encoder.proj.weight"].shape[0]
        if vocab_size != len(tokenizer):
            raise CheckpointError(
                f"{dict_path} has {len(tokenizer)} symbols with fairseq's 4 specials, but the output layer has "
                f"{vocab_size}: wrong dictionary for this checkpoint"
            )
    try:
        cfg = parse_config(pretrain, finetune, len(tokenizer) if tokenizer else 0, labels)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        state = {map_key(k): v for k, v in weights.items()}
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        model = Wav2Vec2Model.from_state_dict(cfg, state)
    except ValueError as e:
        raise CheckpointError(f"{path}: weights do not match the options: {e}") from None
    # fairseq normalises with F.layer_norm over the whole waveform, whose epsilon is 1e-5
    pre = Preprocessing(do_normalize=bool(task.get("normalize", False)), normalize_eps=1e-5)
    if cfg.extractor_mode == "group_norm":
        pre = Preprocessing(do_normalize=pre.do_normalize, normalize_eps=1e-5, return_attention_mask=False)
    return model, tokenizer, pre
