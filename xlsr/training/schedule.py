"""Learning-rate schedules as functions of the update number (fairseq `polynomial_decay`, `tri_stage`,
`inverse_sqrt`, `fixed`). A schedule is stateless: resuming needs only the update count."""

from __future__ import annotations

import math

from ..errors import ConfigError
from .config import TrainConfig


def lr_at(update: int, cfg: TrainConfig) -> float:
    """The learning rate for `update` (0-based)."""
    if cfg.lr_scheduler == "fixed":
        return cfg.lr
    if cfg.lr_scheduler == "polynomial_decay":
        if cfg.warmup_updates > 0 and update < cfg.warmup_updates:
            return cfg.lr * (update + 1) / cfg.warmup_updates
        if update >= cfg.max_update:
            return cfg.end_learning_rate
        remaining = (cfg.max_update - update) / max(cfg.max_update - cfg.warmup_updates, 1)
        return (cfg.lr - cfg.end_learning_rate) * remaining**cfg.power + cfg.end_learning_rate
    if cfg.lr_scheduler == "inverse_sqrt":
        # fairseq inverse_sqrt (warmup_init_lr 0): linear warm-up, then lr * sqrt(warmup_updates / updates)
        step, warmup = update + 1, max(cfg.warmup_updates, 0)
        return cfg.lr * step / warmup if step < warmup else cfg.lr * math.sqrt(max(warmup, 1) / step)
    if cfg.lr_scheduler == "tri_stage":
        warmup, hold, decay = (int(r * cfg.max_update) for r in cfg.phase_ratio)
        init, final = cfg.lr * cfg.init_lr_scale, cfg.lr * cfg.final_lr_scale
        if update < warmup:
            return init + (cfg.lr - init) * update / max(warmup, 1)
        if update < warmup + hold:
            return cfg.lr
        if update < warmup + hold + decay:
            # exponential decay from lr to final over the decay phase (fairseq tri_stage)
            return cfg.lr * (final / cfg.lr) ** ((update - warmup - hold) / max(decay, 1))
        return final
    raise ConfigError(
        f"lr_scheduler must be polynomial_decay, tri_stage, inverse_sqrt or fixed, not {cfg.lr_scheduler!r}"
    )


# The options each schedule reads (the others are ignored by it).
SCHEDULE_OPTIONS = {
    "polynomial_decay": ("warmup_updates", "end_learning_rate", "power"),
    "tri_stage": ("phase_ratio", "init_lr_scale", "final_lr_scale"),
    "inverse_sqrt": ("warmup_updates",),
    "fixed": (),
}


def ignored_options(cfg: TrainConfig) -> list[str]:
    """One warning per schedule option that was changed from its default but that the chosen schedule does
    not read (say `warmup_updates` under `tri_stage`, whose warm-up is a share of max_update)."""
    defaults = type(cfg)()
    used = SCHEDULE_OPTIONS[cfg.lr_scheduler]
    out, seen = [], set()
    for schedule, options in SCHEDULE_OPTIONS.items():
        for key in options:
            value = getattr(cfg, key)
            if key in used or key in seen or value == getattr(defaults, key):
                continue
            seen.add(key)
            hint = f"it is a {schedule} option"
            if key == "warmup_updates" and cfg.lr_scheduler == "tri_stage":
                warmup = int(cfg.phase_ratio[0] * cfg.max_update)
                hint = f"tri_stage warms up for phase_ratio[0] x max_update = {warmup} updates; set phase_ratio"
            out.append(f"{key}={value} has no effect under lr_scheduler={cfg.lr_scheduler} ({hint})")
    return out
