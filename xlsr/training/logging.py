"""Training logs: console (progress bar + lines), JSON lines, CSV and TensorBoard, from the main process.

Console lines go through the progress bar (`tqdm.write`), so a log line never lands glued to a bar.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..checkpoints.io import atomic_write_text

log = logging.getLogger("xlsr")


class BarSafeHandler(logging.Handler):
    """Writes records to stderr through tqdm, which clears any open bar, prints the line, then redraws it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 (logging must never raise)
            self.handleError(record)


def setup_console_logging(quiet: bool) -> None:
    if not log.handlers:
        handler = BarSafeHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s | %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


class MetricsLogger:
    """Writes each record to `log.jsonl`, `<split>.csv` and TensorBoard (`tb/`, when tensorboard is installed)."""

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.out_dir, self.enabled = out_dir, enabled
        self.columns: dict[str, list[str]] = {}
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                log.info("tensorboard is not installed: no TensorBoard logs (pip install 'xlsr[train]')")

    def write(self, split: str, update: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"split": split, "update": update, **metrics}
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        path = self.out_dir / f"{split}.csv"
        if split not in self.columns:
            if path.exists():  # resumed run: keep the file's columns
                with open(path, encoding="utf-8") as f:
                    self.columns[split] = next(csv.reader(f), list(record))
            else:
                self.columns[split] = list(record)
                with open(path, "w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerow(self.columns[split])
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([record.get(c, "") for c in self.columns[split]])
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{split}/{key}", value, update)
            self.tb.flush()

    def truncate(self, update: int) -> None:
        """Drops the records written after `update` (a resumed run rewrites them) and any line a kill cut
        short, from `log.jsonl` and every `<split>.csv`."""
        if not self.enabled:
            return
        path = self.out_dir / "log.jsonl"
        if path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["update"] <= update:
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
                if col is not None and len(r) == len(rows[0]) and r[col].isdigit() and int(r[col]) <= update
            ]
            with open(csv_path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
