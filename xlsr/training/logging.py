"""Training logs: console (progress bar + lines), JSON lines, CSV and TensorBoard, from the main process."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("xlsr")


def setup_console_logging(quiet: bool) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
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

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
