"""`xlsr serve` under load: the bundled CTC model behind the server on 127.0.0.1, with 1, 4 and 16 concurrent
clients, against the same clips through `xlsr transcribe` in one process (one call, the model already loaded:
the ceiling a server cannot beat on the same machine).

The clips are cut from the bundled examples (real synthetic speech): `--short` of 5-15 s, a few of them exactly
10 s (the latency probe), and `--long` 10-minute recordings mixed in. Each level sends the same bounded list of
requests in the same shuffled order; each client sends one request at a time. Printed per level: throughput
(seconds of audio transcribed per second of wall time), p50/p95/p99 latency of all requests, p95 of the 10 s
clips against a 10 s clip sent alone, and the errors. The server is a separate process (`xlsr serve`).

    python benchmarks/serve.py                                # 1, 4, 16 clients; 24 short clips, 2 long ones
    python benchmarks/serve.py --levels 16 --short 48 --long 1 --max-batch 16 --max-wait-ms 10
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000


def make_clips(folder: Path, short: int, long: int, seed: int) -> list[tuple[Path, float]]:
    """Clips made of the bundled examples end to end: 5-15 s ones (every fourth exactly 10 s) and 10-minute ones."""
    rng = random.Random(seed)
    examples = [sf.read(p, dtype="float32")[0] for p in sorted((ROOT / "examples").glob("*.wav"))]

    def speech(seconds: float) -> np.ndarray:
        parts, n = [], 0
        while n < seconds * RATE:
            parts.append(examples[rng.randrange(len(examples))])
            n += len(parts[-1])
        return np.concatenate(parts)[: int(seconds * RATE)]

    clips = []
    for i in range(short):
        seconds = 10.0 if i % 4 == 0 else round(rng.uniform(5, 15), 2)
        clips.append((folder / f"short{i:03d}.wav", seconds))
    clips += [(folder / f"long{i}.wav", 600.0) for i in range(long)]
    for path, seconds in clips:
        sf.write(path, speech(seconds), RATE)
    return clips


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def start_server(args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "xlsr", "serve", "--port", str(port), "--lid", "none", "--max-batch",
           str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "64"]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(url + "/health").raise_for_status()
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)


def send(url: str, path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    with open(path, "rb") as f:
        r = httpx.post(url + "/v1/audio/transcriptions", files={"file": (path.name, f)}, timeout=1800)
    return time.perf_counter() - started, r.status_code


def level(url: str, clips: list[tuple[Path, float]], clients: int, seed: int) -> dict:
    todo = list(clips)
    random.Random(seed).shuffle(todo)
    lock, results = threading.Lock(), []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                path, seconds = todo.pop()
            latency, status = send(url, path)
            with lock:
                results.append((seconds, latency, status))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ok = [(s, lat) for s, lat, status in results if status == 200]
    return {
        "clients": clients,
        "throughput": sum(s for s, _ in ok) / wall,
        "latencies": [lat for _, lat in ok],
        "ten": [lat for s, lat in ok if s == 10.0],
        "errors": len(results) - len(ok),
        "wall": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per level")
    p.add_argument("--short", type=int, default=24, help="5-15 s clips per level (default 24)")
    p.add_argument("--long", type=int, default=2, help="10-minute clips per level (default 2)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of the server and of the ceiling (default 1: on a busy 2-core machine, two "
                   "OpenMP threads per op stall on the loaded core)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(Path(tmp), args.short, args.long, args.seed)
        audio = sum(s for _, s in clips)
        print(f"{len(clips)} requests per level, {audio:.0f} s of audio ({args.long} of 10 minutes)", flush=True)

        import torch

        import xlsr
        from xlsr.transcribe import ctc_model

        if args.threads:
            torch.set_num_threads(args.threads)
        net = ctc_model(None, None, None)
        xlsr.transcribe(net, [clips[0][0]], quiet=True)  # warm-up
        started = time.perf_counter()
        xlsr.transcribe(net, [c for c, _ in clips], quiet=True)
        ceiling = audio / (time.perf_counter() - started)
        print(f"ceiling (xlsr transcribe, one process, one call): {ceiling:.1f} s of audio per second", flush=True)
        del net

        proc, url = start_server(args)
        try:
            ten = next(c for c, s in clips if s == 10.0)
            send(url, ten)  # warm-up
            alone = statistics.median(send(url, ten)[0] for _ in range(5))
            print(f"a 10 s clip alone: {alone:.3f} s", flush=True)
            rows = []
            for clients in args.levels:
                r = level(url, clips, clients, args.seed)
                rows.append(r)
                print(f"  {clients} clients done in {r['wall']:.0f} s", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print()
    print("| clients | throughput (audio s/s) | x ceiling | p50 | p95 | p99 | 10 s clip p95 | x alone | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lat, ten_p95 = r["latencies"], percentile(r["ten"], 95)
        print(f"| {r['clients']} | {r['throughput']:.1f} | {r['throughput'] / ceiling:.2f} | "
              f"{percentile(lat, 50):.2f} s | {percentile(lat, 95):.2f} s | {percentile(lat, 99):.2f} s | "
              f"{ten_p95:.2f} s | {ten_p95 / alone:.1f} | {r['errors']} |")  # fmt: skip
    print(f"\nceiling {ceiling:.1f} audio s/s; a 10 s clip alone {alone:.3f} s")


if __name__ == "__main__":
    main()
