"""`xlsr finetune ctc`: vocabulary, data filtering, freezing, resume, DDP, and the exported directory."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speechlike

from xlsr.checkpoints import init, load_model, save_hf_dir
from xlsr.checkpoints.io import safe_torch_load
from xlsr.errors import ConfigError, DataError
from xlsr.finetuning.ctc import CTCConfig, CTCTask, build_vocab, ctc_feasible, finetune_ctc
from xlsr.text.normalize import normalize_text
from xlsr.training.config import build_config

# No dropout anywhere, so that runs can be compared weight for weight.
QUIET = [
    "num_workers=0",
    "max_tokens=200000",
    "log_interval=1",
    "lr=5e-3",
    "layerdrop=0.0",
    "activation_dropout=0.0",
    "model.dropout_input=0.0",
    "mask_channel_length=4",
    "validate_interval_updates=2",
    "save_interval_updates=2",
]
WORDS = ["ba", "di", "ku", "lo", "me", "na", "pi", "ro", "su", "ta"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctc")
    rng = np.random.default_rng(0)
    rows = ["path\tsamples\tlang\ttext"]
    for i in range(14):
        x = speechlike(1.0 + (i % 3) * 0.5, seed=i)
        sf.write(root / f"u{i}.wav", x, 16000)
        text = " ".join(rng.choice(WORDS, 3)).capitalize() + "."
        rows.append(f"u{i}.wav\t{len(x)}\tfr\t{text}")
    short = np.zeros(3200, dtype=np.float32)  # 0.2 s: 9 frames, too few for its label
    sf.write(root / "short.wav", short, 16000)
    rows.append("short.wav\t3200\tfr\tthis label is far longer than nine frames")
    (root / "train.tsv").write_text("\n".join(rows[:12] + rows[15:]) + "\n")
    (root / "valid.tsv").write_text("\n".join([rows[0], *rows[12:15]]) + "\n")
    init(root / "init", preset="tiny", seed=0)
    return root


def test_vocabulary_avoids_delimiter_clashes_and_round_trips_through_transformers(tmp_path):
    from transformers import Wav2Vec2CTCTokenizer

    texts = [normalize_text(t) for t in ("Ça va, très bien !", "L'été à Zürich")]
    tok = build_vocab(texts)
    assert tok.word_delimiter_token == "|" and tok.tokens[:4] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert {"ç", "é", "ü", "'"} <= set(tok.tokens) and " " not in tok.tokens and "," not in tok.tokens
    piped = build_vocab(["a|b c"])  # a transcript that really uses "|": the delimiter must be something else
    assert piped.word_delimiter_token == "▁" and "|" in piped.tokens
    assert piped.decode(piped.encode("a|b c")) == "a|b c"
    for name, content in tok.hf_files().items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    hf = Wav2Vec2CTCTokenizer.from_pretrained(tmp_path)
    for text in texts:
        ids = tok.encode(text)
        assert hf(text).input_ids == ids
        assert hf.decode(ids) == tok.decode(ids) == text
    with pytest.raises(DataError, match="word delimiter"):
        build_vocab(["| ▁ ¦ \u2423"])


def test_labels_longer_than_the_frames_are_dropped_with_a_count(corpus, caplog):
    assert ctc_feasible([1, 2, 3], 3) and not ctc_feasible([1, 1, 2], 3) and ctc_feasible([1, 1, 2], 4)
    cfg = build_config(CTCConfig, None, QUIET)
    task = CTCTask(cfg, corpus / "train.tsv", corpus / "valid.tsv", str(corpus / "init"))
    model = task.build_model()
    from xlsr.training.distributed import World

    with caplog.at_level(logging.WARNING, logger="xlsr"):
        train, *_ = task.datasets(model, World())
        task.describe_data(train, task.datasets(model, World())[2])
    assert len(train) == 11 and all(u.path.name != "short.wav" for u in train.utterances)
    assert task.dropped["train"]["label longer than the frames"] == 1
    assert "train: 1 utterances dropped: label longer than the frames" in caplog.text


def test_the_encoder_is_frozen_for_freeze_finetune_updates_and_the_feature_encoder_always(corpus, tmp_path):
    start = load_model(corpus / "init").state_dict()
    args = [*QUIET, "freeze_finetune_updates=2", "lr_scheduler=fixed"]
    data = (str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv", tmp_path)
    # (a run that stops while frozen is refused: only the head would train; so look at update 2 of 3)
    finetune_ctc(*data, set=[*args, "max_update=3"], quiet=True)
    after2 = safe_torch_load(tmp_path / "checkpoints" / "checkpoint_2.pt")["model"]
    for k, v in after2.items():
        if k.startswith("head."):
            assert not torch.equal(v, torch.zeros_like(v)), k
        else:
            torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=k)  # not a single bit moved
    finetune_ctc(*data, set=[*args, "max_update=4"], quiet=True)
    after4 = safe_torch_load(tmp_path / "checkpoints" / "checkpoint_last.pt")["model"]
    assert not torch.equal(after4["encoder.layers.0.fc1.weight"], start["encoder.layers.0.fc1.weight"])
    for k in start:
        if k.startswith("feature_encoder."):
            torch.testing.assert_close(after4[k], start[k], rtol=0, atol=0, msg=k)


def test_resuming_from_a_checkpoint_gives_the_same_model_as_an_uninterrupted_run(corpus, tmp_path):
    args = [*QUIET, "freeze_finetune_updates=1", "max_update=4", "keep_interval_updates=5"]
    go = lambda out: finetune_ctc(str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv", out, set=args,  # noqa: E731
                                  quiet=True)  # fmt: skip
    go(tmp_path / "whole")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(
        tmp_path / "whole" / "checkpoints" / "checkpoint_2.pt",
        tmp_path / "resumed" / "checkpoints" / "checkpoint_last.pt",
    )
    go(tmp_path / "resumed")
    a, b = (safe_torch_load(tmp_path / d / "checkpoints" / "checkpoint_last.pt") for d in ("whole", "resumed"))
    assert a["update"] == b["update"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)


def test_the_best_directory_loads_in_transformers_with_the_same_logits_and_transcripts(corpus, tmp_path):
    from transformers import AutoProcessor, Wav2Vec2ForCTC, pipeline

    from xlsr.transcribe import transcribe

    finetune_ctc(str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv", tmp_path,
                 set=[*QUIET, "freeze_finetune_updates=0", "max_update=2"], quiet=True)  # fmt: skip
    best = tmp_path / "best"
    ours = load_model(best)
    hf = Wav2Vec2ForCTC.from_pretrained(best).eval()
    processor = AutoProcessor.from_pretrained(best)
    audio = [speechlike(1.3, seed=40), speechlike(0.9, seed=41)]
    inputs = processor(audio, sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = hf(inputs.input_values, attention_mask=inputs.attention_mask).logits
        lengths = inputs.attention_mask.sum(-1)
        got = ours(inputs.input_values, lengths)
    frames = ours.frame_lengths(lengths)
    for b in range(2):
        torch.testing.assert_close(got[b, : frames[b]], expected[b, : frames[b]], atol=1e-4, rtol=1e-4)
    path = corpus / "u13.wav"
    asr = pipeline("automatic-speech-recognition", model=str(best))
    raw, _ = sf.read(path, dtype="float32")  # (the pipeline would need ffmpeg to read a file itself)
    assert transcribe(best, [path], quiet=True)[0].text == asr({"raw": raw, "sampling_rate": 16000})["text"]
    assert (
        ours.tokenizer.tokens
        == build_vocab(
            [normalize_text(line.split("\t")[3]) for line in (corpus / "train.tsv").read_text().splitlines()[1:]]
        ).tokens
    )


def test_blank_only_output_gets_a_warning_that_names_the_usual_causes(caplog):
    cfg = build_config(CTCConfig, None, ["freeze_finetune_updates=10", "blank_warning_updates=100"])
    task = CTCTask(cfg, "t.tsv", "v.tsv", "init")
    with caplog.at_level(logging.WARNING, logger="xlsr"):
        task.check({"nonblank_share": 0.0}, 5)  # frozen: blanks are expected
        task.check({"nonblank_share": 0.0}, 50)
        task.check({"nonblank_share": 0.2}, 100)  # it recovered: the count restarts
        task.check({"nonblank_share": 0.0}, 120)
        task.check({"nonblank_share": 0.0}, 200)
        assert "only blanks" not in caplog.text
        task.check({"nonblank_share": 0.0}, 220)
    assert "only blanks for 100 updates (since update 120)" in caplog.text and "learning rate" in caplog.text


def test_the_best_checkpoint_metric_is_chosen_by_config():
    assert CTCTask(build_config(CTCConfig, None, []), "t.tsv", "v.tsv", "init").best_metric == "wer"  # fairseq
    cfg = build_config(CTCConfig, None, ["best_checkpoint_metric=cer"])
    assert CTCTask(cfg, "t.tsv", "v.tsv", "init").best_metric == "cer"
    with pytest.raises(ConfigError, match="best_checkpoint_metric must be one of wer, cer, loss, got 'bleu'"):
        build_config(CTCConfig, None, ["best_checkpoint_metric=bleu"])


def test_two_processes_fine_tune_the_same_model_as_one(corpus, tmp_path):
    common = ["finetune", "ctc", "--init", str(corpus / "init"), "--train", str(corpus / "train.tsv"), "--valid",
              str(corpus / "valid.tsv"), "--quiet", "--set", *QUIET, "freeze_finetune_updates=1", "max_update=3",
              "max_tokens=60000"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "xlsr", *common, "update_freq=2", "--output-dir", tmp_path / "one"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(29700 + os.getpid() % 1000), "-m", "xlsr"]  # fmt: skip
    two = subprocess.run([*launch, *common, "update_freq=1", "--output-dir", tmp_path / "two"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (safe_torch_load(tmp_path / d / "checkpoints" / "checkpoint_last.pt") for d in ("one", "two"))
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=2e-5, rtol=1e-4, msg=k)
    assert (tmp_path / "two" / "best" / "config.json").exists()


def test_characters_missing_from_the_vocabulary_are_named_with_counts_and_the_fix(corpus, tmp_path, caplog):
    from xlsr.config import preset
    from xlsr.models import Wav2Vec2Model
    from xlsr.training.distributed import World

    small = build_vocab(["ba di"])  # lacks k, u, l, o, m, e, n, p, i... of the other words
    (tmp_path / "vocab").mkdir()
    for name, content in small.hf_files().items():
        (tmp_path / "vocab" / name).write_text(content, encoding="utf-8")
    cfg = build_config(CTCConfig, None, QUIET)
    task = CTCTask(cfg, corpus / "train.tsv", corpus / "valid.tsv", str(corpus / "init"), vocab=str(tmp_path / "vocab"))
    model = task.build_model()
    with caplog.at_level(logging.WARNING, logger="xlsr"):
        task.datasets(model, World())
    (line, *_) = [r.getMessage() for r in caplog.records if "not in the vocabulary" in r.getMessage()]
    texts = [normalize_text(r.split("\t")[3]) for r in (corpus / "train.tsv").read_text().splitlines()[1:]]
    missing = {c: sum(t.count(c) for t in texts) for c in set("".join(texts)) - set("badi ")}
    top = max(missing, key=lambda c: (missing[c], c))
    assert (
        f"{sum(missing.values())} characters are not in the vocabulary" in line and f"{top!r} x{missing[top]}" in line
    )
    assert line.endswith("drop --vocab to build a vocabulary from the training transcripts")
    # a CTC model as --init keeps its vocabulary, and says how to get a new one; new_vocab=true builds it
    ctc = Wav2Vec2Model(preset("tiny", head="ctc", vocab_size=len(small)))
    save_hf_dir(ctc, tmp_path / "ctc", small)
    caplog.clear()
    task = CTCTask(cfg, corpus / "train.tsv", corpus / "valid.tsv", str(tmp_path / "ctc"))
    with caplog.at_level(logging.WARNING, logger="xlsr"):
        task.datasets(task.build_model(), World())
    assert "--set new_vocab=true builds a vocabulary from the training transcripts" in caplog.text
    fresh = CTCTask(build_config(CTCConfig, None, [*QUIET, "new_vocab=true"]), corpus / "train.tsv",
                    corpus / "valid.tsv", str(tmp_path / "ctc"))  # fmt: skip
    assert fresh.build_model().tokenizer.tokens == build_vocab(texts).tokens
    with pytest.raises(ConfigError, match="new_vocab=true builds the vocabulary from the training transcripts: drop"):
        CTCTask(build_config(CTCConfig, None, ["new_vocab=true"]), "t.tsv", "v.tsv", "init", vocab="vocab.json")


def test_a_run_that_would_train_only_the_head_is_refused_before_anything_is_loaded(corpus, tmp_path):
    with pytest.raises(ConfigError) as e:
        finetune_ctc(str(tmp_path / "no_such_model"), corpus / "train.tsv", corpus / "valid.tsv", tmp_path / "out",
                     set=["freeze_finetune_updates=500", "max_update=500"], quiet=True)  # fmt: skip
    assert str(e.value) == (
        "freeze_finetune_updates=500 is not below max_update=500: only the new head would ever train; lower "
        "freeze_finetune_updates (fairseq's XLS-R recipe: 10000 of 20000 updates) or raise max_update"
    )
    assert not (tmp_path / "out").exists()
