"""The server's counters, in the Prometheus text exposition format (`GET /metrics`).

Written out here rather than through prometheus_client: six series, and one dependency fewer.
"""

from __future__ import annotations

import threading
from collections import defaultdict

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{edge:g}"}} {n}' for edge, n in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{suffix} {self.sum:g}", f"{name}_count{suffix} {self.count}"]


class Metrics:
    """Requests and errors by endpoint and status, requests in the queue, model batch sizes, audio processed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (method, path, status)
        self.errors: dict[str, int] = defaultdict(int)  # by type
        self.audio_seconds: dict[str, float] = defaultdict(float)  # by task
        self.batches = Histogram(BATCH_BUCKETS)
        self.latency: dict[str, Histogram] = {}
        self.queue_depth = 0

    def request(self, method: str, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(method, path, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, type: str) -> None:
        with self.lock:
            self.errors[type] += 1

    def audio(self, task: str, seconds: float) -> None:
        with self.lock:
            self.audio_seconds[task] += seconds

    def batch(self, rows: int) -> None:
        with self.lock:
            self.batches.observe(rows)

    def text(self) -> str:
        with self.lock:
            out = ["# HELP xlsr_requests_total HTTP requests answered, by method, path and status.",
                   "# TYPE xlsr_requests_total counter"]  # fmt: skip
            for (method, path, status), n in sorted(self.requests.items()):
                out.append(f'xlsr_requests_total{{method="{method}",path="{path}",status="{status}"}} {n}')
            out += ["# HELP xlsr_errors_total Requests answered with an error, by the error's type.",
                    "# TYPE xlsr_errors_total counter"]  # fmt: skip
            out += [f'xlsr_errors_total{{type="{t}"}} {n}' for t, n in sorted(self.errors.items())]
            out += ["# HELP xlsr_queue_depth Requests admitted and not yet answered.", "# TYPE xlsr_queue_depth gauge",
                    f"xlsr_queue_depth {self.queue_depth}"]  # fmt: skip
            out += ["# HELP xlsr_batch_size Rows (windows or segments) per model batch.",
                    "# TYPE xlsr_batch_size histogram", *self.batches.lines("xlsr_batch_size")]  # fmt: skip
            out += ["# HELP xlsr_audio_seconds_total Seconds of audio processed, by task.",
                    "# TYPE xlsr_audio_seconds_total counter"]  # fmt: skip
            out += [f'xlsr_audio_seconds_total{{task="{t}"}} {s:g}' for t, s in sorted(self.audio_seconds.items())]
            out += ["# HELP xlsr_request_duration_seconds Time from request to answer, by path.",
                    "# TYPE xlsr_request_duration_seconds histogram"]  # fmt: skip
            for path, h in sorted(self.latency.items()):
                out += h.lines("xlsr_request_duration_seconds", f'path="{path}"')
            return "\n".join(out) + "\n"
