"""Training configuration: one dataclass per task, read from YAML and `--set key=value`.

Keys are the dataclass fields, named as fairseq names the option where it has one (max_update, lr,
warmup_updates, max_tokens, max_sample_size, update_freq, clip_norm, ...). `model` holds changes to
the model's ModelConfig (for instance `model.dropout=0.0`). Every run writes its resolved config.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import io
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError

Scheduler = Literal["polynomial_decay", "tri_stage", "inverse_sqrt", "fixed"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 on a GPU that has it, else fp32


@dataclass
class TrainConfig:
    # data (fairseq dataset / task options)
    max_tokens: int = 1_400_000  # audio samples per micro-batch and process (padded size: longest x count)
    max_sample_size: int = 320_000  # longer utterances are randomly cropped (20 s)
    min_sample_size: int = 16_000  # utterances shorter than this are dropped, with a count in the log
    pad: bool = False  # fairseq enable_padding: False crops a batch to its shortest utterance (no padding)
    num_workers: int = 2  # data loading processes
    audio_column: str | None = None  # the data's audio column (default: path in a TSV; audio in a HF dataset)
    # optimisation (fairseq optimization / optimizer / lr_scheduler options)
    max_update: int = 400_000  # updates to train for (an update: update_freq micro-batches)
    lr: float = 5e-4  # peak learning rate
    lr_scheduler: Scheduler = "polynomial_decay"  # polynomial_decay, tri_stage, inverse_sqrt or fixed
    warmup_updates: int = 32_000  # polynomial_decay, inverse_sqrt
    end_learning_rate: float = 0.0  # polynomial_decay
    power: float = 1.0  # polynomial_decay: 1 = linear decay
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)  # tri_stage: warm-up, hold, decay
    init_lr_scale: float = 0.01  # tri_stage
    final_lr_scale: float = 0.05  # tri_stage
    update_freq: int = 1  # gradient accumulation: micro-batches per update
    clip_norm: float = 0.0  # 0: no clipping (the gradient norm is still logged)
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.98)  # AdamW
    adam_eps: float = 1e-6  # AdamW
    precision: Precision = "auto"  # auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16 (loss scaling)
    checkpoint_activations: bool = False  # recompute activations in the backward pass: less memory, slower
    fsdp: bool = False  # shard the model with torch's fully_shard (1B and 2B models on several GPUs)
    # bookkeeping
    seed: int = 1  # initial weights, data order, masks, crops: a run is fixed by its seed
    log_interval: int = 50  # updates between training log lines (and the first update)
    validate_interval_updates: int = 1000  # updates between validations
    save_interval_updates: int = 1000  # updates between checkpoints (checkpoint_<update>.pt)
    keep_interval_updates: int = 2  # step checkpoints kept besides checkpoint_last and checkpoint_best
    max_nonfinite_updates: int = 20  # consecutive skipped updates before a run stops as diverged
    max_bad_samples: int = 10  # audio files that fail to decode during training, skipped, before the run stops
    patience: int = 0  # stop after this many validations without a better best metric (0: never)
    device: str | None = None  # default: cuda when available (under torchrun: cuda:LOCAL_RANK)
    threads: int | None = None  # CPU threads of each process (default: PyTorch's choice)
    model: dict[str, Any] = field(default_factory=dict)  # changes to the ModelConfig

    def check(self) -> None:
        """Refuses, in one line, a configuration that cannot do what it says (before anything is built).
        Subclasses add their own rules."""
        if self.update_freq < 1 or self.max_update < 0:
            raise ConfigError("update_freq must be >= 1 and max_update >= 0")
        for key in ("log_interval", "validate_interval_updates", "save_interval_updates"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.max_bad_samples < 0:
            raise ConfigError(f"max_bad_samples must be >= 0, got {self.max_bad_samples}")


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
    _refuse_unknown("config", set(values), [f.name for f in dataclasses.fields(cls)])
    if isinstance(values.get("model"), dict):
        from ..config import ModelConfig

        _refuse_unknown("model", set(values["model"]), [f.name for f in dataclasses.fields(ModelConfig)], "model.")
    return cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})


def _refuse_unknown(kind: str, given: set[str], known: list[str], prefix: str = "") -> None:
    """One line naming the unknown keys, each with its likeliest meaning, then every valid key, the closest
    to what was typed first."""
    unknown = sorted(given - set(known))
    if not unknown:
        return
    guesses = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        guesses.append(f"{key} (did you mean {prefix}{close[0]}?)" if close else key)

    def closeness(k: str) -> float:
        return max(difflib.SequenceMatcher(None, u, k).ratio() for u in unknown)

    ranked = sorted(known, key=lambda k: (-closeness(k), k))
    raise ConfigError(
        f"unknown {kind} keys: {', '.join(guesses)}; valid keys, closest first: "
        f"{', '.join(prefix + k for k in ranked)} (--print-config shows them all with their defaults)"
    )


def _plain(v: Any) -> Any:
    """Tuples -> lists, recursively: what YAML writes as plain sequences."""
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def to_yaml(config: Any) -> str:
    return yaml.safe_dump({k: _plain(v) for k, v in dataclasses.asdict(config).items()}, sort_keys=False)


# The configuration class of each training command, imported when asked for (`describe_config`).
TASK_CONFIGS = {
    "pretrain": ("xlsr.pretraining.task", "PretrainConfig"),
    "ctc": ("xlsr.finetuning.ctc", "CTCConfig"),
    "classify": ("xlsr.finetuning.classify", "ClassifyConfig"),
    "st": ("xlsr.finetuning.st", "STConfig"),
}


def field_help(cls: type) -> dict[str, str]:
    """Field -> the comment on its line in the class body (the most derived class that has one)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments = {
            tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT and not tok.string.lstrip("# ").startswith(("fmt:", "noqa"))
        }
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text = comments.get(node.end_lineno) or comments.get(node.lineno)
                if text:
                    found[node.target.id] = text
    return found


def _yaml_line(key: str, value: Any, help_text: str | None, indent: str = "") -> str:
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()
    line = f"{indent}{key}: {text}"
    return f"{line}  # {help_text}" if help_text else line


def describe_config(task: str) -> str:
    """Every configuration key of a training command (`pretrain`, `ctc`, `classify`, `st`; "finetune ctc" works too)
    with its default and a one-line help, as YAML that `--config` reads back (`--print-config` prints it).
    The ModelConfig keys (`--set model.KEY=VALUE`) follow as comments, with the xlsr-300m preset's values."""
    from ..config import ModelConfig, preset

    name = task.removeprefix("finetune").strip()
    if name not in TASK_CONFIGS:
        raise ConfigError(f"unknown training task {task!r}; choose one of {', '.join(TASK_CONFIGS)}")
    module, cls_name = TASK_CONFIGS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    defaults, notes = cls(), field_help(cls)
    lines = [f"# xlsr {'pretrain' if name == 'pretrain' else 'finetune ' + name}: configuration keys and defaults"]
    lines += [_yaml_line(f.name, getattr(defaults, f.name), notes.get(f.name)) for f in dataclasses.fields(cls)]
    model_notes, model_defaults = field_help(ModelConfig), preset("xlsr-300m")
    lines.append("# model keys (--set model.KEY=VALUE, or under `model:` here); the xlsr-300m values:")
    for f in dataclasses.fields(ModelConfig):
        lines.append(_yaml_line(f.name, getattr(model_defaults, f.name), model_notes.get(f.name), "#   "))
    return "\n".join(lines) + "\n"
