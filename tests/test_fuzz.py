"""Fuzz: truncated, bit-flipped, spliced and random files through everything that reads a user's file.

Every case either succeeds or raises XlsrError with one line naming the file, and nothing else reaches stderr
(no decoder chatter, no traceback). The cases are seeded, so every run tries the same few hundred files:

- audio: real wav / flac / ogg / mp3 bytes of a speech-like signal (written by soundfile), mutated, through
  `load_audio`, `audio_duration` and `stream_audio`;
- checkpoints: a genuine fairseq checkpoint (tests/fixtures/fairseq_xlsr/ctc.pt), the same model as an xlsr
  checkpoint and as a Hugging Face directory (safetensors), mutated, through `xlsr.load_model`;
- commands: `run_command(argv)` runs `xlsr.cli.main` in this process and asserts a failed command's contract
  (a non-zero exit, one line on stderr, no traceback); COMMAND_CASES lists (name, make the inputs) pairs;
  damaged checkpoints go through every command that takes a model (MODEL_COMMANDS), damaged audio among good
  files through every batch command (BATCH_COMMANDS).
"""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FIXTURES, speechlike

import xlsr
from xlsr.audio import audio_duration, load_audio, stream_audio
from xlsr.errors import XlsrError

SEEDS = 48  # per source: 4 audio formats and 3 checkpoint kinds -> 336 cases

AUDIO = {  # suffix -> soundfile format, subtype
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
MUTATIONS = ("truncate", "flip", "flip-header", "random", "magic+random", "splice")
CHECKPOINTS = ("fairseq", "native", "hf")
CHECKPOINT_MUTATIONS = (*MUTATIONS, "inner")  # inner: the zip stays valid, its data.pkl (or JSON header) is hit


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One seeded mutation of `data`. The header is where parsers decide sizes and rates, so half the bit
    flips land in the first 300 bytes."""
    d = bytearray(data)
    if kind == "truncate":
        return bytes(d[: int(rng.integers(0, len(d)))])
    if kind in ("flip", "flip-header"):
        for _ in range(int(rng.integers(1, 24))):
            i = int(rng.integers(0, min(len(d), 300) if kind == "flip-header" else len(d)))
            d[i] ^= 1 << int(rng.integers(8))
        return bytes(d)
    if kind == "random":
        return rng.bytes(int(rng.integers(1, 6000)))
    if kind == "magic+random":  # what a format sniffer sees first, then garbage
        return bytes(d[:4]) + rng.bytes(int(rng.integers(1, 6000)))
    if kind == "splice":  # a file whose middle was lost: head and tail glued together
        a, b = sorted(int(x) for x in rng.integers(0, len(d), 2))
        return bytes(d[:a] + d[b:])
    raise ValueError(kind)


def check_outcome(read: Callable[[Path], object], path: Path, named: Path, capfd) -> None:
    """`read(path)` succeeds or raises XlsrError with one line naming `named`; stderr stays empty."""
    try:
        read(path)
    except XlsrError as e:
        message = str(e)
        assert message.strip() and "\n" not in message, repr(message)
        assert str(named) in message, message
    err = capfd.readouterr().err
    assert err == "", f"{path}: stderr got {err!r}"


# --- audio --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_sources() -> dict[str, bytes]:
    x = speechlike(1.5, seed=3)
    sources = {}
    for suffix, (fmt, subtype) in AUDIO.items():
        buffer = io.BytesIO()
        sf.write(buffer, x, 16000, format=fmt, subtype=subtype)
        sources[suffix] = buffer.getvalue()
    return sources


def _stream(path: Path) -> None:
    for block in stream_audio(path):
        assert block.dtype == np.float32 and block.ndim == 1


AUDIO_CASES = [(suffix, seed) for suffix in AUDIO for seed in range(SEEDS)]


@pytest.mark.parametrize(
    "suffix, seed", AUDIO_CASES, ids=[f"{s[1:]}-{n}-{MUTATIONS[n % len(MUTATIONS)]}" for s, n in AUDIO_CASES]
)
def test_damaged_audio_is_read_or_named_in_one_line(tmp_path, capfd, audio_sources, suffix, seed):
    rng = np.random.default_rng([seed, list(AUDIO).index(suffix)])
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(mutate(audio_sources[suffix], MUTATIONS[seed % len(MUTATIONS)], rng))
    for read in (load_audio, audio_duration, _stream):
        check_outcome(read, path, path, capfd)


def test_the_audio_sources_are_real_audio(audio_sources, tmp_path):
    """The fuzz starts from files that load: 1.5 s of 16 kHz audio in each format."""
    for suffix, data in audio_sources.items():
        (tmp_path / f"a{suffix}").write_bytes(data)
        assert abs(len(load_audio(tmp_path / f"a{suffix}")) - 24000) < 2400, suffix


# --- checkpoints --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_sources(tmp_path_factory) -> Path:
    """fairseq/ctc.pt (+ dict.ltr.txt), native/model.pt, hf/ (a Hugging Face directory): one CTC model."""
    from xlsr.checkpoints import checkpoint_dict

    root = tmp_path_factory.mktemp("checkpoints")
    (root / "fairseq").mkdir()
    for name in ("ctc.pt", "dict.ltr.txt"):
        shutil.copy(FIXTURES / name, root / "fairseq" / name)
    model = xlsr.load_model(root / "fairseq" / "ctc.pt")
    (root / "native").mkdir()
    torch.save(checkpoint_dict(model), root / "native" / "model.pt")
    xlsr.convert(root / "fairseq" / "ctc.pt", root / "hf")
    return root


def _weights_file(root: Path, kind: str) -> Path:
    return {"fairseq": root / "fairseq" / "ctc.pt", "native": root / "native" / "model.pt"}.get(
        kind, root / "hf" / "model.safetensors"
    )


def mutate_inside(data: bytes, rng: np.random.Generator) -> bytes:
    """A torch zip rewritten with its data.pkl damaged, or a safetensors file with its JSON header damaged:
    the container stays valid, so the parser inside it gets the damage."""
    if data[:4] != b"PK\x03\x04":
        n = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header, tensor bytes
        return data[:8] + mutate(data[8 : 8 + n], "flip", rng) + data[8 + n :]
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {info: z.read(info) for info in z.infolist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info, content in members.items():
            if info.filename.endswith("/data.pkl"):
                content = mutate(content, ("truncate", "flip")[int(rng.integers(2))], rng)
            z.writestr(info, content)
    return out.getvalue()


CHECKPOINT_CASES = [(kind, seed) for kind in CHECKPOINTS for seed in range(SEEDS)]


@pytest.mark.parametrize(
    "kind, seed",
    CHECKPOINT_CASES,
    ids=[f"{k}-{n}-{CHECKPOINT_MUTATIONS[n % len(CHECKPOINT_MUTATIONS)]}" for k, n in CHECKPOINT_CASES],
)
def test_damaged_checkpoints_load_or_are_named_in_one_line(tmp_path, capfd, checkpoint_sources, kind, seed):
    rng = np.random.default_rng([seed, 100 + CHECKPOINTS.index(kind)])
    target = damaged_checkpoint(tmp_path, checkpoint_sources, kind, seed, rng)
    check_outcome(xlsr.load_model, target, target, capfd)


def damaged_checkpoint(tmp: Path, sources: Path, kind: str, seed: int, rng: np.random.Generator) -> Path:
    """A copy of the `kind` source with its weights file damaged by the seed's mutation: the file (for hf, the
    directory)."""
    mutation = CHECKPOINT_MUTATIONS[seed % len(CHECKPOINT_MUTATIONS)]
    source = _weights_file(sources, kind)
    data = source.read_bytes()
    damaged = mutate_inside(data, rng) if mutation == "inner" else mutate(data, mutation, rng)
    shutil.copytree(source.parent, tmp / kind)
    path = tmp / kind / source.name
    path.write_bytes(damaged)
    return path.parent if kind == "hf" else path


def test_the_checkpoint_sources_load(checkpoint_sources):
    """The fuzz starts from three files of one model that load: the fairseq weights, in each."""
    models = [xlsr.load_model(checkpoint_sources / k) for k in ("fairseq/ctc.pt", "native/model.pt", "hf")]
    fairseq, *others = [m.state_dict() for m in models]
    assert all(torch.equal(state[k], v) for state in others for k, v in fairseq.items())


# --- commands -----------------------------------------------------------------------------------------------


def run_command(argv: list[str], capfd) -> str:
    """Runs `xlsr ARGV` in this process and asserts a failed command's contract: a non-zero exit, exactly one
    line on stderr, no traceback (an exception other than XlsrError propagates and fails the test).
    Returns the stderr line."""
    from xlsr.cli import main

    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    _, err = capfd.readouterr()
    lines = err.splitlines()
    assert code not in (0, None), (argv, code, err)
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    return lines[0]


def _random_model(tmp: Path) -> list[str]:
    (tmp / "model.pt").write_bytes(np.random.default_rng(7).bytes(3000))
    return ["info", str(tmp / "model.pt")]


def _truncated_model(tmp: Path) -> list[str]:
    data = (FIXTURES / "ctc.pt").read_bytes()
    (tmp / "model.pt").write_bytes(data[: len(data) // 2])
    return ["info", str(tmp / "model.pt")]


def _empty_model(tmp: Path) -> list[str]:
    (tmp / "model.pt").write_bytes(b"")
    return ["info", str(tmp / "model.pt")]


COMMAND_CASES: list[tuple[str, Callable[[Path], list[str]]]] = [
    ("info-random-bytes", _random_model),
    ("info-truncated-zip", _truncated_model),
    ("info-empty-file", _empty_model),
]


@pytest.mark.parametrize("make", [m for _, m in COMMAND_CASES], ids=[n for n, _ in COMMAND_CASES])
def test_a_command_on_a_damaged_input_fails_in_one_line(tmp_path, capfd, make):
    argv = make(tmp_path)
    line = run_command(argv, capfd)
    assert line.startswith("xlsr: error: ") and str(tmp_path) in line, line


# --- every command that takes a model, on damaged checkpoints ------------------------------------------------
MODEL_COMMANDS: dict[str, Callable[[str, Path], list[str]]] = {
    "info": lambda model, tmp: ["info", model],
    "convert": lambda model, tmp: ["convert", model, str(tmp / "converted")],
    "transcribe": lambda model, tmp: ["transcribe", "--model", model, str(tmp / "clip.wav"), "--quiet"],
    "features": lambda model, tmp: ["features", "--model", model, str(tmp / "clip.wav"), "--output-dir", str(tmp)],
    "evaluate": lambda model, tmp: ["evaluate", "--model", model, str(tmp / "m.tsv"), "--quiet"],
}
MODEL_COMMAND_CASES = [(kind, seed) for kind in CHECKPOINTS for seed in range(2 * len(CHECKPOINT_MUTATIONS))]


@pytest.mark.parametrize(
    "kind, seed",
    MODEL_COMMAND_CASES,
    ids=[f"{k}-{n}-{CHECKPOINT_MUTATIONS[n % len(CHECKPOINT_MUTATIONS)]}" for k, n in MODEL_COMMAND_CASES],
)
def test_every_command_that_takes_a_model_runs_or_names_a_damaged_one_in_one_line(
    tmp_path, capfd, checkpoint_sources, audio_sources, kind, seed
):
    """A damaged checkpoint through info, convert, transcribe, features and evaluate: the command runs (the
    damage missed what it reads) or exits non-zero with one `xlsr: error:` line naming the model; no traceback."""
    from xlsr.cli import main

    rng = np.random.default_rng([seed, 200 + CHECKPOINTS.index(kind)])
    model = str(damaged_checkpoint(tmp_path, checkpoint_sources, kind, seed, rng))
    (tmp_path / "clip.wav").write_bytes(audio_sources[".wav"])
    (tmp_path / "m.tsv").write_text("path\ttext\nclip.wav\tan example\n")
    failures = 0
    for name, make in MODEL_COMMANDS.items():
        capfd.readouterr()
        try:
            code = main(make(model, tmp_path))
        except SystemExit as e:  # argparse
            code = e.code
        err = capfd.readouterr().err
        assert "Traceback" not in err, (name, err)
        if code == 0:
            assert "error" not in err, (name, err)
        else:
            failures += 1
            assert err.count("\n") == 1 and err.startswith("xlsr: error: ") and model in err, (name, err)
    assert failures in (0, len(MODEL_COMMANDS)), "every command reads the model the same way"


# --- whole batch commands: damaged audio among good files ----------------------------------------------------
BATCH_COMMANDS = {  # command -> (extra arguments, the output suffix each good input gets)
    "transcribe": ([], "txt"),
    "identify": ([], "txt"),
    "features": ([], "npy"),
    "translate": (["--model", str(FIXTURES.parent / "fairseq_st" / "st.pt"), "--max-len-b", "3", "--beam-size", "1"],
                  "txt"),
}  # fmt: skip
BATCH_CASES = [(command, seed) for command in BATCH_COMMANDS for seed in range(6)]


@pytest.mark.parametrize("command, seed", BATCH_CASES)
def test_batch_commands_name_each_damaged_file_once_and_write_every_good_one(tmp_path, capfd, audio_sources,
                                                                             command, seed):  # fmt: skip
    """Each command over two good files and two damaged ones (seeded mutations of real wav/flac/ogg/mp3 bytes):
    a damaged file that still decodes is done like the others; every one that does not gets one `xlsr: error:`
    line naming it, then one summary line; the exit code is 1; no traceback; every good file's output exists."""
    from xlsr.cli import main

    rng = np.random.default_rng([seed, 500 + list(BATCH_COMMANDS).index(command)])
    good = [tmp_path / "good0.wav", tmp_path / "good1.flac"]
    good[0].write_bytes(audio_sources[".wav"])
    good[1].write_bytes(audio_sources[".flac"])
    suffixes = list(AUDIO)
    damaged = []
    for k in range(2):
        suffix = suffixes[int(rng.integers(len(suffixes)))]
        damaged.append(tmp_path / f"damaged{k}{suffix}")
        damaged[-1].write_bytes(mutate(audio_sources[suffix], MUTATIONS[int(rng.integers(len(MUTATIONS)))], rng))
    extra, out_suffix = BATCH_COMMANDS[command]
    out = tmp_path / "out"
    capfd.readouterr()
    code = main([command, *extra, *map(str, good + damaged), "--output-dir", str(out), "--quiet"])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    for g in good:
        assert (out / f"{g.stem}.{out_suffix}").exists(), (command, err)
    failed = [d for d in damaged if not (out / f"{d.stem}.{out_suffix}").exists()]
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("xlsr: error: ")]
    assert sorted(errors) == sorted(e for e in errors if any(str(d) in e for d in failed)) and len(errors) == len(
        failed
    )
    if failed:
        assert code == 1 and len(lines) == len(failed) + 1 and "failed" in lines[-1], err
    else:
        assert code == 0 and lines == [], err
