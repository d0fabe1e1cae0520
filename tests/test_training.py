"""Training: configuration, data sampling, exact resume after SIGKILL, DDP on CPU (gloo) against one
process, non-finite guards, checkpoints that transformers loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speechlike

from xlsr.checkpoints import convert, init, load_model
from xlsr.checkpoints.io import safe_torch_load
from xlsr.data.dataset import BatchSampler, language_resample
from xlsr.data.manifest import read_manifest
from xlsr.errors import ConfigError, XlsrError
from xlsr.finetuning.classify import ClassificationTask, ClassifyConfig
from xlsr.finetuning.ctc import CTCConfig, CTCTask
from xlsr.pretraining.task import PretrainConfig, PretrainTask, pretrain
from xlsr.training.config import build_config, describe_config
from xlsr.training.schedule import ignored_options

TINY = ["max_tokens=100000", "max_sample_size=48000", "num_workers=0", "warmup_updates=2", "lr=2e-3",
        "log_interval=1", "model.dropout=0.0", "model.attention_dropout=0.0", "model.dropout_input=0.0",
        "model.dropout_features=0.0", "num_negatives=20"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rows = ["path\tsamples\tlang"]
    for i in range(16):
        x = speechlike(1.5 + (i % 4) * 0.5, seed=i)
        sf.write(root / f"u{i}.flac", x, 16000)
        rows.append(f"u{i}.flac\t{len(x)}\t{['fr', 'sw', 'yo'][i % 3]}")
    (root / "train.tsv").write_text("\n".join(rows[:13]) + "\n")
    (root / "valid.tsv").write_text("\n".join([rows[0], *rows[13:]]) + "\n")
    return root


def records(out: Path, split: str = "train") -> dict[int, dict]:
    """The last record of each update in log.jsonl."""
    found = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == split:
            found[r["update"]] = r
    return found


def test_training_commands_take_device_and_threads_as_every_command_does(corpus, tmp_path):
    from xlsr.cli import main

    threads = torch.get_num_threads()
    args = ["pretrain", "--train", str(corpus / "train.tsv"), "--output-dir", str(tmp_path / "run"), "--preset",
            "tiny", "--device", "cpu", "--threads", "1", "--quiet", "--set", *TINY, "max_update=1"]  # fmt: skip
    try:
        assert main(args) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "\ndevice: cpu\n" in resolved and "\nthreads: 1\n" in resolved
    with pytest.raises(ConfigError, match="--threads must be at least 1"):
        pretrain(corpus / "train.tsv", tmp_path / "bad", preset="tiny", set=[*TINY, "threads=0"], quiet=True)


def test_config_from_yaml_set_and_layout_defaults(corpus, tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-4\nmax_update: 7\nadam_betas: [0.9, 0.99]\nmodel:\n  dropout: 0.2\n")
    cfg = build_config(PretrainConfig, tmp_path / "c.yaml", ["max_update=9", "model.encoder_layerdrop=0.05"])
    assert cfg.lr == 1e-4 and cfg.max_update == 9 and cfg.adam_betas == (0.9, 0.99)
    assert cfg.model == {"dropout": 0.2, "encoder_layerdrop": 0.05}
    with pytest.raises(ConfigError, match="unknown config keys: max_updates"):
        build_config(PretrainConfig, None, ["max_updates=3"])
    with pytest.raises(ConfigError, match="unknown model keys: dropuot"):
        build_config(PretrainConfig, None, ["model.dropuot=0.1"])
    with pytest.raises(ConfigError, match="lr must be a float"):
        build_config(PretrainConfig, None, ["lr=fast"])
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        build_config(PretrainConfig, None, ["precision=fp8"])  # a closed set, checked before anything runs
    (tmp_path / "bad.yaml").write_text("lr_scheduler: cosine\n")
    with pytest.raises(ConfigError, match="lr_scheduler must be one of polynomial_decay, tri_stage, inverse_sqrt, fix"):
        build_config(PretrainConfig, tmp_path / "bad.yaml")
    pretrain(corpus / "train.tsv", tmp_path / "run", preset="tiny-base", set=[*TINY, "max_update=1"], quiet=True)
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    for line in ("latent_temp:\n- 2.0\n- 0.5\n- 0.999995", "loss_weights:\n- 0.1\n- 10.0", "feature_grad_mult: 0.1"):
        assert line in resolved  # fairseq's base-layout values, written down


def test_sampler_bounds_batches_and_shards_them():
    sizes = np.array([16000, 48000, 32000, 8000, 64000, 24000, 40000, 56000] * 5)
    sampler = BatchSampler(sizes, max_tokens=130000, max_sample_size=48000, seed=3)
    batches, _ = sampler.epoch(0)
    assert sorted(i for b in batches for i, _ in b) == list(range(len(sizes)))
    for b in batches:
        assert max(min(sizes[i], 48000) for i, _ in b) * len(b) <= 130000
    assert sampler.epoch(0)[0] == batches and sampler.epoch(1)[0] != batches
    shards = [BatchSampler(sizes, 130000, 48000, 3, rank=r, world_size=2).epoch(0)[0] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) and shards[0][0] == batches[0] and shards[1][0] == batches[1]


def test_language_resampling_follows_xlsr_alpha():
    langs = ["big"] * 900 + ["small"] * 100
    sizes = np.full(1000, 16000)
    _, shares = language_resample(langs, sizes, 0.5, np.random.default_rng(0))
    p = np.array([0.9, 0.1]) ** 0.5
    assert shares["big"] == pytest.approx(p[0] / p.sum(), abs=0.01) and shares["small"] == pytest.approx(0.25, abs=0.01)
    _, natural = language_resample(langs, sizes, 1.0, np.random.default_rng(0))
    assert natural["small"] == pytest.approx(0.1)


def test_fairseq_manifest_is_read(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "train.tsv").write_text(f"{tmp_path / 'audio'}\na.flac\t16000\nsub/b.flac\t32000\n")
    utts = read_manifest(tmp_path / "train.tsv")
    assert [(u.path, u.samples) for u in utts] == [
        (tmp_path / "audio" / "a.flac", 16000),
        (tmp_path / "audio" / "sub" / "b.flac", 32000),
    ]


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "xlsr", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_a_run_killed_with_sigkill_resumes_to_the_same_losses(corpus, tmp_path):
    args = [
        "pretrain",
        "--train",
        str(corpus / "train.tsv"),
        "--valid",
        str(corpus / "valid.tsv"),
        "--preset",
        "tiny",
        "--quiet",
        "--set",
        *TINY,
        "max_update=16",
        "save_interval_updates=4",
        "validate_interval_updates=8",
        "model.encoder_layerdrop=0.3",
    ]
    whole = run_cli([*args, "--output-dir", str(tmp_path / "whole")])
    assert whole.wait(300) == 0, whole.stderr.read()
    killed = run_cli([*args, "--output-dir", str(tmp_path / "killed")])
    checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint_8.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = safe_torch_load(tmp_path / "killed" / "checkpoints" / "checkpoint_last.pt")
    assert 8 <= state["update"] < 16, "the kill came too late to test resuming"
    resumed = run_cli([*args, "--output-dir", str(tmp_path / "killed")])
    assert resumed.wait(300) == 0, resumed.stderr.read()
    a, b = records(tmp_path / "whole"), records(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    for update in (1, 9, 16):
        assert b[update]["loss"] == pytest.approx(a[update]["loss"], rel=1e-6, abs=1e-7), update
    assert records(tmp_path / "killed", "valid")[16]["loss"] == pytest.approx(
        records(tmp_path / "whole", "valid")[16]["loss"], rel=1e-6
    )
    final = [
        safe_torch_load(p / "checkpoints" / "checkpoint_last.pt")["model"]
        for p in (tmp_path / "whole", tmp_path / "killed")
    ]
    for k in final[0]:
        torch.testing.assert_close(final[0][k], final[1][k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_train_the_same_model_as_one_with_the_same_global_batch(corpus, tmp_path, sharding):
    common = [
        "--train",
        str(corpus / "train.tsv"),
        "--preset",
        "tiny",
        "--quiet",
        "--set",
        *TINY,
        "max_update=3",
        "max_tokens=50000",
        "save_interval_updates=3",
        "validate_interval_updates=100",
    ]
    single = run_cli(["pretrain", *common, "update_freq=2", "--output-dir", str(tmp_path / "one")])
    assert single.wait(300) == 0, single.stderr.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(29500 + os.getpid() % 1000), "-m", "xlsr", "pretrain"]  # fmt: skip
    extra = ["fsdp=true"] if sharding == "fsdp" else []
    ddp = subprocess.run([*launch, *common, "update_freq=1", *extra, "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = (safe_torch_load(tmp_path / p / "checkpoints" / "checkpoint_last.pt") for p in ("one", "two"))
    assert one["update"] == two["update"] == 3 and two["world_size"] == 2
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], atol=2e-5, rtol=1e-4)
    r1, r2 = records(tmp_path / "one"), records(tmp_path / "two")
    assert r2[3]["loss"] == pytest.approx(r1[3]["loss"], rel=1e-4)
    if sharding == "fsdp":  # and a sharded run resumes (its optimizer state is saved whole, restored sharded)
        more = subprocess.run(
            [*launch, *common, "update_freq=1", *extra, "max_update=4", "--output-dir", str(tmp_path / "two")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert more.returncode == 0, more.stderr[-3000:]
        assert safe_torch_load(tmp_path / "two" / "checkpoints" / "checkpoint_last.pt")["update"] == 4


def test_non_finite_updates_are_skipped_then_the_run_stops(corpus, tmp_path, monkeypatch):
    from xlsr.pretraining import task as task_module

    real = task_module.PretrainTask.forward
    calls = {"n": 0}

    def sometimes_nan(self, model, batch, update):
        out = real(self, model, batch, update)
        calls["n"] += 1
        if update in (1, 2) or update >= 4:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(task_module.PretrainTask, "forward", sometimes_nan)
    with pytest.raises(XlsrError, match=r"training diverged: 3 updates in a row .*\(update 6\)"):
        pretrain(
            corpus / "train.tsv",
            tmp_path / "run",
            preset="tiny",
            set=[*TINY, "max_update=20", "max_nonfinite_updates=2"],
            quiet=True,
        )
    logged = records(tmp_path / "run")
    assert logged[3]["skipped_updates"] == 2 and np.isfinite(logged[3]["grad_norm"])


def test_pretraining_checkpoint_converts_to_transformers_and_init_from_other_models(corpus, tmp_path, fixtures_dir):
    from transformers import Wav2Vec2ForPreTraining

    pretrain(corpus / "train.tsv", tmp_path / "run", preset="tiny", set=[*TINY, "max_update=2"], quiet=True)
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint_last.pt"
    assert load_model(ckpt).cfg.head == "pretraining"
    convert(ckpt, tmp_path / "hf")
    hf, info = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # continue from that transformers directory, and from the fairseq checkpoint (unquantized targets)
    pretrain(
        corpus / "train.tsv", tmp_path / "from_hf", init=str(tmp_path / "hf"), set=[*TINY, "max_update=1"], quiet=True
    )
    first = torch.load(tmp_path / "from_hf" / "checkpoints" / "checkpoint_last.pt", weights_only=True)
    assert first["update"] == 1
    result = pretrain(
        corpus / "train.tsv",
        tmp_path / "from_fairseq",
        init=str(fixtures_dir / "pretrain.pt"),
        set=[*TINY, "max_update=2"],
        quiet=True,
    )
    assert result["update"] == 2 and np.isfinite(records(tmp_path / "from_fairseq")[2]["loss"])
    # a different model in the same output directory is refused
    with pytest.raises(XlsrError, match="model differs"):
        pretrain(corpus / "train.tsv", tmp_path / "run", preset="tiny-base", set=[*TINY, "max_update=3"], quiet=True)


def test_an_unknown_key_is_one_line_with_the_closest_valid_keys_first():
    with pytest.raises(ConfigError) as e:
        build_config(PretrainConfig, None, ["max_updates=3"])
    message = str(e.value)
    assert "\n" not in message and "max_updates (did you mean max_update?)" in message
    assert message.split("closest first: ")[1].startswith("max_update, ") and "--print-config" in message
    with pytest.raises(
        ConfigError, match=r"dropuot \(did you mean model.dropout\?\); valid keys, closest first: model.dropout"
    ):
        build_config(PretrainConfig, None, ["model.dropuot=0.1"])


@pytest.mark.parametrize("task, cls", [("pretrain", PretrainConfig), ("finetune ctc", CTCConfig),
                                       ("classify", ClassifyConfig)])  # fmt: skip
def test_describe_config_shows_every_key_with_its_default_and_reads_back(task, cls, tmp_path):
    import dataclasses

    text = describe_config(task)
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith("#")]
    assert keys == [f.name for f in dataclasses.fields(cls)]
    assert "max_bad_samples: 10  # audio files that fail to decode" in text
    assert "#   encoder_layers: 24  # HF num_hidden_layers" in text  # the model keys, commented out
    (tmp_path / "c.yaml").write_text(text)
    assert build_config(cls, tmp_path / "c.yaml") == cls()
    with pytest.raises(ConfigError, match="unknown training task 'translate'"):
        describe_config("translate")


def test_schedule_options_the_schedule_ignores_are_named():
    assert ignored_options(build_config(CTCConfig, None, [])) == []  # defaults: nothing was asked for
    (warning,) = ignored_options(build_config(CTCConfig, None, ["warmup_updates=500", "max_update=3000"]))
    assert warning == (
        "warmup_updates=500 has no effect under lr_scheduler=tri_stage (tri_stage warms up for phase_ratio[0] x "
        "max_update = 300 updates; set phase_ratio)"
    )
    (warning,) = ignored_options(build_config(PretrainConfig, None, ["init_lr_scale=0.1"]))
    assert warning.startswith("init_lr_scale=0.1 has no effect under lr_scheduler=polynomial_decay")


def test_a_run_warns_once_about_ignored_options_and_logs_the_loss_of_its_first_update(corpus, tmp_path, capsys):
    pretrain(corpus / "train.tsv", tmp_path / "run", preset="tiny",
             set=[*TINY, "lr_scheduler=tri_stage", "log_interval=50", "max_update=3"], quiet=True)  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("warmup_updates=2 has no effect under lr_scheduler=tri_stage") == 1
    logged = records(tmp_path / "run")
    assert sorted(logged) == [1, 3] and np.isfinite(logged[1]["loss"])  # the first update, then log_interval / end


def test_log_lines_are_written_through_the_progress_bar(capsys):
    import logging

    from xlsr.training.logging import log, setup_console_logging

    setup_console_logging(False)
    from tqdm import tqdm

    bar = tqdm(total=10, file=sys.stderr, disable=False)
    bar.update(3)
    log.info("a line that must not be glued to the bar")
    bar.close()
    log.setLevel(logging.WARNING)
    err = capsys.readouterr().err
    (line,) = [piece for piece in err.split("\n") if "must not be glued" in piece]
    assert line.split("\r")[-1].endswith("| a line that must not be glued to the bar")
    assert "3/10" not in line.split("\r")[-1]  # the bar was cleared first, and drawn again after


def test_unreadable_audio_met_during_training_is_skipped_named_once_and_counted(corpus, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("bad.flac", "bad_valid.flac"):
        (tmp_path / name).write_bytes(b"fLaC" + rng.bytes(3000))  # the samples column skips the up-front check
    rows = (corpus / "train.tsv").read_text().splitlines()
    absolute = [rows[0], *(f"{corpus / r.split(chr(9))[0]}\t{r.split(chr(9), 1)[1]}" for r in rows[1:])]
    (tmp_path / "train.tsv").write_text("\n".join([*absolute, f"{tmp_path / 'bad.flac'}\t40000\tfr"]) + "\n")
    valid = (corpus / "valid.tsv").read_text().splitlines()
    valid = [valid[0], *(f"{corpus / r.split(chr(9))[0]}\t{r.split(chr(9), 1)[1]}" for r in valid[1:])]
    (tmp_path / "valid.tsv").write_text("\n".join([*valid, f"{tmp_path / 'bad_valid.flac'}\t30000\tfr"]) + "\n")
    # one utterance per batch (so the bad one is a batch of its own), every utterance once per epoch:
    # 13 updates need more than the 12 good utterances, so the bad one is met
    args = [*TINY, "max_tokens=48000", "sampling_alpha=1.0", "max_update=13", "validate_interval_updates=13"]
    pretrain(tmp_path / "train.tsv", tmp_path / "run", valid=tmp_path / "valid.tsv", preset="tiny", set=args,
             quiet=True)  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("skipped an audio file that cannot be read") == 2
    assert err.count(str(tmp_path / "bad.flac")) == 1 and err.count(str(tmp_path / "bad_valid.flac")) == 1
    assert records(tmp_path / "run")[13]["unreadable_files"] == 1 and 13 in records(tmp_path / "run", "valid")
    state = safe_torch_load(tmp_path / "run" / "checkpoints" / "checkpoint_last.pt")
    assert state["update"] == 13 and len(state["unreadable"]) == 2  # and the validation's
    with pytest.raises(XlsrError) as e:
        pretrain(tmp_path / "train.tsv", tmp_path / "stopped", preset="tiny", set=[*args, "max_bad_samples=0"],
                 quiet=True)  # fmt: skip
    assert str(e.value).startswith("1 audio files could not be read (more than max_bad_samples=0")
    assert "\n" not in str(e.value)


def test_model_changes_that_do_not_fit_the_start_weights_are_a_one_line_config_error(corpus, tmp_path):
    init(tmp_path / "init", preset="tiny", seed=0)
    start = str(tmp_path / "init")
    (tmp_path / "text.tsv").write_text(f"path\tsamples\tlang\ttext\n{corpus / 'u0.flac'}\t24000\tfr\tba di\n"
                                       f"{corpus / 'u1.flac'}\t32000\tsw\tku lo\n")  # fmt: skip
    tasks = {
        "pretrain": lambda s: PretrainTask(build_config(PretrainConfig, None, s), corpus / "train.tsv", None, start),
        "ctc": lambda s: CTCTask(build_config(CTCConfig, None, s), tmp_path / "text.tsv", None, start),
        "classify": lambda s: ClassificationTask(
            build_config(ClassifyConfig, None, s), tmp_path / "text.tsv", None, start
        ),  # fmt: skip
    }
    cases = [
        ("pretrain", "model.conv_bias=false", "unexpected feature_encoder.conv_layers.0.conv.bias"),
        ("ctc", "model.encoder_layers=3", "missing encoder.layers.2."),
        ("classify", "model.encoder_embed_dim=64", "of another shape"),
    ]
    for task, change, detail in cases:
        with pytest.raises(ConfigError) as e:
            tasks[task]([change]).build_model()
        message = str(e.value)
        assert f"(model.{change.split('.', 1)[1]})" in message and detail in message and "\n" not in message, message
    tasks["ctc"](["model.dropout=0.0"]).build_model()  # what keeps every weight's shape is fine


def test_one_frame_count_formula_equals_the_feature_encoders_layer_by_layer_lengths():
    from xlsr.config import PRESETS, ModelConfig, preset
    from xlsr.models.feature_encoder import FeatureEncoder

    samples = torch.arange(0, 3000)
    odd = ModelConfig(conv_feature_layers=((8, 7, 3), (8, 4, 2), (8, 3, 3)), encoder_embed_dim=32,
                      encoder_attention_heads=2, conv_pos_groups=4)  # fmt: skip
    wav2vec2 = [c for c in (preset(name) for name in PRESETS) if isinstance(c, ModelConfig)]
    assert len(wav2vec2) >= 6
    for cfg in [*wav2vec2, odd]:
        encoder = FeatureEncoder(cfg.conv_feature_layers, cfg.extractor_mode, cfg.conv_bias)
        expected = encoder.output_lengths(samples)
        assert torch.equal(cfg.num_frames(samples), expected)
        assert [cfg.num_frames(int(n)) for n in samples[::97]] == expected[::97].tolist()
    assert preset("xlsr-300m").num_frames(16000) == 49  # (16000 - 400) // 320 + 1


def test_a_gathered_model_is_rebuilt_by_its_own_class_with_what_it_carries():
    from xlsr.config import preset
    from xlsr.models import Wav2Vec2Model
    from xlsr.training.state import plain_model

    class Family(Wav2Vec2Model):  # another model family with the same classmethod
        pass

    net = Family(preset("tiny"))
    net.source = "somewhere"
    copy = plain_model(net, {k: v.clone() for k, v in net.state_dict().items()})
    assert type(copy) is Family and copy.source == "somewhere" and copy.preprocessing == net.preprocessing
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in net.state_dict().items())
