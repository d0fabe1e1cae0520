"""The training loop shared by pretraining, CTC fine-tuning and classification.

A `Task` says what to build, how to batch and what the loss is; the `Trainer` does the rest, in
named stages: `build`, `resume`, `train_step`, `evaluate`, `save`, `run`.

- Gradients are normalised as fairseq does: the loss of every micro-batch is summed over its units
  (masked frames, target tokens, utterances) and divided by the units of the whole update, over all
  micro-batches (`update_freq`) and all processes, so 2 processes x 1 micro-batch train the same model as
  1 process x 2 micro-batches.
- A non-finite loss or gradient skips the update (counted); `max_nonfinite_updates` in a row stop the run.
- Checkpoints are written atomically: `checkpoint_last.pt` (always), `checkpoint_<update>.pt` (the last
  `keep_interval_updates`), `checkpoint_best.pt`. Re-running the same command resumes from
  `checkpoint_last.pt` exactly: model, optimizer, loss scaler, every process's RNG state, update count and
  data position (masks, negatives, crops and Gumbel noise derive from the seed and the data position).
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
import torch.distributed as dist
from torch import Tensor

from ..checkpoints import checkpoint_dict
from ..checkpoints.io import atomic_torch_save, atomic_write_text, safe_torch_load
from ..errors import ConfigError, XlsrError
from ..models import Wav2Vec2Model
from ..runtime import progress
from .config import TrainConfig, to_yaml
from .distributed import World, all_reduce_sum, finish_world, init_world, wrap
from .logging import MetricsLogger, log, setup_console_logging
from .schedule import lr_at

CHECKPOINTS = "checkpoints"


@dataclass
class StepOutput:
    loss: Tensor  # () summed over the batch's units; the trainer divides by the update's units
    stats: dict[str, float] = field(default_factory=dict)  # sums over units, added up across batches and processes


class Task:
    """What a training run needs to know. Subclasses: PretrainTask, CTCTask, ClassificationTask."""

    name = "task"
    best_metric = "loss"  # from `summarize`; lower is better unless `maximize`
    maximize = False

    def __init__(self, cfg: TrainConfig, train: str | Path, valid: str | Path | None):
        self.cfg, self.train_manifest, self.valid_manifest = cfg, train, valid

    def build_model(self) -> Wav2Vec2Model:
        raise NotImplementedError

    def datasets(self, model: Wav2Vec2Model, world: World):
        """-> (train dataset, train sampler, valid dataset or None, valid sampler or None)."""
        raise NotImplementedError

    def collate(self, items: list[dict]) -> dict:
        """Items -> a batch dict with at least `sample_size` (units) and `audio_seconds`."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: dict, update: int) -> StepOutput:
        raise NotImplementedError

    def before_update(self, model: Wav2Vec2Model, update: int) -> None:
        """Schedules that depend on the update (Gumbel temperature, freezing)."""

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        """Summed stats -> the metrics to log."""
        return {"loss": stats["loss"] / max(stats["sample_size"], 1)}

    def check(self, metrics: dict[str, float], update: int) -> None:
        """Warnings about a run's health (codebook collapse, blank-only output)."""

    def on_best(self, model: Wav2Vec2Model, out_dir: Path) -> None:
        """Called on the main process when validation finds a new best model."""

    def describe_data(self, train_set, valid_set) -> None:
        """Logs what was dropped and why (`self.dropped`: split -> reason -> count); an empty split is an error."""
        for name, ds in (("train", train_set), ("valid", valid_set)):
            if ds is None:
                continue
            for reason, n in getattr(self, "dropped", {}).get(name, {}).items():
                if n:
                    log.warning("%s: %d utterances dropped: %s", name, n, reason)
            if not len(ds):
                raise ConfigError(f"the {name} manifest has no usable utterance")


class _Step(torch.nn.Module):
    """The task's loss as a module's forward, so that DDP / FSDP see every training step go through them."""

    def __init__(self, task: Task, model: Wav2Vec2Model):
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
        self.elapsed = 0.0
        self.window: dict[str, float] = defaultdict(float)  # stats since the last log line

    # -- build ----------------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        self.world = world = init_world(cfg.device)
        setup_console_logging(self.quiet or not world.is_main)
        if cfg.update_freq < 1 or cfg.max_update < 0:
            raise ConfigError("update_freq must be >= 1 and max_update >= 0")
        self.precision = self._precision()
        torch.manual_seed(cfg.seed)  # the same initial weights on every process (fully_shard does not broadcast)
        self.model = self.task.build_model().to(world.device)
        torch.manual_seed(cfg.seed + world.rank)  # but each process its own masks, negatives and dropout
        self.model.set_gradient_checkpointing(cfg.checkpoint_activations)
        self.train_set, self.sampler, self.valid_set, self.valid_sampler = self.task.datasets(self.model, world)
        self.task.describe_data(self.train_set, self.valid_set)
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

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINTS

    def _model_state(self) -> dict[str, Tensor]:
        if self.cfg.fsdp and self.world.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.step, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return {k.removeprefix("model."): v for k, v in state.items()}
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _optimizer_state(self) -> dict:
        if self.cfg.fsdp and self.world.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.step, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.optimizer.state_dict()

    def save(self, names: list[str]) -> dict[str, Tensor]:
        """Writes the training state under each of `names` (every process takes part; the main one writes).
        Returns the whole model's weights (on the main process)."""
        model_state, optim_state = self._model_state(), self._optimizer_state()
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        rngs = [rng]
        if self.world.distributed:
            rngs = [None] * self.world.size
            dist.all_gather_object(rngs, rng)
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
            rng=rngs,
            scaler=self.scaler.state_dict() if self.scaler else None,
            best=self.best,
            stale=self.stale,
            elapsed=self.elapsed,
            nonfinite_total=self.nonfinite_total,
        )
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            atomic_torch_save(state, self.checkpoint_dir / name)
        steps = sorted(self.checkpoint_dir.glob("checkpoint_[0-9]*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        for old in steps[: max(len(steps) - self.cfg.keep_interval_updates, 0)]:
            old.unlink()
        return model_state

    def _plain_model(self, state: dict[str, Tensor]) -> Wav2Vec2Model:
        """The network with ordinary tensors (under FSDP, rebuilt from the gathered weights)."""
        if not (self.cfg.fsdp and self.world.distributed):
            return self.model
        net = Wav2Vec2Model.from_state_dict(self.model.cfg, state)
        net.tokenizer, net.preprocessing, net.source = self.model.tokenizer, self.model.preprocessing, self.model.source
        return net.eval()

    def resume(self) -> dict | None:
        """Loads checkpoint_last.pt, if this output directory has one, into the (still unwrapped) model and
        the counters; returns it, so that `build_optimizer` can restore the optimizer too."""
        path = self.checkpoint_dir / "checkpoint_last.pt"
        if not path.exists():
            return None
        state = safe_torch_load(path)
        net = self.model
        if state.get("task") != self.task.name:
            raise XlsrError(f"{path}: a {state.get('task')} run, not {self.task.name}; use another --out")
        if state["config"] != net.cfg.to_dict():
            raise XlsrError(f"{path}: this run's model differs from the one in {self.out_dir}; use another --out")
        net.load_state_dict(state["model"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.update, self.epoch, self.position = state["update"], state["epoch"], state["position"]
        self.best, self.elapsed, self.stale = state["best"], state["elapsed"], state.get("stale", 0)
        self.nonfinite_total = state["nonfinite_total"]
        if state["world_size"] == self.world.size:
            rng = state["rng"][self.world.rank]
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        else:
            log.warning("resuming with %d processes instead of %d: random streams restart", self.world.size,
                        state["world_size"])  # fmt: skip
        self._truncate_logs()
        log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.update, self.epoch, self.position)
        return state

    def build_optimizer(self, resumed: dict | None) -> None:
        """AdamW over the wrapped model's parameters (fully_shard replaces them, so this comes after wrapping)."""
        cfg = self.cfg
        params = [p for p in self.step.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)  # fmt: skip
        if resumed is None:
            return
        if cfg.fsdp and self.world.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.step, self.optimizer, resumed["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))  # fmt: skip
        else:
            self.optimizer.load_state_dict(resumed["optimizer"])

    def _truncate_logs(self) -> None:
        """Drops log records written after the checkpoint we resume from (and a line cut by a kill)."""
        if not self.world.is_main:
            return
        import csv
        import json

        path = self.out_dir / "log.jsonl"
        if path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["update"] <= self.update:
                        kept.append(line)
                except (ValueError, KeyError):
                    pass
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        for csv_path in self.out_dir.glob("*.csv"):
            rows = list(csv.reader(csv_path.read_text(encoding="utf-8").splitlines()))
            if not rows:
                continue
            col = rows[0].index("update") if "update" in rows[0] else None
            keep = [rows[0]] + [
                r
                for r in rows[1:]
                if col is not None and len(r) == len(rows[0]) and r[col].isdigit() and int(r[col]) <= self.update
            ]
            with open(csv_path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(keep)

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
                collate_fn=self.task.collate,
                num_workers=self.cfg.num_workers,
                persistent_workers=False,
                generator=self._loader_generator(),
            )
            for batch in loader:
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    # -- one update -----------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> None:
        cfg, world = self.cfg, self.world
        self.task.before_update(self.model, self.update)
        lr = lr_at(self.update, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        units = all_reduce_sum([sum(b["sample_size"] for b in micro_batches)], world)[0]
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
            self.nonfinite_total += 1
            self.nonfinite_run += 1
            if self.scaler:
                self.scaler.update()  # lowers the loss scale
            if self.nonfinite_run > cfg.max_nonfinite_updates:
                raise XlsrError(
                    f"training diverged: {self.nonfinite_run} updates in a row had a non-finite loss or gradient "
                    f"(update {self.update}); lower lr, raise warmup_updates, set clip_norm, or use fp32/bf16"
                )
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
        loader = torch.utils.data.DataLoader(
            self.valid_set,
            batch_sampler=list(self.valid_sampler),
            collate_fn=self.task.collate,
            num_workers=self.cfg.num_workers,
            generator=self._loader_generator(),
        )
        for batch in loader:
            with self.autocast():
                _, stats = self.step(batch, -1)
            for k, v in stats.items():
                totals[k] += v
        self.model.train()
        keys = sorted(totals)
        summed = dict(zip(keys, all_reduce_sum([totals[k] for k in keys], self.world)))
        if not summed:
            return None
        return self.task.summarize(summed)

    # -- the loop -------------------------------------------------------------------------------
    def _log_train(self, started: float, at_start: float) -> dict[str, float]:
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
            epoch=self.epoch + 1,
            elapsed_hours=(self.elapsed + now - started) / 3600,
        )
        if self.scaler:
            metrics["loss_scale"] = float(self.scaler.get_scale())
        self.window.clear()
        return metrics

    def run(self) -> dict[str, Any]:
        self.build()
        cfg = self.cfg
        resumed = self.resume()
        if self.world.is_main:
            atomic_write_text(self.out_dir / "config.yaml", to_yaml(cfg))
        self.step = wrap(_Step(self.task, self.model), self.world, cfg.fsdp, find_unused=self._find_unused(),
                         bf16=self.precision == "bf16")  # fmt: skip
        self.build_optimizer(resumed)
        self.model.train()
        if not resumed:
            log.info(
                "%s: %s parameters, %d training utterances, output in %s",
                self.task.name,
                f"{self.model.num_parameters():,}",
                len(self.train_set),
                self.out_dir,
            )
        bar = progress(
            cfg.max_update, self.task.name, "update", self.quiet or not self.world.is_main, initial=self.update
        )
        batches = self.batches()
        started = window_start = time.perf_counter()
        last_metrics: dict[str, float] = {}
        try:
            while self.update < cfg.max_update and not self._out_of_patience():
                self.train_step([next(batches) for _ in range(cfg.update_freq)])
                bar.update(1)
                done = self.update == cfg.max_update
                if self.update % cfg.log_interval == 0 or done:
                    last_metrics = self._log_train(started, window_start)
                    window_start = time.perf_counter()
                    self.task.check(last_metrics, self.update)
                    self.logger.write("train", self.update, last_metrics)
                    bar.set_postfix_str(_short(last_metrics))
                    log.info("update %d | %s", self.update, _line(last_metrics))
                names = []
                if self.update % cfg.validate_interval_updates == 0 or done:
                    metrics = self.evaluate()
                    if metrics is not None:
                        self.logger.write("valid", self.update, metrics)
                        log.info("update %d | valid | %s", self.update, _line(metrics))
                        value = metrics[self.task.best_metric]
                        better = self.best is None or (value > self.best if self.task.maximize else value < self.best)
                        self.stale = 0 if better else self.stale + 1
                        if better:
                            self.best = value
                            names.append("checkpoint_best.pt")
                stop = self._out_of_patience()
                if self.update % cfg.save_interval_updates == 0 or done or names or stop:
                    self.elapsed += time.perf_counter() - started
                    started = time.perf_counter()
                    step = [f"checkpoint_{self.update}.pt"] if self.update % cfg.save_interval_updates == 0 else []
                    state = self.save(["checkpoint_last.pt", *step, *names])
                    if names and self.world.is_main:
                        self.task.on_best(self._plain_model(state), self.out_dir)
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
        patience = getattr(self.cfg, "patience", 0)  # fine-tuning's early stopping
        return patience > 0 and self.stale >= patience

    def _find_unused(self) -> bool:
        net = self.model
        frozen = any(not p.requires_grad for p in net.parameters())
        return net.cfg.encoder_layerdrop > 0 or frozen or getattr(self.task, "may_skip_parameters", False)


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
