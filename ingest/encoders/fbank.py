"""`fbank`: log-mel statistics, no weights. The offline audio baseline.

Per clip: 64-band log-mel spectrogram (25 ms windows, 10 ms hop) of the clip's own
samples; the stored vector concatenates the per-band mean and standard deviation of
the log-mel frames and of their first difference (4 x 64 = 256 dims). Mean and
spread of the spectrum carry pitch register, spectral tilt and breathiness; the
difference statistics carry speaking rate and pitch/loudness movement.
"""

from __future__ import annotations

import numpy as np
import torch

from ingest.encoders.base import SAMPLE_RATE, AudioEncoder, record_layers
from lake.layers import resolve_layers


class FbankEncoder(AudioEncoder):
    name = "fbank"
    revision = "v1"

    def __init__(self, layers: str = "all", n_mels: int = 64, **_):
        self.n_mels = n_mels
        self.dim = 4 * n_mels
        self.layers = resolve_layers(layers, ["logmel_stats"])
        self.n_fft, self.hop = 400, 160
        import torchaudio

        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.n_fft, hop_length=self.hop, n_mels=n_mels, f_min=50.0,
            f_max=7600.0, power=2.0, center=True)

    @classmethod
    def build(cls, name, device="cpu", layers="all", **options):
        return cls(layers=layers, **options)

    @classmethod
    def from_record(cls, record, device="cpu", **overrides):
        return cls(layers=record_layers(record), n_mels=record.get("config", {}).get("n_mels", 64))

    def info(self):
        return {**super().info(), "standardize": True}  # bands and statistics on different scales

    def config(self):
        return {"n_mels": self.n_mels, "n_fft": self.n_fft, "hop": self.hop, "stats": ["mean", "std", "dmean", "dstd"]}

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(waves), 1, self.dim), dtype=np.float32)
        for i, w in enumerate(waves):
            x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            if x.numel() < self.n_fft:  # a very short clip: pad to one window
                x = torch.nn.functional.pad(x, (0, self.n_fft - x.numel()))
            logmel = torch.log(self._mel(x) + 1e-6)  # [n_mels, frames]
            delta = logmel[:, 1:] - logmel[:, :-1] if logmel.shape[1] > 1 else torch.zeros_like(logmel)
            out[i, 0] = torch.cat([logmel.mean(1), logmel.std(1, unbiased=False),
                                   delta.abs().mean(1), delta.std(1, unbiased=False)]).numpy()
        return out
