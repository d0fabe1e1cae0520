"""One forward pass of the xlsr-300m preset: xlsr against transformers' Wav2Vec2Model, same weights,
same audio, same run. Prints time, peak memory and the xlsr/transformers ratios (target: <= 1.0).

Each (implementation, duration) is measured in a fresh process, so peak memory is that process's own:
peak RSS during the forward pass minus RSS after loading the model ("activations"), and the whole peak.

    python benchmarks/forward.py                   # 10 s and 30 s, 3 timed runs each
    python benchmarks/forward.py --seconds 10 --repeats 5 --preset xlsr-300m --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> dict:
    from xlsr.checkpoints import load_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wave = torch.from_numpy(np.load(args.audio))[None].to(device)
    if args.impl == "xlsr":
        model = load_model(args.model_dir, device=device)
        run = lambda: model.encode(wave).x  # noqa: E731
    else:
        from transformers import Wav2Vec2Model

        model = Wav2Vec2Model.from_pretrained(args.model_dir, attn_implementation="sdpa").to(device).eval()
        run = lambda: model(wave).last_hidden_state  # noqa: E731
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():  # page in memory-mapped weights, so the baseline holds the whole model
        sum(float(p.sum()) for p in model.parameters())
    base_rss = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    times = []
    with torch.inference_mode():
        out = run()  # warm-up
        sync()
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = run()
            sync()
            times.append(time.perf_counter() - t)
    result = {
        "impl": args.impl,
        "seconds": args.seconds,
        "time_s": statistics.median(times),
        "peak_mb": peak_rss_mb(),
        "activations_mb": peak_rss_mb() - base_rss,
        "checksum": float(out.float().abs().mean()),
    }
    if device.type == "cuda":
        result["cuda_activations_mb"] = torch.cuda.max_memory_allocated() / 2**20 - base_cuda
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="xlsr-300m")
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--audio", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:  # inside a worker process
        print(json.dumps(worker(args)))
        return

    from xlsr.checkpoints import save_hf_dir
    from xlsr.config import preset
    from xlsr.models import Wav2Vec2Model

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_hf_dir(Wav2Vec2Model(preset(args.preset, head="none")), f"{tmp}/model")
        print(f"{args.preset}, {args.device}, {args.threads} threads, median of {args.repeats} runs after a warm-up")
        print(f"{'audio':>7} {'impl':>13} {'time s':>8} {'activ. MB':>10} {'peak MB':>9}")
        rows = []
        for seconds in args.seconds:
            rng = np.random.default_rng(0)
            wave = rng.standard_normal(int(seconds * 16000)).astype(np.float32)
            np.save(f"{tmp}/audio.npy", wave)
            res = {}
            for impl in ("transformers", "xlsr"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--impl",
                    impl,
                    "--model-dir",
                    f"{tmp}/model",
                    "--audio",
                    f"{tmp}/audio.npy",
                    "--seconds",
                    str(seconds),
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res[impl] = json.loads(out.strip().splitlines()[-1])
                r = res[impl]
                print(
                    f"{seconds:>6g}s {impl:>13} {r['time_s']:>8.3f} {r['activations_mb']:>10.0f} {r['peak_mb']:>9.0f}"
                )  # noqa: E501
            x, t = res["xlsr"], res["transformers"]
            assert abs(x["checksum"] - t["checksum"]) < 1e-3 * abs(t["checksum"]), "outputs differ"
            time_ratio = x["time_s"] / t["time_s"]
            mem_ratio = x["activations_mb"] / max(t["activations_mb"], 1e-9)
            peak_ratio = x["peak_mb"] / t["peak_mb"]
            rows.append((seconds, time_ratio, mem_ratio, peak_ratio))
            print(f"{'':>7} {'xlsr/transf.':>13} {time_ratio:>8.2f} {mem_ratio:>10.2f} {peak_ratio:>9.2f}")
        ok = all(r[1] <= 1.0 and r[3] <= 1.0 for r in rows)
        print("target (time and peak memory ratios <= 1.0):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
