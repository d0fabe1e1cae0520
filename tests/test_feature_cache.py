"""xlsr/finetuning/feature_cache.py: a frozen feature encoder runs once per utterance, and the run is the same bit
for bit as one that runs it on every batch."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speechlike

from xlsr.checkpoints import init
from xlsr.checkpoints.io import safe_torch_load
from xlsr.config import preset
from xlsr.errors import ConfigError
from xlsr.finetuning.classify import ClassifyConfig
from xlsr.finetuning.ctc import CTCConfig, finetune_ctc
from xlsr.finetuning.feature_cache import FeatureCache
from xlsr.finetuning.st import STConfig, finetune_st
from xlsr.models import Wav2Vec2Model
from xlsr.models.feature_encoder import FeatureEncoder
from xlsr.training.config import build_config

WORDS = ["ba", "di", "ku", "lo", "me", "na", "pi", "ro", "su", "ta"]
# dropout and masking on: the cached run must draw the same random numbers as the uncached one
CTC = ["num_workers=0", "max_tokens=60000", "log_interval=1", "lr=5e-3", "freeze_finetune_updates=2",
       "max_update=6", "validate_interval_updates=3", "save_interval_updates=3", "mask_channel_length=4",
       "layerdrop=0.2", "model.dropout_input=0.1", "activation_dropout=0.1"]  # fmt: skip
ST = ["num_workers=0", "max_tokens=60000", "log_interval=1", "lr=5e-3", "warmup_updates=2", "max_update=6",
      "validate_interval_updates=3", "save_interval_updates=3", "finetune_w2v_params=", "mask_prob=0.2",
      "mask_channel_length=4", "decoder_layers=1", "decoder_embed_dim=32", "decoder_ffn_embed_dim=64",
      "decoder_attention_heads=4", "max_target_positions=40", "spm_vocab_size=40", "spm_model_type=word",
      "valid_beam_size=2", "valid_max_len_b=8"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    rows = ["path\tsamples\tlang\ttext\ttranslation"]
    for i in range(10):
        x = speechlike(0.6 + 0.13 * i, seed=i)  # ten lengths: batches of 1 to 3 utterances, padded
        sf.write(root / f"u{i}.wav", x, 16000)
        text = " ".join(rng.choice(WORDS, 2))
        rows.append(f"u{i}.wav\t{len(x)}\tfr\t{text}\t{text[::-1]}")
    (root / "train.tsv").write_text("\n".join(rows[:9]) + "\n")
    (root / "valid.tsv").write_text("\n".join([rows[0], *rows[9:]]) + "\n")
    init(root / "init", preset="tiny", seed=0)
    return root


@pytest.fixture
def calls(monkeypatch):
    """(B, S) of every outer call of FeatureEncoder.forward."""
    seen, depth = [], [0]
    forward = FeatureEncoder.forward

    def counted(self, waveforms, lengths=None):
        if depth[0] == 0:
            seen.append(tuple(waveforms.shape))
        depth[0] += 1
        try:
            return forward(self, waveforms, lengths)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(FeatureEncoder, "forward", counted)
    return seen


def weights(out):
    return safe_torch_load(out / "checkpoints" / "checkpoint_last.pt")["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_each_frames_features_depend_on_its_own_samples_in_the_layer_norm_extractor_only():
    """The premise: a layer-norm feature encoder gives an utterance's valid frames the same bits alone and in any
    padded batch, through both of its paths (per utterance without gradient, batched with it); the group-norm one
    of wav2vec 2.0 Base normalises over the padded length, so a cache would change its numbers."""
    torch.manual_seed(0)
    x = [torch.from_numpy(speechlike(s, seed=i)) for i, s in enumerate((0.7, 1.3, 2.1))]
    for name, same in (("tiny", True), ("tiny-base", False)):
        fe = Wav2Vec2Model(preset(name)).feature_encoder
        fe.requires_grad_(False)
        S = max(map(len, x)) + 555
        batch = torch.stack([torch.nn.functional.pad(w, (0, S - len(w))) for w in x])
        with torch.no_grad():
            alone = [fe(w[None])[0][0] for w in x]
            unbatched = fe(batch)[0]
        batched = fe(batch)[0]  # gradient enabled: one batched convolution per layer
        for b, a in enumerate(alone):
            for got in (unbatched, batched):
                assert torch.equal(got[b, : len(a)], a) is same, (name, b)


def test_a_frozen_feature_encoder_runs_once_per_utterance_and_ctc_training_is_bit_identical(corpus, tmp_path, calls):
    data = (str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv")
    finetune_ctc(*data, tmp_path / "uncached", set=[*CTC, "feature_cache_gb=0"], quiet=True)
    uncached, calls[:] = list(calls), []
    finetune_ctc(*data, tmp_path / "cached", set=CTC, quiet=True)
    assert_same_weights(weights(tmp_path / "uncached"), weights(tmp_path / "cached"))
    assert (tmp_path / "uncached" / "log.jsonl").read_text().count('"valid"') == 2
    valid = lambda out: [line for line in (out / "log.jsonl").read_text().splitlines() if '"valid"' in line]  # noqa: E731
    assert [v.split('"loss": ')[1][:12] for v in valid(tmp_path / "cached")] == [
        v.split('"loss": ')[1][:12] for v in valid(tmp_path / "uncached")
    ]
    # cached: each of the 8 training and 2 validation utterances once, alone, at its own length
    lengths = sorted(int(line.split("\t")[1]) for line in (corpus / "train.tsv").read_text().splitlines()[1:])
    lengths += sorted(int(line.split("\t")[1]) for line in (corpus / "valid.tsv").read_text().splitlines()[1:])
    assert sorted(calls) == sorted((1, n) for n in lengths)
    # uncached: every padded batch of 6 updates (1.5 epochs) and of 2 validations
    assert sum(b * s for b, s in uncached) > 1.5 * sum(lengths)


def test_a_trained_feature_encoder_or_a_full_cache_computes_the_features_every_time(corpus, tmp_path, calls):
    data = (str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv")
    finetune_ctc(*data, tmp_path / "trained", set=[*CTC, "freeze_feature_encoder=false"], quiet=True)
    trained, calls[:] = list(calls), []
    finetune_ctc(*data, tmp_path / "uncached", set=[*CTC, "freeze_feature_encoder=false", "feature_cache_gb=0"],
                 quiet=True)  # fmt: skip
    assert trained == calls and any(b > 1 for b, _ in trained)  # the same batched calls: no cache
    assert_same_weights(weights(tmp_path / "trained"), weights(tmp_path / "uncached"))

    cache = FeatureCache(max_gb=32 * 50 * 4 * 1.5 / 2**30)  # room for 1.5 s of the tiny model's features
    model = Wav2Vec2Model(preset("tiny"))
    model.feature_encoder.requires_grad_(False)
    audio = torch.from_numpy(np.stack([speechlike(1.0, seed=0), speechlike(1.0, seed=1)]))
    lengths = torch.tensor([16000, 12000])
    keys = [("train", 0), ("train", 1)]
    assert cache.usable(model, {"keys": keys})
    first = cache.features(model, audio, lengths, keys)
    assert list(cache.store) == [("train", 0)] and cache.full  # the second no longer fits
    assert torch.equal(cache.features(model, audio, lengths, keys), first)
    assert first.shape == (2, 49, 32) and torch.equal(first[1, 37:], torch.zeros(12, 32))
    assert not cache.usable(model, {"keys": None}) and not FeatureCache(0).usable(model, {"keys": keys})


def test_a_frozen_translation_encoder_keeps_its_features_and_training_is_bit_identical(corpus, tmp_path, calls):
    """`finetune_w2v_params` empty (the translation recipe's ST stage): the feature encoder gets no gradient
    although `feature_grad_mult` is 0.1, so its features are kept; weights and validation BLEU as without."""
    data = (str(corpus / "init"), corpus / "train.tsv", corpus / "valid.tsv")
    finetune_st(*data, tmp_path / "uncached", set=[*ST, "feature_cache_gb=0"], quiet=True)
    uncached, calls[:] = list(calls), []
    finetune_st(*data, tmp_path / "cached", set=ST, quiet=True)
    assert_same_weights(weights(tmp_path / "uncached"), weights(tmp_path / "cached"))
    assert len(calls) == 8 + 2 and all(b == 1 for b, _ in calls)  # each utterance once, alone
    assert sum(b * s for b, s in uncached) > 1.5 * sum(s for _, s in calls)
    log = lambda out: [line for line in (out / "log.jsonl").read_text().splitlines() if '"valid"' in line]  # noqa: E731
    strip = lambda lines: [line.split(', "elapsed')[0] for line in lines]  # noqa: E731
    assert strip(log(tmp_path / "cached")) == strip(log(tmp_path / "uncached"))


@pytest.mark.parametrize("bad", ["-1", "nan"])
def test_feature_cache_gb_belongs_to_ctc_and_translation_and_is_0_or_more(bad):
    for Config in (CTCConfig, STConfig):
        assert build_config(Config, None, ["feature_cache_gb=0.5"]).feature_cache_gb == 0.5
        build_config(Config, None, ["feature_cache_gb=0"]).check()
        with pytest.raises(ConfigError) as e:
            build_config(Config, None, [f"feature_cache_gb={bad}"]).check()  # the trainer's check, before loading
        assert str(e.value) == f"feature_cache_gb must be 0 (no feature cache) or a size in GB, got {float(bad)}"
    # classification takes new crops every epoch: it never uses the cache, so it has no such option
    with pytest.raises(ConfigError, match="unknown config keys: feature_cache_gb"):
        build_config(ClassifyConfig, None, ["feature_cache_gb=1"])
