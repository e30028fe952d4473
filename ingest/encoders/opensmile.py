"""`egemaps` and `compare`: openSMILE's functionals of a whole clip, computed in the decode workers.

eGeMAPSv02 (88 features: pitch, jitter, shimmer, loudness, formants, spectral balance, voicing)
and ComParE 2016 (6,373) through `opensmile.Smile(feature_set, FeatureLevel.Functionals)` on the
decoded 16 kHz mono wave: one vector per clip, stored as the one layer `functionals`. The
openSMILE library ships inside the `opensmile` wheel: no download, no GPU. It is CPU work, so
ingest runs it in the decode worker processes right after decoding (`worker_features`, one Smile
object per process): it scales with --decode-workers and never stalls a GPU encoder on the rank.
The features live on very different scales (Hz, dB, ratios), so the record asks for per-feature
standardisation (`standardize`).

Decisions, measured on decoded speech (opensmile 2.6.0, openSMILE 3.0.1):

- **Too short: quarantined**, reason `too short: ...`. Below 960 samples (0.06 s, openSMILE's
  longest analysis window) openSMILE emits no frame and the package fills the vector with NaN
  ("Segment too short"); the threshold is the same for speech, noise and silence and for both
  sets. Padding was not chosen: the padded silence would be part of every functional (loudness
  mean, voiced share, pitch percentiles) of exactly the clips it meant to save, and 60 ms holds
  no prosody worth keeping.
- **fp16: large magnitudes are log-compressed, never clipped flat nor stored as inf.** ComParE
  gives about 60 features beyond fp16's 65,504 on ordinary speech (spectral variance in Hz^2
  around 5e6, its LPC gain up to ~1e12); quarantining would drop every clip and clipping would
  flatten those features to a constant. So |y| <= 8192 is stored as openSMILE gives it, and
  beyond that y -> sign(y) (8192 + 1024 ln(|y| / 8192)): monotone, continuous, and inverted by
  `expand` after fp16 rounding to within 0.4 % (|y| < 2.4e7), 0.8 % (< 2.2e14) or 1.6 %; it
  reaches 65,504 (where it is clipped) only past |y| ~ 1.7e28. Every eGeMAPS value measured stays below
  the knee (largest: ~5e3). Other non-finite output quarantines the clip (`encode error: ...`).
- The package turns floats into int16 as `x * 32768`, so a sample of exactly 1.0 (the peak of
  every decoded wave) wraps to -32768: waves are scaled by 32767/32768 first.
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any

import numpy as np

from ingest.encoders.base import SAMPLE_RATE, AudioEncoder, record_layers
from lake.errors import LakeError
from lake.layers import resolve_layers

FEATURE_SETS = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}
KNEE, PER_E = 8192.0, 1024.0  # identity up to KNEE, then 1024 per factor e
FP16_MAX = 65504.0
_INT16_SAFE = np.float32(32767 / 32768)


def compress(y: np.ndarray) -> np.ndarray:
    """fp16-safe values: identity for |y| <= KNEE, logarithmic beyond, clipped at +-65,504."""
    a = np.abs(y)
    big = a > KNEE
    out = np.where(big, np.sign(y) * (KNEE + PER_E * np.log(np.where(big, a, KNEE) / KNEE)), y)
    return np.clip(out, -FP16_MAX, FP16_MAX).astype(np.float32)


def expand(f: np.ndarray) -> np.ndarray:
    """The inverse of `compress` (below its clip): stored values back to openSMILE's scale."""
    f = np.asarray(f, dtype=np.float64)
    a = np.abs(f)
    return np.where(a > KNEE, np.sign(f) * KNEE * np.exp((a - KNEE) / PER_E), f)


@functools.lru_cache(maxsize=1)
def library_version() -> str:
    """The openSMILE library's version: the package does not expose it, but its bundled library
    holds the string the SMILExtract banner prints ("openSMILE version X")."""
    from opensmile.core.lib import smileapi_path

    with open(smileapi_path, "rb") as f:
        found = re.search(rb"\x00(\d+\.\d+\.\d+)\x00openSMILE\x00", f.read())
    return found.group(1).decode() if found else "unknown"


class OpenSmileEncoder(AudioEncoder):
    revision = "v1"

    def __init__(self, name: str = "egemaps", layers: str = "all", **_):
        import opensmile

        self.name = name
        self.feature_set = FEATURE_SETS[name]
        self._smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.feature_set),
                                      feature_level=opensmile.FeatureLevel.Functionals)
        self.feature_names = list(self._smile.feature_names)
        self.dim = len(self.feature_names)
        self.layers = resolve_layers(layers, ["functionals"])
        self.package_version = opensmile.__version__
        # what ingest hands to its decode workers (picklable: a module function and a name)
        self.worker_features = functools.partial(worker_features, name)

    @classmethod
    def build(cls, name, device="cpu", layers="all", **_):
        return cls(name, layers=layers)

    @classmethod
    def from_record(cls, record, device="cpu", **overrides):
        """Another openSMILE build could compute other features under the same names: refused."""
        enc = cls(record["id"], layers=record_layers(record))
        recorded = record.get("config", {})
        if any(enc.config()[k] != recorded.get(k) for k in ("feature_names", "fp16")):
            raise LakeError(f"this openSMILE ({enc.config()['openSMILE']}) computes other {enc.name} features "
                            f"than the set's ({recorded.get('openSMILE')}); install the opensmile package the set "
                            f"was made with ({recorded.get('opensmile')})")
        return enc

    def info(self) -> dict[str, Any]:
        return {**super().info(), "standardize": True}

    def config(self) -> dict[str, Any]:
        return {"feature_set": self.feature_set, "feature_level": "functionals", "opensmile": self.package_version,
                "openSMILE": library_version(), "fp16": {"knee": KNEE, "per_e": PER_E},
                "feature_names": self.feature_names}

    def features(self, wave: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """One clip: (float32 [1, dim], None), or (None, "category: detail") when it cannot be used."""
        x = np.asarray(wave, dtype=np.float32) * _INT16_SAFE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Segment too short, filling with NaN": reported below
            y = self._smile(x, SAMPLE_RATE)[0, :, 0]
        finite = np.isfinite(y)
        if not finite.any():
            return None, (f"too short: {len(x) / SAMPLE_RATE:.3f} s gives openSMILE {self.feature_set} no complete "
                          "analysis window (it needs 0.06 s)")
        if not finite.all():
            bad = [n for n, ok in zip(self.feature_names, finite) if not ok]
            return None, (f"encode error: openSMILE {self.feature_set} gave {len(bad)} non-finite features "
                          f"({bad[0]}, ...)")
        return compress(y)[None, :], None

    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        """In-process (prediction): raises LakeError naming the reason for a clip openSMILE cannot use."""
        out = np.empty((len(waves), 1, self.dim), dtype=np.float32)
        for i, w in enumerate(waves):
            feats, reason = self.features(w)
            if feats is None:
                raise LakeError(f"{self.name}: {reason}")
            out[i] = feats
        return out


_WORKER: dict[str, OpenSmileEncoder] = {}


def worker_features(name: str, wave: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """In a decode worker: `OpenSmileEncoder.features` with one Smile object per process, built on
    first use. Never raises: any failure is the clip's quarantine reason."""
    try:
        if name not in _WORKER:
            _WORKER[name] = OpenSmileEncoder(name)
        return _WORKER[name].features(wave)
    except Exception as e:  # noqa: BLE001 - a clip must never stop the decode worker
        return None, f"encode error: openSMILE {name}: {type(e).__name__}: {e}"
