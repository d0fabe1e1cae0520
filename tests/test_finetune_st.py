"""`xlsr finetune st`: a tiny model learns a tiny parallel set, exact resume, DDP against accumulation, the
decoder's sources (a transformers mBART directory, another speech-translation model), what trains (fairseq's
`need_finetuning`, LNA), label smoothing (fairseq's formula), the exported directory (transformers 5.23 loads it
with the same logits and token ids) and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import speechlike

from xlsr.checkpoints import init, load_model
from xlsr.checkpoints.io import safe_torch_load
from xlsr.cli import main
from xlsr.errors import ConfigError, DataError
from xlsr.finetuning.st import (
    STConfig,
    STTask,
    finetune_st,
    label_smoothed_nll_loss,
    need_finetuning,
)
from xlsr.training.config import build_config, describe_config
from xlsr.training.distributed import World
from xlsr.training.schedule import lr_at
from xlsr.translate import translate

# A tiny decoder, no dropout, no masking: runs compare weight for weight and learn in a few dozen updates.
TINY = [
    "num_workers=0",
    "max_tokens=200000",
    "log_interval=1",
    "lr=5e-3",
    "warmup_updates=5",
    "apply_mask=false",
    "layerdrop=0.0",
    "decoder_dropout=0.0",
    "model.dropout_input=0.0",
    "freeze_feature_encoder=true",
    "decoder_layers=2",
    "decoder_embed_dim=32",
    "decoder_ffn_embed_dim=64",
    "decoder_attention_heads=4",
    "max_target_positions=40",
    "spm_vocab_size=60",
    "spm_model_type=word",
    "valid_beam_size=2",
    "valid_max_len_b=16",
]
PAIRS = [  # (source language, translation, target language)
    ("fr", "the cat sleeps on the mat", "en"),
    ("fr", "the dog runs in the park", "en"),
    ("en", "die katze schläft auf der matte", "de"),
    ("en", "der hund läuft im park", "de"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    rows = ["path\tsamples\tlang\ttranslation\ttgt_lang"]
    for i, (src, text, tgt) in enumerate(PAIRS):
        x = speechlike(0.5 + 0.1 * i, seed=i)
        sf.write(root / f"u{i}.wav", x, 16000)
        rows.append(f"u{i}.wav\t{len(x)}\t{src}\t{text}\t{tgt}")
    (root / "train.tsv").write_text("\n".join(rows) + "\n")
    (root / "valid.tsv").write_text("\n".join(rows) + "\n")
    init(root / "init", preset="tiny", seed=0)
    return root


def records(out: Path, split: str = "train") -> dict[int, dict]:
    found = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == split:
            found[r["update"]] = r
    return found


def task(corpus, *sets: str, train: str = "train.tsv", valid: str = "valid.tsv", **kwargs) -> STTask:
    cfg = build_config(STConfig, None, [*TINY, *sets])
    return STTask(cfg, corpus / train, corpus / valid, str(kwargs.pop("init", corpus / "init")), **kwargs)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "st"
    sets = [*TINY, "max_update=40", "validate_interval_updates=20", "save_interval_updates=20"]
    finetune_st(str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv", out, set=sets, quiet=True)
    return out


def test_a_tiny_model_learns_a_tiny_parallel_set(corpus, trained):
    train, valid = records(trained), records(trained, "valid")
    assert train[40]["loss"] < 0.5 * train[1]["loss"]
    assert valid[40]["bleu"] > valid[20]["bleu"] and valid[40]["chrf"] > 50
    got = {}
    for i, (_, text, tgt) in enumerate(PAIRS):  # each utterance into its own target language, greedy
        got[text] = translate(trained / "best", [corpus / f"u{i}.wav"], target_lang=tgt, beam_size=1, quiet=True)[0]
    # the forced tag alone tells at most 2 of the 4 apart (2 sentences per target language): the rest needs the audio
    assert sum(t.text == text for text, t in got.items()) >= 3, {k: v.text for k, v in got.items()}
    assert {t.target_lang for t in got.values()} == {"en_XX", "de_DE"}
    assert (trained / "spm.model").exists() and (trained / "best" / "sentencepiece.bpe.model").exists()
    log = (trained / "log.jsonl").read_text()
    assert "nll_loss" in log


def test_the_best_model_records_its_training_targets_and_refuses_others(corpus, trained):
    """A new decoder's vocabulary carries all 52 mBART-50 tags; the model learnt two: translate refuses the rest
    in one line, `info` and serve's model list show the two, and transformers reads the generation config."""
    from transformers import GenerationConfig

    gen = json.loads((trained / "best" / "generation_config.json").read_text())
    assert gen["target_languages"] == ["de_DE", "en_XX"] and "forced_bos_token_id" not in gen
    assert GenerationConfig.from_pretrained(trained / "best").decoder_start_token_id == 2
    best = load_model(trained / "best")
    assert len(best.tokenizer.languages) == 52 and best.generation.target_languages == ("de_DE", "en_XX")
    with pytest.raises(ConfigError, match=r"fine-tuned to translate into de_DE, en_XX only, not fr_XX"):
        translate(trained / "best", [corpus / "u0.wav"], target_lang="fr", quiet=True)
    with pytest.raises(ConfigError, match=r"into de_DE, en_XX only; --target-lang tlh: unknown target language"):
        translate(trained / "best", [corpus / "u0.wav"], target_lang="tlh", quiet=True)
    from xlsr.checkpoints import families

    assert families.family_of(best).describe(best)["languages"] == ["de_DE", "en_XX"]


def test_the_best_directory_loads_in_transformers_with_the_same_logits_and_token_ids(corpus, trained):
    from transformers import AutoTokenizer, SpeechEncoderDecoderModel

    ours = load_model(trained / "best")
    hf = SpeechEncoderDecoderModel.from_pretrained(trained / "best").eval()
    tokenizer = AutoTokenizer.from_pretrained(trained / "best")
    text = PAIRS[2][1]
    assert tokenizer(text, add_special_tokens=False).input_ids == ours.tokenizer.encode(text)
    assert tokenizer.convert_tokens_to_ids("de_DE") == ours.tokenizer.lang_id("de")
    wave = torch.from_numpy(sf.read(corpus / "u2.wav", dtype="float32")[0])[None]
    wave = (wave - wave.mean()) / (wave.var(unbiased=False) + 1e-7).sqrt()
    prev = torch.tensor([[2, ours.tokenizer.lang_id("de"), *ours.tokenizer.encode(text)]])
    with torch.no_grad():
        expected = hf(input_values=wave, decoder_input_ids=prev).logits
        torch.testing.assert_close(ours(wave, None, prev), expected, atol=1e-4, rtol=1e-4)
    assert json.loads((trained / "best" / "generation_config.json").read_text())["num_beams"] == 2


def test_resuming_from_a_checkpoint_gives_the_same_model_as_an_uninterrupted_run(corpus, tmp_path):
    """What a kill leaves (checkpoint_last.pt at update 3, the vocabulary) resumes to the same weights, bit for bit,
    with layer drop, masking and dropout on (their randomness follows the seed and the data position)."""
    args = [*TINY, "max_update=6", "save_interval_updates=3", "validate_interval_updates=3",
            "keep_interval_updates=5", "layerdrop=0.3", "decoder_layerdrop=0.3", "apply_mask=true", "mask_prob=0.2",
            "decoder_dropout=0.1"]  # fmt: skip
    go = lambda out: finetune_st(str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv", out, set=args,  # noqa: E731
                                 quiet=True)  # fmt: skip
    go(tmp_path / "whole")
    (tmp_path / "killed" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "whole" / "spm.model", tmp_path / "killed" / "spm.model")
    shutil.copy(tmp_path / "whole" / "checkpoints" / "checkpoint_3.pt",
                tmp_path / "killed" / "checkpoints" / "checkpoint_last.pt")  # fmt: skip
    go(tmp_path / "killed")
    a, b = (safe_torch_load(tmp_path / d / "checkpoints" / "checkpoint_last.pt") for d in ("whole", "killed"))
    assert a["update"] == b["update"] == 6 and a["tokenizer"] == b["tokenizer"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert records(tmp_path / "killed", "valid")[6]["loss"] == records(tmp_path / "whole", "valid")[6]["loss"]


def test_two_processes_fine_tune_the_same_model_as_one_with_update_freq_2(corpus, tmp_path):
    common = ["finetune", "st", "--init", str(corpus / "init"), "--train", str(corpus / "train.tsv"), "--valid",
              str(corpus / "valid.tsv"), "--quiet", "--set", *TINY, "max_update=3", "max_tokens=26000",
              "validate_interval_updates=3", "layerdrop=0.3", "decoder_layerdrop=0.3"]  # fmt: skip
    # max_tokens 26000: 2 batches an epoch (an odd number would leave one out of each process's share)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "xlsr", *common, "update_freq=2", "--output-dir", tmp_path / "one"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(29800 + os.getpid() % 1000), "-m", "xlsr"]  # fmt: skip
    two = subprocess.run([*launch, *common, "update_freq=1", "--output-dir", tmp_path / "two"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (safe_torch_load(tmp_path / d / "checkpoints" / "checkpoint_last.pt") for d in ("one", "two"))
    assert b["world_size"] == 2 and a["tokenizer"] == b["tokenizer"]
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=2e-5, rtol=1e-4, msg=k)
    v1, v2 = records(tmp_path / "one", "valid")[3], records(tmp_path / "two", "valid")[3]
    assert v2["loss"] == pytest.approx(v1["loss"], rel=1e-4) and v2["chrf"] == pytest.approx(v1["chrf"], abs=1e-6)
    assert (tmp_path / "two" / "best" / "config.json").exists()


def test_fsdp_shards_the_decoder_layers_too_and_validates_with_beam_search(corpus, tmp_path):
    """fully_shard over encoder and decoder layers; beam search in validation gathers the decoder layers once
    (each process decodes its own number of steps). The same model as one process with update_freq 2."""
    common = ["finetune", "st", "--init", str(corpus / "init"), "--train", str(corpus / "train.tsv"), "--valid",
              str(corpus / "valid.tsv"), "--quiet", "--set", *TINY, "max_update=3", "max_tokens=26000",
              "validate_interval_updates=3"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "xlsr", *common, "update_freq=2", "--output-dir", tmp_path / "one"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(28800 + os.getpid() % 1000), "-m", "xlsr"]  # fmt: skip
    two = subprocess.run([*launch, *common, "update_freq=1", "fsdp=true", "--output-dir", tmp_path / "two"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (safe_torch_load(tmp_path / d / "checkpoints" / "checkpoint_last.pt") for d in ("one", "two"))
    # a key bias has no gradient (softmax ignores a constant): Adam turns the rounding noise of the sharded
    # reduction into steps of either sign, so those four vectors are left out
    for k in (k for k in a["model"] if not k.endswith("k_proj.bias")):
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=2e-5, rtol=1e-4, msg=k)
    v1, v2 = records(tmp_path / "one", "valid")[3], records(tmp_path / "two", "valid")[3]
    assert v2["loss"] == pytest.approx(v1["loss"], rel=1e-4) and v2["chrf"] == pytest.approx(v1["chrf"], abs=1e-6)


# -- the model's parts ------------------------------------------------------------------------------------------


def test_what_trains_follows_fairseq_need_finetuning_and_lna(corpus):
    assert need_finetuning("all", "x") and need_finetuning("layer_norm,self_attn", "encoder.layers.0.self_attn.q_proj")
    assert not need_finetuning("layer_norm,self_attn", "encoder.layers.0.fc1.weight")
    lna = ["finetune_w2v_params=layer_norm,self_attn", "finetune_decoder_params=encoder_attn,layer_norm,self_attn"]
    t = task(corpus, *lna, "freeze_feature_encoder=true")
    model = t.build_model()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.encoder.layers.0.self_attn.k_proj.weight" in trained
    assert "encoder.feature_projection.layer_norm.weight" in trained and "encoder.encoder.layer_norm.bias" in trained
    assert "encoder.encoder.layers.0.fc1.weight" not in trained and "encoder.mask_emb" not in trained
    assert not any(n.startswith("encoder.feature_encoder.") for n in trained)
    assert all(n in trained for n, _ in model.adapter.named_parameters(prefix="adapter"))
    assert "decoder.layers.1.encoder_attn_layer_norm.weight" in trained and "decoder.layer_norm.weight" in trained
    assert "decoder.embed_tokens.weight" not in trained and "decoder.layers.0.fc2.bias" not in trained
    assert model.cfg.decoder_layers == 2 and model.cfg.adaptor_n_layers == 3 and model.cfg.adaptor_proj_dim == 0
    # a new decoder starts as fairseq's: embeddings N(0, D^-1/2), padding rows zero
    embed = model.decoder.embed_tokens.weight
    assert float(embed[model.cfg.pad_token_id].abs().max()) == 0 and abs(float(embed[4:].std()) - 32**-0.5) < 0.03


def test_label_smoothed_loss_is_fairseqs_formula():
    lprobs = torch.randn(2, 3, 7).log_softmax(-1)
    target = torch.tensor([[4, 5, 1], [2, 1, 1]])
    loss, nll = label_smoothed_nll_loss(lprobs, target, 0.2, pad=1)
    keep = target != 1
    expected_nll = -lprobs.gather(-1, target[..., None])[..., 0][keep].sum()
    eps_i = 0.2 / 6
    expected = (1 - 0.2 - eps_i) * expected_nll + eps_i * -lprobs.sum(-1)[keep].sum()
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, expected)


def test_defaults_are_the_xm_transformer_recipe_and_inverse_sqrt_warms_up_then_decays(tmp_path):
    cfg = STConfig()
    assert (cfg.adaptor_n_layers, cfg.adaptor_kernel_size, cfg.adaptor_stride, cfg.feature_grad_mult) == (3, 3, 2, 0.1)
    assert (cfg.lr, cfg.warmup_updates, cfg.label_smoothing, cfg.layerdrop, cfg.best_checkpoint_metric) == (
        1e-4, 2000, 0.2, 0.1, "bleu")  # fmt: skip
    assert cfg.finetune_w2v_params == cfg.finetune_decoder_params == "all"
    assert lr_at(999, cfg) == pytest.approx(0.5e-4) and lr_at(7999, cfg) == pytest.approx(0.5e-4)
    with pytest.raises(ConfigError, match="adaptor_kernel_size=5: only 3"):
        build_config(STConfig, None, ["adaptor_kernel_size=5"]).check()
    with pytest.raises(ConfigError, match="best_checkpoint_metric must be one of bleu, chrf, loss"):
        build_config(STConfig, None, ["best_checkpoint_metric=wer"])
    text = describe_config("finetune st")  # what --print-config prints: every key, and it reads back
    assert "label_smoothing: 0.2  # fairseq --label-smoothing" in text and "finetune_w2v_params: all" in text
    (tmp_path / "c.yaml").write_text(text)
    assert build_config(STConfig, tmp_path / "c.yaml") == STConfig()


def test_the_decoder_of_a_transformers_mbart_directory_and_of_a_speech_translation_model(corpus, st_fixtures, tmp_path):
    """MBartForCausalLM (transformers 5.23, random weights) with the fixture's MBart50 sentencepiece model: its
    decoder weights are taken exactly; then the result, a speech-translation model, is a --decoder too."""
    from transformers import MBartConfig, MBartForCausalLM

    from xlsr.text.spm_tokenizer import SentencePieceTokenizer

    vocab = len(SentencePieceTokenizer.from_spm_model((st_fixtures / "spm.model").read_bytes()))  # 118
    cfg = MBartConfig(vocab_size=vocab, d_model=24, decoder_layers=2, decoder_ffn_dim=40, decoder_attention_heads=4,
                      max_position_embeddings=64, activation_function="relu", scale_embedding=True, is_decoder=True,
                      add_cross_attention=True, pad_token_id=1, bos_token_id=0, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    mbart = MBartForCausalLM(cfg)
    mbart.save_pretrained(tmp_path / "mbart")
    shutil.copy(st_fixtures / "spm.model", tmp_path / "mbart" / "sentencepiece.bpe.model")
    with pytest.raises(ConfigError, match="decoder_embed_dim=32: the weights and vocabulary come from mBART directory "
                       ".*, which has decoder_embed_dim=24; drop the setting"):  # fmt: skip
        task(corpus, decoder=tmp_path / "mbart").build_model()  # TINY's decoder is 32 wide, the mBART 24
    shape = ["decoder_embed_dim=1024", "decoder_layers=12", "decoder_ffn_embed_dim=4096", "decoder_attention_heads=16",
             "max_target_positions=1024", "spm_vocab_size=8000"]  # the defaults: taken from the decoder  # fmt: skip
    t = task(corpus, *shape, decoder=tmp_path / "mbart")
    model = t.build_model()
    assert model.cfg.adaptor_proj_dim == 24 and model.cfg.vocab_size == vocab and len(t.tokenizer) == vocab
    theirs = mbart.state_dict()
    for name, value in model.decoder.state_dict().items():
        torch.testing.assert_close(value, theirs["model.decoder." + name], rtol=0, atol=0, msg=name)
    t.datasets(model, World())
    assert t.targets["train"][2][0] == t.tokenizer.lang_id("de")  # the fixture's <lang:de_DE> tag
    # a speech-translation model's decoder (the fairseq fixture's: 48 wide, its dict.txt vocabulary)
    other = task(corpus, *shape, decoder=st_fixtures / "st.pt").build_model()
    st = load_model(st_fixtures / "st.pt")
    torch.testing.assert_close(other.decoder.embed_tokens.weight, st.decoder.embed_tokens.weight, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="is a whole speech-translation model, whose decoder is fine-tuned further"):
        task(corpus, *shape, init=st_fixtures / "st.pt", decoder=tmp_path / "mbart").build_model()
    with pytest.raises(ConfigError, match="neither an mBART directory nor a speech-translation model"):
        task(corpus, *shape, decoder=corpus / "init").build_model()


def test_continuing_a_speech_translation_model_keeps_its_shape_and_vocabulary(corpus, trained):
    own = (
        "decoder_layers=12",
        "decoder_embed_dim=1024",
        "decoder_ffn_embed_dim=4096",
        "decoder_attention_heads=16",
        "max_target_positions=1024",
        "spm_vocab_size=8000",
    )  # the defaults: taken from the start model
    t = task(corpus, *own, init=trained / "best")
    model = t.build_model()
    start = load_model(trained / "best")
    assert model.cfg.decoder_layers == 2 and t.tokenizer.tokens == start.tokenizer.tokens
    torch.testing.assert_close(model.decoder.layers[0].fc1.weight, start.decoder.layers[0].fc1.weight, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="adaptor_n_layers=2: the weights and vocabulary come from"):
        task(corpus, "adaptor_n_layers=2", init=trained / "best").build_model()
    # the languages it was fine-tuned into stay recorded when the new data has only some of them
    rows = (corpus / "train.tsv").read_text().splitlines()
    (corpus / "to_en.tsv").write_text("\n".join([rows[0], *(r for r in rows[1:] if r.endswith("\ten"))]) + "\n")
    t = task(corpus, *own, init=trained / "best", train="to_en.tsv", valid="to_en.tsv")
    model = t.build_model()
    t.datasets(model, World())
    assert t.tags == {t.tokenizer.lang_id("en")}
    assert t.generation(model).target_languages == ("de_DE", "en_XX")


# -- bad input ----------------------------------------------------------------------------------------------------


def test_bad_input_is_named_in_one_line(corpus, tmp_path, caplog):
    rows = (corpus / "train.tsv").read_text().splitlines()
    (corpus / "no_translation.tsv").write_text("path\tsamples\ttext\n" + "\n".join(
        "\t".join(r.split("\t")[:2] + [r.split("\t")[3]]) for r in rows[1:]) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=r"no_translation.tsv: no column 'translation' \(the target text") as e:
        task(corpus, train="no_translation.tsv").build_model()
    assert "\n" not in str(e.value) and "its columns: path, samples, text" in str(e.value)
    # an empty target: the row is named, skipped and counted; the others train
    broken = [*rows, rows[1].replace(PAIRS[0][1], "")]
    (corpus / "empty.tsv").write_text("\n".join(broken) + "\n")
    t = task(corpus, train="empty.tsv")
    with caplog.at_level("WARNING", logger="xlsr"):
        model = t.build_model()
        train, *_ = t.datasets(model, World())
        t.describe_data(train, None)
    assert len(train) == 4 and "empty.tsv:6: empty translation (skipped)" in caplog.text
    assert "train: 1 bad rows skipped" in caplog.text
    # an unknown tgt_lang stops the run before training, naming the data, the value and the known languages
    (corpus / "klingon.tsv").write_text("\n".join([*rows, rows[1].replace("\ten", "\ttlh")]) + "\n")
    t = task(corpus, train="klingon.tsv")
    model = t.build_model()
    with pytest.raises(DataError, match=r"klingon.tsv: tgt_lang 'tlh' \(1 rows\) is not a language of the target"):
        t.datasets(model, World())
    with pytest.raises(ConfigError, match="tgt_lang=tlh: unknown target language"):
        task(corpus, "tgt_lang=tlh").build_model()
    # a target that does not fit max_target_positions is dropped and counted
    t = task(corpus, "max_target_positions=7")  # the targets: the tag, 5 or 6 words, </s>
    model = t.build_model()
    train, *_ = t.datasets(model, World())
    assert len(train) == 1 and t.dropped["train"]["target longer than max_target_positions"] == 3


def test_the_command_line_runs_under_bf16_with_activation_checkpointing(corpus, tmp_path, capsys):
    code = main(["finetune", "st", "--init", str(corpus / "init"), "--train", str(corpus / "train.tsv"), "--valid",
                 str(corpus / "valid.tsv"), "--output-dir", str(tmp_path / "cli"), "--quiet", "--set", *TINY,
                 "max_update=2", "valid_beam_size=1", "precision=bf16", "checkpoint_activations=true"])  # fmt: skip
    assert code == 0 and "done: 2 updates; best validation score" in capsys.readouterr().out
    assert (tmp_path / "cli" / "best" / "model.safetensors").exists()
