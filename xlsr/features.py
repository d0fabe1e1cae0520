"""Feature extraction: one (frames, dim) array per audio file, from the final output or any block."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import load_audio, normalize
from .checkpoints import load_model
from .checkpoints.io import atomic_path
from .data.manifest import InputError, Utterance, expand_inputs, output_names
from .errors import ConfigError, XlsrError
from .models import Wav2Vec2Model
from .runtime import progress, resolve_device


@dataclass
class FileResult:
    input: str
    output: str | None = None
    error: str | None = None


@torch.inference_mode()
def embed(model: Wav2Vec2Model, waveform: np.ndarray, layer: int | None = None) -> np.ndarray:
    """(S,) float32 16 kHz -> (T, D) float32: the encoder's final output (transformers
    `last_hidden_state`), or with `layer=K` the output of block K (transformers `hidden_states[K]`;
    0 is the input of the first block)."""
    device = model.mask_emb.device
    x = torch.as_tensor(waveform, dtype=torch.float32, device=device)[None]
    if model.preprocessing.do_normalize:
        x = normalize(x, eps=model.preprocessing.normalize_eps)
    x = x.to(model.mask_emb.dtype)
    return model.encode(x, num_layers=layer).x[0].float().cpu().numpy()  # with num_layers=K, x is block K's output


def features(
    model: str | Path | Wav2Vec2Model,
    audio: list[str | Path],
    out: str | Path,
    layer: int | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> list[FileResult]:
    """Writes `out` (a .npy file) for one input, or `out/<name>.npy` for several. A file that cannot be
    read is reported in its FileResult and the others are still written."""
    net = model if isinstance(model, Wav2Vec2Model) else load_model(model, device=resolve_device(device))
    if layer is not None and not 0 <= layer <= net.cfg.encoder_layers:
        raise ConfigError(f"--layer must be between 0 and {net.cfg.encoder_layers} for this model, not {layer}")
    entries = expand_inputs(audio)
    items = [u for u in entries if isinstance(u, Utterance)]
    out = Path(out)
    single = len(entries) == 1 and len(items) == 1 and out.suffix == ".npy"
    names = iter(output_names([u.path for u in items]))
    bar = progress(len(items), "features", "file", quiet)
    results = []
    for utt in entries:
        if isinstance(utt, InputError):
            results.append(FileResult(utt.path, error=utt.cause))
            continue
        name = next(names)
        dest = out if single else out / f"{name}.npy"
        try:
            array = embed(net, load_audio(utt.path, net.preprocessing.sample_rate), layer)
            buf = io.BytesIO()
            np.save(buf, array)
            with atomic_path(dest) as tmp:
                tmp.write_bytes(buf.getvalue())
            results.append(FileResult(str(utt.path), output=str(dest)))
        except XlsrError as e:
            results.append(FileResult(str(utt.path), error=str(e).removeprefix(f"{utt.path}: ")))
        bar.update(1)
    bar.close()
    return results
