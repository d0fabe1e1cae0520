"""Shared test helpers: tiny transformers configs written out here (not through xlsr's converter),
randomised weights, test audio, and the system tools some tests need (which must not skip under CI)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Genuine fairseq checkpoints and fairseq's own outputs, copied into the repository from ../shared/fixtures
# (each folder's README says how fairseq wrote them), so that a fresh clone runs every test.
FIXTURES_ROOT = Path(__file__).resolve().parent / "fixtures"
FIXTURES = FIXTURES_ROOT / "fairseq_xlsr"

# System tools (Debian packages) that some tests need; README lists them and `.ci/run` installs them. Under CI
# (the variable CI set and not "false"/"0", as CI services set it), a test that skips because one is missing
# fails instead: a break in those tests must not land unseen because the CI machine lacked the tool.
SYSTEM_TOOLS = ("espeak-ng", "chromium", "chromedriver")  # chromedriver: Debian package chromium-driver


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Skips a test when the system tool `name` is not on PATH (and so, under CI, fails it)."""
    assert name in SYSTEM_TOOLS, f"add {name} to SYSTEM_TOOLS, README and .ci/run"
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} (Debian package) not installed")


def missing_tool(skip_reason: str) -> str | None:
    """The system tool a skip's reason names that is indeed missing, if any."""
    return next((t for t in SYSTEM_TOOLS if t in skip_reason and shutil.which(t) is None), None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, turns a skip for a missing system tool into a failure (whoever wrote the skip)."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    tool = missing_tool(reason)
    if tool is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"{tool} is not installed, and under CI the tests that need it must run, not skip "
            f"({reason}): install it (apt-get install -y {tool}; .ci/run does)"
        )


# The two layouts, as transformers names them.
LAYOUTS = {
    "layer_norm": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    "group_norm": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
}


def hf_config(layout: str = "layer_norm", **changes):
    """A tiny transformers Wav2Vec2Config: real conv strides, conv dim 24 != model dim 32 (so the
    feature projection is exercised), 4 heads, 2 layers, no dropout."""
    from transformers import Wav2Vec2Config

    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=(24,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_codevectors_per_group=12,
        num_codevector_groups=2,
        codevector_dim=20,
        proj_codevector_dim=16,
        vocab_size=12,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.05,
        **LAYOUTS[layout],
    )
    kwargs.update(changes)
    return Wav2Vec2Config(**kwargs)


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter so that layer-norm weights are not 1, biases not 0, and a swapped
    weight/bias pair would be caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def speechlike(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """A deterministic waveform with pitch, formant-like partials, amplitude modulation and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 110 + 30 * np.sin(2 * math.pi * 0.5 * t + seed)
    phase = 2 * math.pi * np.cumsum(f0) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x *= 0.5 + 0.5 * np.sin(2 * math.pi * 3 * t + seed) ** 2
    x += 0.05 * rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _fixture_set(name: str) -> Path:
    path = FIXTURES_ROOT / name
    if not (path / "README.md").exists():
        pytest.fail(f"fairseq fixtures missing from the checkout: {path}")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    """fairseq_xlsr: pretraining and CTC checkpoints."""
    return _fixture_set("fairseq_xlsr")


@pytest.fixture
def st_fixtures() -> Path:
    """fairseq_st: an xm_transformer speech-translation checkpoint."""
    return _fixture_set("fairseq_st")


@pytest.fixture
def lid_fixtures() -> Path:
    """fairseq_lid: wav2vec_classification language-ID checkpoints."""
    return _fixture_set("fairseq_lid")
