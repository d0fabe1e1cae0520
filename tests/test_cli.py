"""The command line: each command's output, and one-line errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike

from xlsr.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "tiny"
    assert main(["init", str(out), "--preset", "tiny"]) == 0
    return out


def test_init_and_info(tiny_model, capsys):
    assert main(["info", str(tiny_model)]) == 0
    text = capsys.readouterr().out
    assert "pre-LN" in text and "2 layers, dim 32" in text and "codebook      2 groups x 16 entries" in text
    assert main(["info", str(tiny_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layers"] == 2 and data["frame_ms"] == 20 and data["parameters"] > data["encoder_parameters"]


def test_convert_fairseq_ctc_then_info_shows_the_vocabulary(fixtures_dir, tmp_path, capsys):
    assert main(["convert", str(fixtures_dir / "ctc.pt"), str(tmp_path / "hf")]) == 0
    assert "ctc head" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "vocabulary    32 tokens: <pad> <s> </s> <unk> | E T A" in out and "Hugging Face directory" in out


def test_features_one_file_many_files_and_layers(tiny_model, tmp_path, capsys):
    for i, seconds in enumerate((1.0, 0.5)):
        sf.write(tmp_path / f"u{i}.wav", speechlike(seconds, seed=i), 16000)
    assert main(["features", str(tiny_model), str(tmp_path / "u0.wav"), "--out", str(tmp_path / "one.npy")]) == 0
    assert np.load(tmp_path / "one.npy").shape == (49, 32)  # 1 s = 49 frames of 20 ms (25 ms window)
    feats = ["--output-dir", str(tmp_path / "feats"), "--layer", "0"]
    assert main(["features", str(tiny_model), str(tmp_path), *feats]) == 0
    assert np.load(tmp_path / "feats" / "u1.npy").shape == (24, 32)
    assert not np.allclose(np.load(tmp_path / "feats" / "u0.npy"), np.load(tmp_path / "one.npy"))


def test_features_pool_mean_is_one_vector_per_file_as_transformers_computes_it(tiny_model, tmp_path):
    import torch
    from transformers import Wav2Vec2Model

    x = speechlike(7.0, seed=4)
    sf.write(tmp_path / "long.wav", x, 16000, subtype="FLOAT")
    ref = Wav2Vec2Model.from_pretrained(tiny_model).eval()
    normed = torch.from_numpy((x - x.mean()) / np.sqrt(x.var() + 1e-7))[None]
    with torch.no_grad():
        out = ref(normed, output_hidden_states=True)
    for layer, expected in ((None, out.last_hidden_state), ("1", out.hidden_states[1])):
        extra = [] if layer is None else ["--layer", layer]
        assert main(["features", str(tiny_model), str(tmp_path / "long.wav"), "--pool", "mean", "--quiet",
                     "--output-dir", str(tmp_path / f"pooled{layer}"), *extra]) == 0  # fmt: skip
        got = np.load(tmp_path / f"pooled{layer}" / "long.npy")
        assert got.shape == (32,)
        np.testing.assert_allclose(got, expected[0].mean(0).numpy(), atol=1e-4)
    # in windows, the mean is the mean of the windowed frames, accumulated as they come
    assert main(["features", str(tiny_model), str(tmp_path / "long.wav"), "--chunk-seconds", "2", "--quiet",
                 "--stride-seconds", "0.5", "--output-dir", str(tmp_path / "frames")]) == 0  # fmt: skip
    assert main(["features", str(tiny_model), str(tmp_path / "long.wav"), "--chunk-seconds", "2", "--quiet",
                 "--stride-seconds", "0.5", "--pool", "mean", "--output-dir", str(tmp_path / "win")]) == 0  # fmt: skip
    frames = np.load(tmp_path / "frames" / "long.npy")
    np.testing.assert_allclose(np.load(tmp_path / "win" / "long.npy"), frames.mean(0), atol=1e-6)


FEATURES_PROBE = """
import resource, sys
from xlsr.features import features
features(sys.argv[1], [sys.argv[2]], output_dir=sys.argv[3], pool=sys.argv[4] or None, chunk_seconds=20,
         stride_seconds=2, batch_seconds=40, quiet=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_features_peak_memory_does_not_grow_with_recording_length(tiny_model, tmp_path):
    """6 minutes of 48 kHz stereo (138 MB as float32 once decoded) need no more memory than 1 minute, frames
    or their mean alike: the file is read and encoded window by window (only the (frames, dim) output grows)."""
    rng = np.random.default_rng(0)
    minute = (0.1 * rng.standard_normal((48000 * 60, 2))).astype(np.float32)
    with sf.SoundFile(tmp_path / "long.wav", "w", 48000, 2, subtype="PCM_16") as f:
        for _ in range(6):
            f.write(minute)
    sf.write(tmp_path / "short.wav", minute, 48000, subtype="PCM_16")
    for pool in ("", "mean"):
        peak = {}
        for name in ("short", "long"):
            args = [str(tiny_model), str(tmp_path / f"{name}.wav"), str(tmp_path / f"out{pool}"), pool]
            run = subprocess.run([sys.executable, "-c", FEATURES_PROBE, *args], capture_output=True, text=True)
            assert run.returncode == 0, run.stderr[-2000:]
            peak[name] = int(run.stdout.split()[-1]) / 1024
        assert peak["long"] < 1.2 * peak["short"], (pool, peak)
    assert np.load(tmp_path / "out" / "long.npy").shape == (6 * 60 * 50 - 1, 32)
    assert np.load(tmp_path / "outmean" / "long.npy").shape == (32,)


def test_features_bad_files_fail_alone_with_one_line_each(tiny_model, tmp_path, capsys):
    sf.write(tmp_path / "good.wav", speechlike(0.6), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("hello")
    args = [str(tmp_path / n) for n in ("good.wav", "empty.wav", "text.wav", "missing.wav")]
    code = main(["features", str(tiny_model), *args, "--output-dir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert (tmp_path / "out" / "good.npy").exists()
    assert len(err) == 4 and err[-1] == "xlsr: 1 feature files done, 3 failed"
    assert all(line.startswith("xlsr: error: ") for line in err[:3])
    assert any("empty.wav" in line and "empty" in line for line in err)
    assert any("missing.wav" in line and "no such file" in line for line in err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "no/such/model"], "no/such/model: no such file or directory"),
        (["init", "{out}", "--preset", "xlsr-3b"], "unknown preset 'xlsr-3b'"),
        (["features", "{model}", "x.wav", "--output-dir", "o", "--layer", "9"], "--layer must be between 0 and 2"),
        (["features", "{model}", "x.wav", "--output-dir", "o", "--device", "cuda:0"], "cuda"),
    ],
)
def test_user_errors_are_one_line(argv, message, tiny_model, tmp_path, capsys):
    argv = [a.format(model=tiny_model, out=tmp_path / "new") for a in argv]
    if "--device" in argv and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xlsr: error: ") and message in err


def test_features_and_translate_read_a_manifest_by_its_audio_column(tiny_model, tmp_path):
    sf.write(tmp_path / "u.wav", speechlike(1.0, seed=0), 16000)
    (tmp_path / "m.tsv").write_text("wav\ttext\nu.wav\ta\n")
    args = ["features", "--model", str(tiny_model), str(tmp_path / "m.tsv"), "--output-dir", str(tmp_path / "f")]
    assert main(args) == 1  # no `path` or `audio` column
    assert main([*args, "--audio-column", "wav"]) == 0
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["u.npy"]
    assert main(["translate", str(tmp_path / "m.tsv"), "--audio-column", "wav", "--output-dir", str(tmp_path / "t"),
                 "--quiet"]) == 0  # fmt: skip
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["u.txt"]


def test_every_old_spelling_still_works_and_names_its_new_one_in_one_line(tiny_model, tmp_path, capsys):
    sf.write(tmp_path / "u.wav", speechlike(1.0, seed=0), 16000)
    assert main(["features", "--model", str(tiny_model), str(tmp_path / "u.wav"), "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "u.npy").exists()
    assert capsys.readouterr().err.splitlines()[0] == (
        "xlsr: warning: features(out=...) / --out is now output_dir / --output-dir"
    )
    (tmp_path / "m.tsv").write_text(f"path\ttext\n{tmp_path / 'u.wav'}\ta\n")
    assert main(["evaluate", str(tmp_path / "m.tsv"), "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["overall"]["utterances"] == 1
    assert capsys.readouterr().err.splitlines() == [
        "xlsr: warning: evaluate(json_path=...) / --json PATH is now output_dir / --output-dir DIR (writes "
        "DIR/report.json)"
    ]
    missing = ["--train", str(tmp_path / "none.tsv"), "--valid", str(tmp_path / "none.tsv")]
    finetune = (["finetune", task, "--init", str(tiny_model)] for task in ("ctc", "classify", "st"))
    for command in (["pretrain"], *finetune):
        assert main([*command, *missing, "--out", str(tmp_path / "run")]) == 1
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "xlsr: warning: --out is now --output-dir" and len(err) == 2, (command, err)
        assert err[1].startswith("xlsr: error: ") and "none.tsv" in err[1], (command, err)
        with pytest.raises(SystemExit) as e:
            main([*command, *missing])
        assert e.value.code == 2 and "one of the arguments --output-dir is required" in capsys.readouterr().err


def test_module_entry_point_and_help():
    out = subprocess.run([sys.executable, "-m", "xlsr", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("info", "convert", "features", "init"):
        assert command in out
    out = subprocess.run([sys.executable, "-m", "xlsr", "features", "--help"], capture_output=True, text=True).stdout
    assert "hidden_states[K]" in out
