"""Transcription end to end: parity with transformers' batch_decode (transformers 5.23, random weights),
exact stitching of windows, output formats, timestamps, LM decoding, bad inputs, resuming, flat memory."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import hf_config, randomize, speechlike
from test_decoding import ARPA

from xlsr.cli import main
from xlsr.config import Preprocessing, preset
from xlsr.inference import WindowedRunner
from xlsr.models import Wav2Vec2Model
from xlsr.text.ctc_tokenizer import CTCTokenizer
from xlsr.transcribe import transcribe

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "S"]
SECONDS = (1.7, 0.6, 2.9, 1.1)


@pytest.fixture(scope="module")
def hf_ctc(tmp_path_factory):
    """A random transformers Wav2Vec2ForCTC with its processor, saved by transformers itself."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    root = tmp_path_factory.mktemp("hf_ctc")
    torch.manual_seed(0)
    model = randomize(Wav2Vec2ForCTC(hf_config(vocab_size=len(VOCAB), pad_token_id=0)), scale=0.3).eval()
    model.save_pretrained(root / "model")
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    tok = Wav2Vec2CTCTokenizer(str(root / "vocab.json"), word_delimiter_token="|")
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(root / "model")
    files = []
    for i, s in enumerate(SECONDS):
        files.append(root / f"utt{i}.wav")
        sf.write(files[-1], speechlike(s, seed=10 + i), 16000, subtype="FLOAT")
    return root / "model", files


def test_greedy_equals_transformers_batch_decode_batched_and_unbatched(hf_ctc):
    from transformers import AutoProcessor, Wav2Vec2ForCTC

    model_dir, files = hf_ctc
    processor = AutoProcessor.from_pretrained(model_dir)
    hf = Wav2Vec2ForCTC.from_pretrained(model_dir).eval()
    audio = [sf.read(f, dtype="float32")[0] for f in files]
    with torch.no_grad():
        alone = []
        for a in audio:
            logits = hf(**processor(a, sampling_rate=16000, return_tensors="pt")).logits
            alone.append(processor.batch_decode(logits.argmax(-1))[0])
        inputs = processor(audio, sampling_rate=16000, return_tensors="pt", padding=True)
        logits = hf(**inputs).logits
    frames = hf._get_feat_extract_output_lengths(inputs.attention_mask.sum(-1))
    batched = [processor.batch_decode(logits[i : i + 1, :n].argmax(-1))[0] for i, n in enumerate(frames.tolist())]
    assert batched == alone and len(set(alone)) == len(alone) and all(len(t) > 3 for t in alone)
    one_by_one = [transcribe(model_dir, [f], chunk_seconds=0, batch_seconds=0.1, quiet=True)[0].text for f in files]
    together = [t.text for t in transcribe(model_dir, files, chunk_seconds=0, batch_seconds=100, quiet=True)]
    assert one_by_one == alone
    assert together == alone


def local_ctc_model() -> Wav2Vec2Model:
    """A CTC model whose frames only see nearby audio (attention, FFN and positional conv zeroed), without
    per-window normalisation: chunking cannot change its outputs, so stitching must be exact."""
    torch.manual_seed(0)
    model = randomize(Wav2Vec2Model(preset("tiny", head="ctc", vocab_size=len(VOCAB))), scale=0.3).eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attn.out_proj.weight.zero_(), layer.self_attn.out_proj.bias.zero_()
            layer.fc2.weight.zero_(), layer.fc2.bias.zero_()
        model.encoder.pos_conv.weight_g.zero_(), model.encoder.pos_conv.bias.zero_()
        # shift each output so that every token (the word delimiter too) wins some frames
        logits = model(torch.from_numpy(speechlike(20.0, seed=99))[None])[0]
        model.head.proj.bias -= torch.quantile(logits, 0.9, dim=0)
    model.tokenizer = CTCTokenizer(VOCAB)
    model.preprocessing = Preprocessing(do_normalize=False)
    return model


@pytest.mark.parametrize("chunk, stride, batch", [(4.0, 1.0, 3.0), (3.3, 0.5, 30.0), (2.0, 0.02, 1.0)])
def test_windows_stitch_exactly(tmp_path, chunk, stride, batch):
    model = local_ctc_model()
    lengths = (13.37, 3.0, 0.5, 7.02)
    paths = []
    for i, s in enumerate(lengths):
        paths.append(tmp_path / f"{i}.flac")
        sf.write(paths[-1], speechlike(s, seed=i), 16000)
    forward = lambda w, n: model(w, n)  # noqa: E731
    whole = {d.item: d.outputs for d in WindowedRunner.for_model(model, forward, 0, 0, 1000).run(paths)}
    chunked = {d.item: d.outputs for d in WindowedRunner.for_model(model, forward, chunk, stride, batch).run(paths)}
    for i, s in enumerate(lengths):
        assert whole[i].shape == chunked[i].shape == ((int(s * 16000) - 400) // 320 + 1, len(VOCAB))
        np.testing.assert_allclose(chunked[i], whole[i], atol=1e-4)


def test_chunked_transcripts_agree_with_unchunked(tmp_path):
    model = local_ctc_model()
    sf.write(tmp_path / "long.wav", speechlike(61.3, seed=3), 16000)
    whole = transcribe(model, [tmp_path / "long.wav"], chunk_seconds=0, format="json", quiet=True)[0]
    chunked = transcribe(model, [tmp_path / "long.wav"], chunk_seconds=10, stride_seconds=2, quiet=True)[0]
    assert chunked.text == whole.text and len(chunked.words) > 20
    assert [(w.word, w.start) for w in chunked.words] == [(w.word, w.start) for w in whole.words]


def test_output_formats_and_timestamps(hf_ctc, tmp_path, capsys):
    model_dir, files = hf_ctc
    for fmt in ("txt", "json", "srt", "vtt", "tsv"):
        assert (
            main(
                [
                    "transcribe",
                    str(model_dir),
                    *map(str, files),
                    "--output-dir",
                    str(tmp_path),
                    "--format",
                    fmt,
                    "--quiet",
                ]
            )
            == 0
        )
    text = transcribe(model_dir, [files[2]], quiet=True)[0].text
    assert (tmp_path / "utt2.txt").read_text() == text + "\n"
    data = json.loads((tmp_path / "utt2.json").read_text())
    assert data["text"] == text and data["error"] is None and data["duration"] == pytest.approx(2.9)
    assert data["model"].startswith("Hugging Face directory")
    words = data["words"]
    assert " ".join(w["word"] for w in words) == " ".join(text.split())
    assert all(0 <= w["start"] < w["end"] <= 2.9 and 0 < w["confidence"] <= 1 for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))
    srt = (tmp_path / "utt2.srt").read_text()
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    vtt = (tmp_path / "utt2.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n00:00:0")
    tsv = (tmp_path / "utt2.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and " ".join(r.split("\t")[2] for r in tsv[1:]) == " ".join(text.split())
    # stdout has the same shape whatever the number of files: `path<TAB>text` lines, JSON Lines
    for inputs in (files[:1], files):
        assert main(["transcribe", str(model_dir), *map(str, inputs), "--quiet"]) == 0
        expected = [f"{f}\t{(tmp_path / (f.stem + '.txt')).read_text().rstrip()}" for f in inputs]
        assert capsys.readouterr().out.splitlines() == expected
        assert main(["transcribe", "--model", str(model_dir), *map(str, inputs), "--format", "json", "--quiet"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert [json.loads(line)["path"] for line in lines] == list(map(str, inputs))  # input order
    assert not list(tmp_path.glob(".*"))  # no temporaries


def test_srt_vtt_tsv_on_stdout_take_one_audio_file_and_more_are_refused_before_any_work(
    hf_ctc, tmp_path, capsys, monkeypatch
):
    model_dir, files = hf_ctc
    assert main(["transcribe", "--model", str(model_dir), str(files[2]), "--format", "srt", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert main(["transcribe", "--model", str(model_dir), str(files[2]), "--format", "srt", "--output-dir",
                 str(tmp_path), "--quiet"]) == 0  # fmt: skip
    assert printed == (tmp_path / "utt2.srt").read_text() and printed.startswith("1\n00:00:0")

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")

    for command, formats in (("transcribe", ["srt", "vtt", "tsv"]), ("identify", ["tsv"]), ("translate", ["srt"])):
        monkeypatch.setattr(importlib.import_module(f"xlsr.{command}"), command, no_work)
        for fmt in formats:
            for inputs in (files[:2], [files[0].parent]):  # several files, a folder
                assert main([command, *map(str, inputs), "--format", fmt, "--quiet"]) == 1
                assert capsys.readouterr().err == (
                    f"xlsr: error: --format {fmt} prints one audio file; for several, a folder or a data source "
                    "give --output-dir (one file per input)\n"
                )


def test_audio_without_speech_is_an_empty_text_said_to_be_no_speech(hf_ctc, tmp_path, capsys):
    model_dir, files = hf_ctc
    sf.write(tmp_path / "silence.wav", np.zeros(3 * 16000, dtype=np.float32), 16000)
    inputs = [str(tmp_path / "silence.wav"), str(files[2])]
    text = transcribe(model_dir, [files[2]], quiet=True)[0].text
    assert text  # the random model says something for speech-like audio, so an empty text means no speech
    assert main(["transcribe", "--model", str(model_dir), *inputs]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"{inputs[0]}\t", f"{inputs[1]}\t{text}"]
    assert f"xlsr: note: {inputs[0]}: no speech found (--no-speech-check processes it anyway)" in out.err.splitlines()
    assert main(["transcribe", "--model", str(model_dir), *inputs, "--format", "json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["no_speech"]) for r in rows] == [("", True), (text, False)]
    assert main(["transcribe", "--model", str(model_dir), inputs[0], "--no-speech-check", "--quiet"]) == 0
    assert "no speech" not in capsys.readouterr().err


def test_lm_decoding_outputs_only_lexicon_words(hf_ctc, tmp_path):
    model_dir, files = hf_ctc
    (tmp_path / "lm.arpa").write_text(ARPA.replace("cab", "eat").replace("bad", "ten").replace("dab", "tie"))
    out = transcribe(
        model_dir, files, lm=str(tmp_path / "lm.arpa"), lm_weight=1.0, word_score=2.0, beam_size=20, quiet=True
    )
    words = {w for t in out for w in t.text.split()}
    assert words and words <= {"EAT", "TEN", "TIE"}
    hot = transcribe(
        model_dir,
        files[:1],
        lm=str(tmp_path / "lm.arpa"),
        hotwords=("SIT",),
        hotword_weight=50.0,
        word_score=2.0,
        quiet=True,
    )
    assert "SIT" in hot[0].text.split()


def test_bad_inputs_fail_alone_and_the_rest_is_written(hf_ctc, tmp_path, capsys):
    model_dir, files = hf_ctc
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.wav").write_text("not audio at all")
    sf.write(bad / "zero.wav", np.zeros(0, np.float32), 16000)
    sf.write(bad / "tiny.wav", np.zeros(100, np.float32), 16000)
    good = sf.read(files[1])[0]
    sf.write(bad / "cut.flac", np.tile(good, 20), 16000)
    data = (bad / "cut.flac").read_bytes()
    (bad / "cut.flac").write_bytes(data[: len(data) // 2])
    (tmp_path / "noaudio").mkdir()
    inputs = [
        str(files[0]),
        *map(str, sorted(bad.iterdir())),
        str(tmp_path / "noaudio"),
        str(tmp_path / "nope.wav"),
        str(files[3]),
    ]
    code = main(["transcribe", str(model_dir), *inputs, "--output-dir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) in (
        ["cut.txt", "utt0.txt", "utt3.txt"],
        ["utt0.txt", "utt3.txt"],
    )  # a truncated flac may decode in part
    reasons = {
        "empty.wav": "empty",
        "notes.wav": "not a readable audio file",
        "zero.wav": "no audio samples",
        "tiny.wav": "too short",
        "noaudio": "no audio files",
        "nope.wav": "no such file",
    }
    for name, reason in reasons.items():
        assert any(name in line and reason in line for line in err), name
    assert all(line.startswith("xlsr: ") for line in err) and "failed" in err[-1]


def test_skip_existing_resumes_without_rewriting(hf_ctc, tmp_path):
    model_dir, files = hf_ctc
    out = tmp_path / "out"
    transcribe(model_dir, files[:2], output_dir=out, quiet=True)
    (out / "utt0.txt").write_text("kept\n")
    results = transcribe(model_dir, files, output_dir=out, skip_existing=True, quiet=True)
    assert [r.skipped for r in results] == [True, True, False, False]
    assert (out / "utt0.txt").read_text() == "kept\n" and (out / "utt3.txt").exists()


def test_manifest_input_and_relative_paths(hf_ctc, tmp_path):
    model_dir, files = hf_ctc
    (tmp_path / "m.tsv").write_text("path\tlang\n" + "".join(f"{f}\ten\n" for f in files[:2]))
    assert [t.path for t in transcribe(model_dir, [tmp_path / "m.tsv"], quiet=True)] == list(map(str, files[:2]))


def test_a_model_without_ctc_head_cannot_transcribe(tmp_path, capsys):
    assert main(["init", str(tmp_path / "m")]) == 0
    sf.write(tmp_path / "a.wav", speechlike(0.5), 16000)
    assert main(["transcribe", str(tmp_path / "m"), str(tmp_path / "a.wav")]) == 1
    assert "has no CTC head" in capsys.readouterr().err


MEMORY_PROBE = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from test_transcribe import local_ctc_model
from xlsr.transcribe import transcribe
model = local_ctc_model()
transcribe(model, [sys.argv[1]], chunk_seconds=20, stride_seconds=2, batch_seconds=40, quiet=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_recording_length(tmp_path):
    """30 minutes of 48 kHz stereo (330 MB as float32 once decoded) needs no more memory than 1 minute.
    (Same settings for both; 1 minute makes 4 windows, enough to fill the 2-window batches.)"""
    rng = np.random.default_rng(0)
    minute = (0.1 * rng.standard_normal((48000 * 60, 2))).astype(np.float32)
    with sf.SoundFile(tmp_path / "long.wav", "w", 48000, 2, subtype="PCM_16") as f:
        for _ in range(30):
            f.write(minute)
    sf.write(tmp_path / "short.wav", minute, 48000, subtype="PCM_16")
    probe = MEMORY_PROBE.format(tests=str(Path(__file__).parent))
    peak = {}
    for name in ("short", "long"):
        out = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path / f"{name}.wav")], capture_output=True, text=True, check=True
        )
        peak[name] = int(out.stdout.split()[-1]) / 1024
    assert peak["long"] < 1.2 * peak["short"], peak
