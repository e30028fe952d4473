"""`fbank`: log-mel statistics, no weights. The offline audio baseline.

Per clip: 64-band log-mel spectrogram (25 ms windows, 10 ms hop) of the clip's own
samples; the stored vector concatenates the per-band mean and standard deviation of
the log-mel frames and of their first difference (4 x 64 = 256 dims). Mean and
spread of the spectrum carry pitch register, spectral tilt and breathiness; the
difference statistics carry speaking rate and pitch/loudness movement.

A clip longer than `chunk_s` (60 s) is transformed a chunk of frames at a time, the statistics summed
in float64 across chunks: the spectrogram of an hour-long clip would otherwise take several times the
wave's own memory (measured: 6.3 copies of a 10-minute wave). The frames are exactly those of the
whole-clip transform (the same reflect padding at the clip's ends only); the statistics agree with it
to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from ingest.encoders.base import SAMPLE_RATE, AudioEncoder, record_layers
from lake.layers import resolve_layers


class FbankEncoder(AudioEncoder):
    name = "fbank"
    revision = "v1"

    def __init__(self, layers: str = "all", n_mels: int = 64, chunk_s: float = 60.0, **_):
        self.n_mels, self.chunk_frames = n_mels, max(2, int(chunk_s * SAMPLE_RATE) // 160)
        self.dim = 4 * n_mels
        self.layers = resolve_layers(layers, ["logmel_stats"])
        self.n_fft, self.hop = 400, 160
        import torchaudio

        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.n_fft, hop_length=self.hop, n_mels=n_mels, f_min=50.0,
            f_max=7600.0, power=2.0, center=True)
        self._mel_frames = torchaudio.transforms.MelSpectrogram(  # the same transform on frames given whole
            sample_rate=SAMPLE_RATE, n_fft=self.n_fft, hop_length=self.hop, n_mels=n_mels, f_min=50.0,
            f_max=7600.0, power=2.0, center=False)

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
            frames = 1 + x.numel() // self.hop
            out[i, 0] = self._whole(x) if frames <= self.chunk_frames else self._chunked(x, frames)
        return out

    def _whole(self, x: torch.Tensor) -> np.ndarray:
        logmel = torch.log(self._mel(x) + 1e-6)  # [n_mels, frames]
        delta = logmel[:, 1:] - logmel[:, :-1] if logmel.shape[1] > 1 else torch.zeros_like(logmel)
        return torch.cat([logmel.mean(1), logmel.std(1, unbiased=False),
                          delta.abs().mean(1), delta.std(1, unbiased=False)]).numpy()

    def _samples(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Samples [start, stop) of the clip reflect-padded by n_fft // 2 at both ends (as center=True pads it),
        without padding the whole clip."""
        pad, n = self.n_fft // 2, x.numel()
        idx = torch.arange(start - pad, stop - pad)
        idx = torch.where(idx < 0, -idx, idx)
        idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)
        return x[idx]

    def _chunked(self, x: torch.Tensor, frames: int) -> np.ndarray:
        """The statistics of `_whole`, the frames transformed `chunk_frames` at a time (float64 sums)."""
        sums = np.zeros((4, self.n_mels), np.float64)  # logmel, logmel^2, |delta|, delta^2 (summed over frames)
        dsum = np.zeros(self.n_mels, np.float64)
        last = None
        for t0 in range(0, frames, self.chunk_frames):
            t1 = min(frames, t0 + self.chunk_frames)
            seg = self._samples(x, t0 * self.hop, (t1 - 1) * self.hop + self.n_fft)
            logmel = torch.log(self._mel_frames(seg) + 1e-6).double()  # [n_mels, t1 - t0]
            joined = logmel if last is None else torch.cat([last, logmel], 1)
            delta = joined[:, 1:] - joined[:, :-1]
            sums += torch.stack([logmel.sum(1), (logmel ** 2).sum(1), delta.abs().sum(1), (delta ** 2).sum(1)]).numpy()
            dsum += delta.sum(1).numpy()
            last = logmel[:, -1:]
        mean, dmean, deltas = sums[0] / frames, sums[2] / (frames - 1), frames - 1
        std = np.sqrt(np.maximum(sums[1] / frames - mean ** 2, 0))
        dstd = np.sqrt(np.maximum(sums[3] / deltas - (dsum / deltas) ** 2, 0))
        return np.concatenate([mean, std, dmean, dstd]).astype(np.float32)
