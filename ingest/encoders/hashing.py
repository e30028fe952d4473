"""`hashing`: signed hashed word unigrams + bigrams, no weights. The offline text baseline.

Like scikit-learn's HashingVectorizer: each n-gram lands in one of `dim` buckets with
a sign from the same hash (blake2b: stable across processes, unlike `hash()`),
sublinear term frequency, L2-normalised. Empty text gives a zero vector.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from ingest.encoders.base import TextEncoder

_TOKEN = re.compile(r"[a-z0-9']+")


class HashingEncoder(TextEncoder):
    name = "hashing"
    revision = "v1"

    def __init__(self, dim: int = 512):
        self.dim = dim
        self._cache: dict[str, tuple[int, float]] = {}

    @classmethod
    def build(cls, name="hashing", device="cpu", dim: int = 512, **_):
        """Options meant for model encoders (model, revision, prompt) mean nothing here."""
        return cls(dim=int(dim))

    @classmethod
    def from_record(cls, record, device="cpu", **overrides):
        return cls(dim=record["dim"])

    def config(self):
        return {"ngrams": [1, 2], "tf": "sublinear", "norm": "l2"}

    def _bucket(self, gram: str) -> tuple[int, float]:
        hit = self._cache.get(gram)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            if len(self._cache) < 1_000_000:
                self._cache[gram] = hit
        return hit

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = _TOKEN.findall((text or "").lower())
            counts: dict[str, int] = {}
            for g in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
                counts[g] = counts.get(g, 0) + 1
            for g, c in counts.items():
                j, sign = self._bucket(g)
                out[i, j] += sign * (1.0 + np.log(c))
            norm = np.linalg.norm(out[i])
            if norm > 0:
                out[i] /= norm
        return out
