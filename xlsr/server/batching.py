"""Cross-request batching: every model call of the server runs in one worker thread, in batches.

The commands' runners (`inference.py`) call their forward function with a prepared batch of windows or segments
(`waves (B, S)`, `lengths (B,)`) and wait for its outputs. In the server every request runs its command in a
thread of its own, and its runner's forward is `Batcher.wrap`ped: the call is queued, and the one worker thread
combines the queued calls that compute the same function (the same `key`) into one batch: zero-padded to the
longest (padding is zero and normalisation already done per item, so the combined batch is what `prepare_batch`
would have made of all the items together), run once, and each caller gets its own rows back. A long recording's
runner submits one batch of windows at a time, so the windows of requests that arrive meanwhile join the next
batch: nobody waits for the whole of someone else's recording.

A batch is run when it has `max_batch` rows, when every request in progress is waiting on the worker (nobody
else could join), or `max_wait` after its first call arrived. Calls are combined only while the padding stays
below a quarter of the batch (`MIN_FILL`), so short clips are not padded to the length of long windows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Forward = Callable[[Tensor, Tensor], Any]
MIN_FILL = 0.75  # real samples / padded samples a combined batch keeps at least


@dataclass(eq=False)
class _Call:
    key: Hashable
    forward: Forward
    waves: Tensor  # (B, S), prepared
    lengths: Tensor  # (B,) long
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    output: Any = None
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return self.waves.shape[1]


class Batcher:
    """One worker thread that runs every forward call given to it, combined into batches (see the module).

    `on_batch(rows)` is told the size of each batch run (the server's metrics)."""

    def __init__(self, max_batch: int = 16, max_wait_s: float = 0.01, on_batch: Callable[[int], None] | None = None):
        self.max_batch, self.max_wait_s, self.on_batch = max(1, max_batch), max(0.0, max_wait_s), on_batch
        self._pending: list[_Call] = []
        self._active = 0  # requests inside `job()`: the callers that may still submit
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="xlsr-model", daemon=True)
        self._thread.start()

    def wrap(self, forward: Forward, key: Hashable, same_width: bool = False) -> Forward:
        """The runner's forward, run by the worker: calls with equal keys compute the same function on their
        rows, and may share a batch. `same_width`: only calls of the same width do (a model whose outputs
        depend on padding: the group-norm layout normalises over the padded length)."""

        def batched(waves: Tensor, lengths: Tensor) -> Any:
            return self.call((key, waves.shape[1]) if same_width else key, forward, waves, lengths)

        return batched

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Marks a request as in progress (it may submit calls) for as long as the block runs."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def call(self, key: Hashable, forward: Forward, waves: Tensor, lengths: Tensor) -> Any:
        """Queues one call, waits for the worker, and returns its outputs (or raises its error)."""
        item = _Call(key, forward, waves, lengths)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model worker has stopped")
            self._pending.append(item)
            self._cond.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.output

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # -- the worker ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:  # closed and drained
                    return
                batch = self._gather()
            self._run(batch)

    def _gather(self) -> list[_Call]:
        """Waits (holding the condition) until the oldest call's batch should run; takes its calls from the queue."""
        first = self._pending[0]
        deadline = first.arrived + self.max_wait_s
        while True:
            batch = self._choose(first)
            everyone_waits = len(self._pending) >= self._active
            remaining = deadline - time.monotonic()
            if sum(c.rows for c in batch) >= self.max_batch or everyone_waits or remaining <= 0 or self._closed:
                break
            self._cond.wait(remaining)
        for c in batch:
            self._pending.remove(c)
        return batch

    def _choose(self, first: _Call) -> list[_Call]:
        """The oldest call, then the others of its key (oldest first) that fit in `max_batch` rows and keep the
        batch at least MIN_FILL real audio."""
        batch, rows, real = [first], first.rows, int(first.lengths.sum())
        width = first.width
        for c in self._pending[1:]:
            if c.key != first.key or rows + c.rows > self.max_batch:
                continue
            w = max(width, c.width)
            if (real + int(c.lengths.sum())) / ((rows + c.rows) * w) < MIN_FILL:
                continue
            batch.append(c)
            rows, real, width = rows + c.rows, real + int(c.lengths.sum()), w
        return batch

    def _run(self, batch: list[_Call]) -> None:
        try:
            with torch.inference_mode():
                if len(batch) == 1:
                    outputs = [batch[0].forward(batch[0].waves, batch[0].lengths)]
                else:
                    outputs = _split(batch[0].forward(*_combine(batch)), batch)
            for c, out in zip(batch, outputs):
                c.output = out
        except BaseException as e:  # every caller of the batch gets the error; the worker goes on
            for c in batch:
                c.error = e
        if self.on_batch is not None:
            self.on_batch(sum(c.rows for c in batch))
        for c in batch:
            c.done.set()


def _combine(batch: list[_Call]) -> tuple[Tensor, Tensor]:
    """The calls' rows as one zero-padded batch: waves (sum B, max S), lengths (sum B,)."""
    width = max(c.width for c in batch)
    waves = torch.cat([torch.nn.functional.pad(c.waves, (0, width - c.width)) for c in batch])
    return waves, torch.cat([c.lengths for c in batch])


def _split(output: Any, batch: list[_Call]) -> list[Any]:
    """Each call's rows of the combined output: a tensor's rows keep the combined width (their padding frames
    follow their own; the runners read a row only up to its own frames), a list is sliced."""
    out, start = [], 0
    for c in batch:
        out.append(output[start : start + c.rows])
        start += c.rows
    return out
