"""Transcription throughput and peak memory: xlsr against transformers'
pipeline("automatic-speech-recognition") with the same weights (xlsr-300m preset with a CTC head), the
same chunking (20 s windows, 3 s strides) and the same batch (3 windows), in the same run.

Each (implementation, length) runs in a fresh process: time is the wall time of the whole call
(xlsr reads the file itself; the pipeline gets the decoded array, since it needs ffmpeg for files),
real-time factor = compute time / audio time, peak memory = the process's peak RSS.

    python benchmarks/transcribe.py                       # 1, 10 and 60 minutes (about an hour on 2 cores)
    python benchmarks/transcribe.py --minutes 1 5 --preset small
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONISRHDLUCMWFGYPBVKXJQZ'"]
CHUNK, STRIDE, BATCH = 20.0, 3.0, 3


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.impl == "xlsr":
        from xlsr.transcribe import transcribe

        text = transcribe(
            args.model_dir,
            [args.audio],
            chunk_seconds=CHUNK,
            stride_seconds=STRIDE,
            batch_seconds=CHUNK * BATCH,
            device="cpu",
            quiet=True,
        )[0].text
    else:
        from transformers import pipeline

        audio, rate = sf.read(args.audio, dtype="float32")
        asr = pipeline("automatic-speech-recognition", model=args.model_dir, device="cpu")
        out = asr({"raw": audio, "sampling_rate": rate}, chunk_length_s=CHUNK, stride_length_s=STRIDE, batch_size=BATCH)
        text = out["text"]
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": args.impl, "seconds": elapsed, "peak_mb": peak, "chars": len(text)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="xlsr-300m")
    p.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
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
    from xlsr.text.ctc_tokenizer import CTCTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = Wav2Vec2Model(preset(args.preset, head="ctc", vocab_size=len(VOCAB)))
        save_hf_dir(model, f"{tmp}/model", CTCTokenizer(VOCAB))
        print(
            f"{args.preset} + CTC head, cpu, {args.threads} threads; {CHUNK:g} s windows, {STRIDE:g} s strides, "
            f"{BATCH} windows per batch"
        )
        print(f"{'audio':>8} {'impl':>13} {'time s':>9} {'RTF':>7} {'peak MB':>9}")
        rng = np.random.default_rng(0)
        for minutes in args.minutes:
            path = f"{tmp}/audio.wav"
            t = np.arange(160000) / 16000
            with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
                for _ in range(int(minutes * 6)):  # 10 s blocks of noise under a slow envelope
                    f.write((0.1 * rng.standard_normal(160000) * (1 + np.sin(2 * np.pi * 0.5 * t))).astype(np.float32))
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
                    path,
                    "--threads",
                    str(args.threads),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res[impl] = r = json.loads(out.strip().splitlines()[-1])
                rtf = r["seconds"] / (minutes * 60)
                print(f"{minutes:>6g}mn {impl:>13} {r['seconds']:>9.1f} {rtf:>7.3f} {r['peak_mb']:>9.0f}", flush=True)
            x, t_ = res["xlsr"], res["transformers"]
            print(
                f"{'':>8} {'xlsr/transf.':>13} {x['seconds'] / t_['seconds']:>9.2f} {'':>7} "
                f"{x['peak_mb'] / t_['peak_mb']:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
