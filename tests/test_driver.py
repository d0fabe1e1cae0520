"""The shared inference driver: length-balanced shards, and torchrun (2 CPU processes, gloo) giving the same
outputs as one process, with every rank's bad inputs in the exit code and rank 0's summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf
from conftest import speechlike

from xlsr.data.manifest import Utterance
from xlsr.driver import shard


def test_shards_are_balanced_by_length_and_cover_every_input_once():
    seconds = [30, 1, 1, 1, 10, 10, 9, 2]
    utts = [Utterance(Path(f"{i}.wav"), samples=16000 * s) for i, s in enumerate(seconds)]
    todo = list(range(100, 108))
    parts = [shard(todo, utts, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == todo
    loads = [sum(seconds[i - 100] for i in part) for part in parts]
    assert max(loads) == 30 and min(loads) >= 10  # the 30 s file alone; the rest spread over the other two


def test_torchrun_transcribes_like_one_process(tmp_path):
    for i, s in enumerate((2.0, 1.0, 3.0, 1.5, 0.7)):
        sf.write(tmp_path / f"u{i}.wav", speechlike(s, seed=i), 16000)
    (tmp_path / "bad.wav").write_text("not audio")
    inputs = [str(tmp_path / f"u{i}.wav") for i in range(5)] + [str(tmp_path / "bad.wav")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "xlsr", "transcribe", *inputs, "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)  # fmt: skip
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "xlsr", "transcribe", *inputs, "--output-dir", str(tmp_path / "two"), "--quiet"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert one.returncode == 1 and two.returncode != 0, two.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"u{i}.txt" for i in range(5)] == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    summary = [line for line in two.stderr.splitlines() if "transcripts done" in line]
    assert summary == ["xlsr: 5 transcripts done, 1 failed"]  # rank 0 alone prints the joint summary
    assert sum("bad.wav: " in line for line in two.stderr.splitlines()) == 1
