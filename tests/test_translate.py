"""`xlsr translate`: the fairseq fixture's SequenceGenerator outputs (tests/fixtures/fairseq_st, written by fairseq
0.12 itself) reproduced end to end from audio files, formats, segmentation, language selection and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from xlsr.checkpoints import bundled_model
from xlsr.cli import main
from xlsr.errors import ConfigError
from xlsr.translate import translate


@pytest.fixture
def clips(st_fixtures, tmp_path):
    paths = []
    for n in "ab":
        paths.append(tmp_path / f"{n}.wav")
        sf.write(paths[-1], np.load(st_fixtures / f"wave_{n}.npy"), 16000, subtype="FLOAT")  # exact float32
    return paths


@pytest.mark.parametrize("beam", [1, 4])
def test_translations_equal_fairseq_sequence_generator(st_fixtures, clips, beam):
    """fairseq's generator on the fixture (max_len_b 10, lang tag forced): the tokens after the tag, without </s>."""
    reference = json.loads((st_fixtures / "generate.json").read_text())[f"fairseq_generator_beam{beam}"]
    out = translate(st_fixtures / "st.pt", clips, target_lang="en", beam_size=beam, max_len_b=10, quiet=True)
    assert [t.tokens for t in out] == [[x for x in ref[1:] if x != 2] for ref in reference]
    assert all(t.error is None and t.target_lang == "en_XX" for t in out)


def test_json_srt_and_segments_of_a_long_recording(st_fixtures, clips, tmp_path):
    """Two clips with 2 s of silence between them, segments of at most 2 s: cut in the pause, times carried."""
    a, b = (sf.read(c, dtype="float32")[0] for c in clips)
    sf.write(tmp_path / "long.wav", np.concatenate([a, np.zeros(32000, np.float32), b]), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    args = ["translate", "--model", str(st_fixtures / "st.pt"), str(tmp_path / "long.wav"), "--max-len-b", "5"]
    assert main([*args, "--segment-seconds", "2", "--output-dir", str(out), "--format", "json", "--quiet"]) == 0
    data = json.loads((out / "long.json").read_text())
    starts = [s["start"] for s in data["segments"]]
    assert len(starts) >= 2 and starts[0] == 0 and all(s["end"] - s["start"] <= 2.0 + 1e-6 for s in data["segments"])
    assert any(1.5 <= s["end"] <= 3.5 for s in data["segments"][:-1])  # the first cut lies in the pause
    assert (
        data["text"]
        and data["tokens"]
        and data["duration"] == pytest.approx(len(a) / 16000 + 2 + len(b) / 16000, abs=1e-3)
    )
    assert main([*args, "--segment-seconds", "2", "--output-dir", str(out), "--format", "srt", "--quiet"]) == 0
    assert (out / "long.srt").read_text().startswith("1\n00:00:00,000 --> 00:00:0")


def test_language_selection_and_bad_input(st_fixtures, clips, tmp_path, capsys):
    with pytest.raises(ConfigError, match="tlh") as e:
        translate(st_fixtures / "st.pt", clips[:1], target_lang="tlh", quiet=True)
    assert "\n" not in str(e.value) and "de_DE" in str(e.value)  # one line listing the model's languages
    de = translate(st_fixtures / "st.pt", clips[:1], target_lang="de_DE", beam_size=1, max_len_b=10, quiet=True)[0]
    assert de.target_lang == "de_DE"
    (tmp_path / "bad.wav").write_text("not audio")
    code = main(["translate", "--model", str(st_fixtures / "st.pt"), str(clips[0]), str(tmp_path / "bad.wav"),
                 "--max-len-b", "5", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1 and captured.out.startswith(f"{clips[0]}\t")
    assert captured.err.splitlines()[0].startswith(f"xlsr: error: {tmp_path / 'bad.wav'}: ")
    assert main(["translate", str(clips[0]), "--format", "json", "--quiet"]) == 0  # no model named: the bundled one
    assert "assets/model/st" in json.loads(capsys.readouterr().out)["model"]
    assert main(["translate", "--model", str(bundled_model("asr")), str(clips[0])]) == 1  # a CTC model
    assert "is not a speech-translation model" in capsys.readouterr().err


def test_a_converted_directory_translates_the_same(st_fixtures, clips, tmp_path):
    """fairseq .pt -> Hugging Face directory (with the sentencepiece tokenizer) -> the same translation."""
    assert main(["convert", str(st_fixtures / "st.pt"), str(tmp_path / "hf")]) == 0
    a = translate(st_fixtures / "st.pt", clips, beam_size=4, max_len_b=10, quiet=True)
    b = translate(tmp_path / "hf", clips, beam_size=4, max_len_b=10, quiet=True)
    assert [t.tokens for t in a] == [t.tokens for t in b] and [t.text for t in a] == [t.text for t in b]
    assert (tmp_path / "hf" / "sentencepiece.bpe.model").exists()


def test_transformers_pipeline_loads_a_written_directory_and_translates_the_same(st_fixtures, clips, tmp_path):
    """transformers 5.23's pipeline("automatic-speech-recognition") on the directory xlsr writes (weights,
    generation config, MBart50 sentencepiece tokenizer, feature extractor): the same text as xlsr translate."""
    from transformers import pipeline

    assert main(["convert", str(st_fixtures / "st.pt"), str(tmp_path / "hf")]) == 0
    ours = translate(tmp_path / "hf", clips[:1], target_lang="en", beam_size=1, max_new_tokens=9, quiet=True)[0]
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path / "hf"), device="cpu")
    tag = 68  # <lang:en_XX> in the fixture's dictionary; the tag, 9 tokens, then </s> forced at the maximum
    out = asr(sf.read(clips[0], dtype="float32")[0], generate_kwargs={"forced_bos_token_id": tag, "num_beams": 1,
                                                                      "max_new_tokens": 11})  # fmt: skip
    assert out["text"] == ours.text and ours.text.strip()


def test_info_describes_encoder_adapter_decoder_and_languages(st_fixtures, capsys):
    assert main(["info", str(st_fixtures / "st.pt")]) == 0
    out = capsys.readouterr().out
    assert "adapter       2 x conv (kernel 3, stride 2)" in out and "decoder       2 layers, dim 48" in out
    assert "vocabulary    118 tokens" in out and "languages     52: ar_AR" in out and "fairseq checkpoint" in out
    assert main(["info", str(st_fixtures / "st.pt"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == "speech_translation" and "en_XX" in data["languages"]
