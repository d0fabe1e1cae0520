"""The training loop shared by pretraining, CTC fine-tuning and classification.

A `Task` says what to build, how to batch and what the loss is; the `Trainer` does the rest, in
named stages: `build`, `resume`, `train_step`, `evaluate`, `save`, `run`.

- Gradients are normalised as fairseq does: the loss of every micro-batch is summed over its units
  (masked frames, target tokens, utterances) and divided by the units of the whole update, over all
  micro-batches (`update_freq`) and all processes, so 2 processes x 1 micro-batch train the same model as
  1 process x 2 micro-batches.
- A non-finite loss or gradient skips the update (counted); `max_nonfinite_updates` in a row stop the run.
- An audio file that cannot be decoded is left out of its batch, named once in the log and counted; more
  than `max_bad_samples` of them stop the run.
- Checkpoints (`state.py`) are written atomically: `checkpoint_last.pt` (always), `checkpoint_<update>.pt`
  (the last `keep_interval_updates`), `checkpoint_best.pt`. Re-running the same command resumes from
  `checkpoint_last.pt` exactly: model, optimizer, loss scaler, every process's RNG state and data position,
  update count (masks, negatives, crops and Gumbel noise derive from the seed and the data position).
- Nothing here knows the model class: a task builds it; the trainer needs `cfg` (with `to_dict`),
  `from_state_dict`, `set_gradient_checkpointing` and `num_parameters`, and shards `fsdp_units()` if it has them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoints import checkpoint_dict
from ..checkpoints.io import atomic_write_text
from ..data.dataset import ReadableOnly
from ..data.manifest import Columns, Utterance
from ..data.sources import log_bad_rows, read_source
from ..errors import ConfigError, XlsrError
from ..runtime import progress, set_threads
from . import state as ckpt
from .config import TrainConfig, to_yaml
from .distributed import World, all_reduce_sum, finish_world, init_world, wrap
from .logging import MetricsLogger, log, setup_console_logging
from .schedule import ignored_options, lr_at

CHECKPOINTS = ckpt.CHECKPOINTS


@dataclass
class StepOutput:
    loss: Tensor  # () summed over the batch's units; the trainer divides by the update's units
    stats: dict[str, float] = field(default_factory=dict)  # sums over units, added up across batches and processes


class Task:
    """What a training run needs to know. Subclasses: PretrainTask, CTCTask, ClassificationTask."""

    name = "task"
    best_metric = "loss"  # from `summarize`; lower is better unless `maximize`
    maximize = False
    may_skip_parameters = False  # some parameters may get no gradient in a step (layer drop): DDP's find_unused

    def __init__(self, cfg: TrainConfig, train: str | Path, valid: str | Path | None):
        self.cfg, self.train_manifest, self.valid_manifest = cfg, train, valid
        self.dropped: dict[str, dict[str, int]] = {}  # split -> reason -> utterances left out (for the log)
        self.bad_rows: dict[str, int] = {}  # split -> rows of the data source left out, each named in the log
        self._utterances: dict[str, list[Utterance]] = {}

    def columns(self) -> Columns:
        """The data's columns the task reads, and what a row needs (CTC: text; classification: a label)."""
        return Columns(audio=self.cfg.audio_column)

    def utterances(self, split: str) -> list[Utterance]:
        """The utterances of the `train` or `valid` data source (`data/sources.py`), read once: a bad row is
        named in the log, left out and counted."""
        if split not in self._utterances:
            rows = read_source(self.train_manifest if split == "train" else self.valid_manifest, self.columns(), split)
            log_bad_rows(rows, log, split)
            self.bad_rows[split] = len(rows.bad)
            self._utterances[split] = rows.utterances
            log.info("%s: %s, %d utterances", split, rows.origin, len(rows.utterances))
        return self._utterances[split]

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def datasets(self, model: torch.nn.Module, world: World):
        """-> (train dataset, train sampler, valid dataset or None, valid sampler or None)."""
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        """Items -> a batch dict with at least `sample_size` (units) and `audio_seconds`."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: dict, update: int) -> StepOutput:
        raise NotImplementedError

    def before_update(self, model: torch.nn.Module, update: int) -> None:
        """Schedules that depend on the update (Gumbel temperature, freezing)."""

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        """Summed stats -> the metrics to log."""
        return {"loss": stats["loss"] / max(stats["sample_size"], 1)}

    def check(self, metrics: dict[str, float], update: int) -> None:
        """Warnings about a run's health (codebook collapse, blank-only output)."""

    def on_best(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Called on the main process when validation finds a new best model."""

    def describe_data(self, train_set, valid_set) -> None:
        """Logs what was dropped and why (`self.dropped`); an empty split is an error."""
        for name, ds in (("train", train_set), ("valid", valid_set)):
            if ds is None:
                continue
            for reason, n in self.dropped.get(name, {}).items():
                if n:
                    log.warning("%s: %d utterances dropped: %s", name, n, reason)
            if self.bad_rows.get(name):
                log.warning("%s: %d bad rows skipped (each named above)", name, self.bad_rows[name])
            if not len(ds):
                raise ConfigError(f"the {name} manifest has no usable utterance")


class _Step(torch.nn.Module):
    """The task's loss as a module's forward, so that DDP / FSDP see every training step go through them."""

    def __init__(self, task: Task, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: dict, update: int) -> tuple[Tensor, dict[str, float]]:
        out = self.task.forward(self.model, batch, update)
        return out.loss, out.stats


class Trainer:
    def __init__(self, task: Task, out_dir: str | Path, quiet: bool = False):
        self.task, self.cfg = task, task.cfg
        self.out_dir = Path(out_dir)
        self.quiet = quiet
        self.update, self.epoch, self.position = 0, 0, 0
        self.best: float | None = None
        self.stale = 0  # validations since the best one (early stopping: `patience`)
        self.nonfinite_total = self.nonfinite_run = 0
        self.unreadable: set[str] = set()  # audio files this process could not decode (each named once)
        self.unreadable_total = 0  # over all processes
        self.elapsed = 0.0
        self.resumed = False  # whether `resume` found a checkpoint
        self.window: dict[str, float] = defaultdict(float)  # stats since the last log line

    # -- build ----------------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        cfg.check()  # before anything is loaded
        set_threads(cfg.threads)
        self.world = world = init_world(cfg.device)
        setup_console_logging(self.quiet or not world.is_main)
        for warning in ignored_options(cfg):
            log.warning(warning)
        self.precision = self._precision()
        torch.manual_seed(cfg.seed)  # the same initial weights on every process (fully_shard does not broadcast)
        self.model = self.task.build_model().to(world.device)
        torch.manual_seed(cfg.seed + world.rank)  # but each process its own masks, negatives and dropout
        self.model.set_gradient_checkpointing(cfg.checkpoint_activations)
        self.train_set, self.sampler, self.valid_set, self.valid_sampler = self.task.datasets(self.model, world)
        self.task.describe_data(self.train_set, self.valid_set)
        self.collate = ReadableOnly(self.task.collate)
        self.scaler = torch.amp.GradScaler(world.device.type) if self.precision == "fp16" else None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.logger = MetricsLogger(self.out_dir, enabled=world.is_main)

    def _precision(self) -> str:
        p, dev = self.cfg.precision, self.world.device
        if p == "auto":
            return "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        if p == "fp16" and dev.type != "cuda":
            raise ConfigError("fp16 training needs a GPU; on the CPU use bf16 or fp32")
        return p

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.world.device.type, dtype=dtype)

    @property
    def sharded(self) -> bool:
        return self.cfg.fsdp and self.world.distributed

    def wrap(self) -> None:
        """The step module, under DDP or FSDP, and AdamW over its parameters (fully_shard replaces them)."""
        cfg = self.cfg
        self.step = wrap(_Step(self.task, self.model), self.world, cfg.fsdp, find_unused=self._find_unused(),
                         bf16=self.precision == "bf16")  # fmt: skip
        params = [p for p in self.step.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)  # fmt: skip

    def _find_unused(self) -> bool:
        frozen = any(not p.requires_grad for p in self.model.parameters())
        return frozen or self.task.may_skip_parameters

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / ckpt.CHECKPOINTS

    def save(self, names: list[str]) -> dict[str, Tensor]:
        """Writes the training state under each of `names` (every process takes part; the main one writes).
        Returns the whole model's weights (on the main process)."""
        model_state = ckpt.model_state(self.step, self.model, self.sharded)
        optim_state = ckpt.optimizer_state(self.step, self.optimizer, self.sharded)
        mine = {"rng": ckpt.rng_state(), "epoch": self.epoch, "position": self.position, "unreadable": self.unreadable}
        every = ckpt.gather(mine, self.world)
        if not self.world.is_main:
            return model_state
        state = checkpoint_dict(self.model)
        state["model"] = model_state
        state.update(
            task=self.task.name,
            train_config=asdict(self.cfg),
            update=self.update,
            epoch=self.epoch,
            position=self.position,
            optimizer=optim_state,
            world_size=self.world.size,
            rng=[p["rng"] for p in every],
            data=[{"epoch": p["epoch"], "position": p["position"]} for p in every],
            scaler=self.scaler.state_dict() if self.scaler else None,
            best=self.best,
            stale=self.stale,
            elapsed=self.elapsed,
            nonfinite_total=self.nonfinite_total,
            unreadable=sorted(set().union(*(p["unreadable"] for p in every))),
        )
        ckpt.write_checkpoint(self.checkpoint_dir, names, state, self.cfg.keep_interval_updates)
        return model_state

    def resume(self) -> None:
        """Restores checkpoint_last.pt, if this output directory has one: the model (before it is wrapped),
        the counters, loss scaler, RNG state and data position, then (after `wrap`) the optimizer."""
        path = self.checkpoint_dir / ckpt.LAST
        state = ckpt.read_checkpoint(path, self.task.name, self.model.cfg.to_dict(), self.out_dir)
        self.resumed = state is not None
        if not self.resumed:
            self.wrap()
            return
        self.model.load_state_dict(state["model"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.update, self.epoch, self.position = state["update"], state["epoch"], state["position"]
        self.best, self.elapsed, self.stale = state["best"], state["elapsed"], state.get("stale", 0)
        self.nonfinite_total = state["nonfinite_total"]
        self.unreadable = set(state.get("unreadable", ()))
        self.unreadable_total = len(self.unreadable)
        rank = self.world.rank
        if state["world_size"] == self.world.size:
            ckpt.set_rng_state(state["rng"][rank])
            if state.get("data"):  # processes that skipped unreadable batches are at their own positions
                self.epoch, self.position = state["data"][rank]["epoch"], state["data"][rank]["position"]
        else:
            log.warning("resuming with %d processes instead of %d: random streams restart", self.world.size,
                        state["world_size"])  # fmt: skip
        self.wrap()
        ckpt.load_optimizer_state(self.step, self.optimizer, state["optimizer"], self.sharded)
        self.logger.truncate(self.update)
        log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.update, self.epoch, self.position)

    # -- data -----------------------------------------------------------------------------------
    def batches(self) -> Iterator[dict]:
        """Training batches forever, epoch after epoch, starting at the saved data position."""
        while True:
            batches, shares = self.sampler.epoch(self.epoch)
            if not batches:
                raise XlsrError("no training batch: the training manifest is empty after filtering")
            if shares and self.position == 0:
                share_text = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(shares.items()))
                log.info("epoch %d language shares of the audio: %s", self.epoch + 1, share_text)
                self.logger.write("languages", self.update, {"epoch": self.epoch + 1, **shares})
            loader = torch.utils.data.DataLoader(
                self.train_set,
                batch_sampler=batches[self.position :],
                collate_fn=self.collate,
                num_workers=self.cfg.num_workers,
                persistent_workers=False,
                generator=self._loader_generator(),
            )
            for batch in loader:
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    def micro_batches(self, batches: Iterator[dict]) -> tuple[list[dict], int]:
        """The next update's `update_freq` batches, and how many audio files this process newly found
        unreadable on the way (a batch of unreadable files only is passed over)."""
        out, new = [], 0
        while len(out) < self.cfg.update_freq:
            batch = next(batches)
            new += self._note_unreadable(batch)
            if not batch.get("empty"):
                out.append(batch)
        return out, new

    def _note_unreadable(self, batch: dict) -> int:
        new = 0
        for path, error in batch["unreadable"]:
            if path not in self.unreadable:
                self.unreadable.add(path)
                new += 1
                log.warning("skipped an audio file that cannot be read: %s", error)
        return new

    def _count_unreadable(self, new: float) -> None:
        """Adds the files all processes newly found unreadable; past `max_bad_samples` the run stops."""
        self.unreadable_total += int(new)
        if self.unreadable_total > self.cfg.max_bad_samples:
            raise XlsrError(
                f"{self.unreadable_total} audio files could not be read (more than max_bad_samples="
                f"{self.cfg.max_bad_samples}; each is named in the log above): fix or remove them from the manifest "
                "(without a samples column every file is checked before training starts), or raise max_bad_samples"
            )

    # -- one update -----------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict], unreadable: int = 0) -> None:
        cfg, world = self.cfg, self.world
        self.task.before_update(self.model, self.update)
        lr = lr_at(self.update, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        units, new_unreadable = all_reduce_sum([sum(b["sample_size"] for b in micro_batches), unreadable], world)
        self._count_unreadable(new_unreadable)
        local_nonfinite = 0.0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with self._sync(last):  # the backward pass too: that is where DDP exchanges gradients
                with self.autocast():
                    loss, stats = self.step(batch, self.update)
                    loss = loss * world.size / max(units, 1.0)
                if not bool(torch.isfinite(loss)):
                    local_nonfinite = 1.0
                (self.scaler.scale(loss) if self.scaler else loss).backward()  # every process must take part
            for k, v in stats.items():
                self.window[k] += v
            self.window["audio_seconds"] += batch["audio_seconds"]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.step.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm if cfg.clip_norm > 0 else math.inf))
        nonfinite = all_reduce_sum([local_nonfinite], world)[0] > 0 or not math.isfinite(grad_norm)
        if nonfinite:
            self._skip_update()
        else:
            self.nonfinite_run = 0
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.window["grad_norm"] += grad_norm
            self.window["updates_ok"] += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.window["lr"] = lr
        self.update += 1

    def _skip_update(self) -> None:
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        if self.scaler:
            self.scaler.update()  # lowers the loss scale
        if self.nonfinite_run > self.cfg.max_nonfinite_updates:
            raise XlsrError(
                f"training diverged: {self.nonfinite_run} updates in a row had a non-finite loss or gradient "
                f"(update {self.update}); lower lr, raise warmup_updates, set clip_norm, or use fp32/bf16"
            )

    def _sync(self, last: bool):
        """Gradients are exchanged only after the last micro-batch of an update."""
        if last or not self.world.distributed:
            return contextlib.nullcontext()
        if self.cfg.fsdp:
            self.step.set_requires_gradient_sync(False)
            return _ReenableSync(self.step)
        return self.step.no_sync()

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        if self.valid_set is None:
            return None
        self.model.eval()
        totals: dict[str, float] = defaultdict(float)
        batches = list(self.valid_sampler)
        loader = torch.utils.data.DataLoader(
            self.valid_set,
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
            generator=self._loader_generator(),
        )
        new_unreadable = 0
        bar = progress(len(batches), "valid", "batch", self.quiet or not self.world.is_main)
        for batch in loader:
            bar.update(1)
            new_unreadable += self._note_unreadable(batch)
            empty = float(bool(batch.get("empty")))
            if self.world.distributed:  # every process runs the same forwards (FSDP gathers weights in each)
                empty = all_reduce_sum([empty], self.world)[0]
            if empty:
                continue
            with self.autocast():
                _, stats = self.step(batch, -1)
            for k, v in stats.items():
                totals[k] += v
        bar.close()
        self.model.train()
        keys = sorted(totals)
        *sums, new_unreadable = all_reduce_sum([*(totals[k] for k in keys), new_unreadable], self.world)
        self._count_unreadable(new_unreadable)
        summed = dict(zip(keys, sums))
        if not summed:
            return None
        return self.task.summarize(summed)

    # -- the loop -------------------------------------------------------------------------------
    def _train_metrics(self, started: float, at_start: float) -> dict[str, float]:
        keys = sorted(k for k in self.window if k not in ("lr",))
        sums = dict(zip(keys, all_reduce_sum([self.window[k] for k in keys], self.world)))
        metrics = self.task.summarize(sums)
        ok = max(self.window.get("updates_ok", 0.0), 1.0)
        now = time.perf_counter()
        metrics.update(
            lr=self.window["lr"],
            grad_norm=self.window.get("grad_norm", 0.0) / ok,
            audio_seconds_per_second=sums.get("audio_seconds", 0.0) / max(now - at_start, 1e-9),
            skipped_updates=self.nonfinite_total,
            unreadable_files=self.unreadable_total,
            epoch=self.epoch + 1,
            elapsed_hours=(self.elapsed + now - started) / 3600,
        )
        if self.scaler:
            metrics["loss_scale"] = float(self.scaler.get_scale())
        self.window.clear()
        return metrics

    def validate(self) -> bool:
        """Evaluates, logs, and keeps the count for early stopping; True when this is a new best model."""
        metrics = self.evaluate()
        if metrics is None:
            return False
        self.logger.write("valid", self.update, metrics)
        log.info("update %d | valid | %s", self.update, _line(metrics))
        value = metrics[self.task.best_metric]
        better = self.best is None or (value > self.best if self.task.maximize else value < self.best)
        self.stale = 0 if better else self.stale + 1
        if better:
            self.best = value
        return better

    def run(self) -> dict[str, Any]:
        self.build()
        cfg = self.cfg
        self.resume()
        if self.world.is_main:
            atomic_write_text(self.out_dir / "config.yaml", to_yaml(cfg))
        self.model.train()
        if not self.resumed:
            log.info("%s: %s parameters, %d training utterances, output in %s", self.task.name,
                     f"{self.model.num_parameters():,}", len(self.train_set), self.out_dir)  # fmt: skip
        bar = progress(cfg.max_update, self.task.name, "update", self.quiet or not self.world.is_main,
                       initial=self.update)  # fmt: skip
        batches = self.batches()
        started = window_start = time.perf_counter()
        last_metrics: dict[str, float] = {}
        try:
            while self.update < cfg.max_update and not self._out_of_patience():
                self.train_step(*self.micro_batches(batches))
                bar.update(1)
                done = self.update == cfg.max_update
                if self.update % cfg.log_interval == 0 or done or self.update == 1:
                    last_metrics = self._train_metrics(started, window_start)
                    window_start = time.perf_counter()
                    self.task.check(last_metrics, self.update)
                    self.logger.write("train", self.update, last_metrics)
                    bar.set_postfix_str(_short(last_metrics))
                    log.info("update %d | %s", self.update, _line(last_metrics))
                best = (self.update % cfg.validate_interval_updates == 0 or done) and self.validate()
                stop = self._out_of_patience()
                if self.update % cfg.save_interval_updates == 0 or done or best or stop:
                    self.elapsed += time.perf_counter() - started
                    started = time.perf_counter()
                    step = [ckpt.step_name(self.update)] if self.update % cfg.save_interval_updates == 0 else []
                    state = self.save([ckpt.LAST, *step, *([ckpt.BEST] if best else [])])
                    if best and self.world.is_main:
                        self.task.on_best(ckpt.plain_model(self.model, state) if self.sharded else self.model,
                                          self.out_dir)  # fmt: skip
                if stop:
                    log.info("early stop: no better %s in %d validations", self.task.best_metric, self.stale)
                    break
        finally:
            bar.close()
            self.logger.close()
        finish_world(self.world)
        return {"update": self.update, "best": self.best, "last": last_metrics, "out_dir": str(self.out_dir)}

    def _loader_generator(self) -> torch.Generator:
        """A DataLoader draws its workers' seed from this, not from the global RNG, whose state (dropout)
        a resumed run restores: a validation pass in between must not shift it."""
        return torch.Generator().manual_seed(self.cfg.seed * 7919 + self.epoch)

    def _out_of_patience(self) -> bool:
        return self.cfg.patience > 0 and self.stale >= self.cfg.patience


class _ReenableSync(contextlib.AbstractContextManager):
    def __init__(self, model):
        self.model = model

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)
        return False


def _short(m: dict[str, float]) -> str:
    keys = [k for k in ("loss", "accuracy", "wer", "cer", "lr") if k in m]
    return ", ".join(f"{k} {m[k]:.3g}" for k in keys)


def _line(m: dict[str, float]) -> str:
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
