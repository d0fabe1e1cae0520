"""Training configuration: one dataclass per task, read from YAML and `--set key=value`.

Keys are the dataclass fields, named as fairseq names the option where it has one (max_update, lr,
warmup_updates, max_tokens, max_sample_size, update_freq, clip_norm, ...). `model` holds changes to
the model's ModelConfig (for instance `model.dropout=0.0`). Every run writes its resolved config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError

Scheduler = Literal["polynomial_decay", "tri_stage", "fixed"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 on a GPU that has it, else fp32


@dataclass
class TrainConfig:
    # data (fairseq dataset / task options)
    max_tokens: int = 1_400_000  # audio samples per micro-batch and process (padded size: longest x count)
    max_sample_size: int = 320_000  # longer utterances are randomly cropped (20 s)
    min_sample_size: int = 16_000  # shorter ones are dropped, with a count in the log (1 s)
    pad: bool = False  # fairseq enable_padding: False crops a batch to its shortest utterance (no padding)
    num_workers: int = 2  # data loading processes
    # optimisation (fairseq optimization / optimizer / lr_scheduler options)
    max_update: int = 400_000
    lr: float = 5e-4
    lr_scheduler: Scheduler = "polynomial_decay"
    warmup_updates: int = 32_000  # polynomial_decay
    end_learning_rate: float = 0.0  # polynomial_decay
    power: float = 1.0  # polynomial_decay: 1 = linear decay
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)  # tri_stage: warm-up, hold, decay
    init_lr_scale: float = 0.01  # tri_stage
    final_lr_scale: float = 0.05  # tri_stage
    update_freq: int = 1  # gradient accumulation: micro-batches per update
    clip_norm: float = 0.0  # 0: no clipping (the gradient norm is still logged)
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    precision: Precision = "auto"  # fp16 with loss scaling
    checkpoint_activations: bool = False
    fsdp: bool = False  # shard the model with torch's fully_shard (1B and 2B models on several GPUs)
    # bookkeeping
    seed: int = 1
    log_interval: int = 50
    validate_interval_updates: int = 1000
    save_interval_updates: int = 1000
    keep_interval_updates: int = 2  # step checkpoints kept besides checkpoint_last and checkpoint_best
    max_nonfinite_updates: int = 20  # consecutive skipped updates before a run stops as diverged
    device: str | None = None  # default: cuda when available (under torchrun: cuda:LOCAL_RANK)
    model: dict[str, Any] = field(default_factory=dict)  # changes to the ModelConfig


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:  # a closed set of choices
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = typing.get_args(hint)
        inner = inner[:1] * len(value) if len(inner) == 2 and inner[1] is Ellipsis else inner
        if len(inner) != len(value):
            raise ConfigError(f"{key} must have {len(inner)} values, got {value!r}")
        return tuple(_coerce(v, h, key) for v, h in zip(value, inner))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # "1e-4" in a YAML file
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a {getattr(hint, '__name__', hint)}, got {value!r}")


def _read_value(raw: str) -> Any:
    """A command-line value: a number if it reads as one (YAML 1.1 reads 1e-4 as a string), else YAML."""
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    return yaml.safe_load(raw) if raw else ""


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """["lr=1e-4", "model.dropout=0.0"] -> {"lr": 0.0001, "model": {"dropout": 0.0}} (values read as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        value = _read_value(raw)
        target = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


def build_config(cls: type, path: str | Path | None = None, overrides: list[str] = (), **given: Any):
    """The dataclass `cls` from defaults, then the YAML file, then `given` (e.g. CLI flags), then `--set`."""
    values: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the config ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values")
        values.update(loaded)
    values.update({k: v for k, v in given.items() if v is not None})
    for key, value in parse_overrides(list(overrides)).items():
        if key == "model" and isinstance(value, dict):
            values["model"] = {**values.get("model", {}), **value}
        else:
            values[key] = value
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if "model" in values:
        from ..config import ModelConfig

        model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
        bad = sorted(set(values["model"]) - model_keys)
        if bad:
            raise ConfigError(f"unknown model keys: {', '.join(bad)}")
    return cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})


def to_yaml(config: Any) -> str:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return yaml.safe_dump({k: plain(v) for k, v in dataclasses.asdict(config).items()}, sort_keys=False)
