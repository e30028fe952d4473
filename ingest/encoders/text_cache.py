"""Each distinct text encoded once: emotion corpora repeat their sentences.

Acted corpora are scripted: CREMA-D speaks 12 sentences over 7,442 clips, RAVDESS 2 over 1,440,
ESD 350 per speaker in five emotions, TESS one carrier phrase; MELD repeats its short lines
("Okay.", "Yeah.") thousands of times; captions made from a template repeat too. A text encoder
costs the same for a repeat as for a new sentence (all-MiniLM-L6-v2 on one CPU core: ~6 ms a
transcript, ~17 ms a caption; EmbeddingGemma ~10x that), so ingest asks for each distinct text
once per batch and keeps the vectors of recent ones for later batches. `python -m benchmarks.text`
measures it.

A text's vector is the one its first batch gave; a batch of other texts could round it
differently in the last bits of float32 (padding changes the matmul shapes), far below the float16
the shards store. The memory is bounded (least recently used texts are dropped first).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

DEFAULT_MAX_BYTES = 64 << 20  # 43k vectors of MiniLM's 384, 21k of EmbeddingGemma's 768


class TextCache:
    """`encode(texts)` as the encoder's, asking it only for texts not seen recently (each once)."""

    def __init__(self, encoder, max_bytes: int = DEFAULT_MAX_BYTES):
        self.encoder = encoder
        self.capacity = max(1, max_bytes // (4 * max(1, int(encoder.dim))))
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.asked = 0  # texts asked for
        self.encoded = 0  # of them, handed to the encoder

    def encode(self, texts: list[str | None]) -> np.ndarray:
        """float32 [B, dim]; None is the empty text (as the encoders take it). The encoder's errors pass
        through, and nothing of a failed call is kept."""
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}  # text -> its rows in this batch
        for i, text in enumerate(texts):
            text = "" if text is None else text
            vector = self._vectors.get(text)
            if vector is None:
                missing.setdefault(text, []).append(i)
            else:
                self._vectors.move_to_end(text)
                out[i] = vector
        if missing:
            fresh = np.asarray(self.encoder.encode(list(missing)), dtype=np.float32)
            if fresh.shape != (len(missing), self.encoder.dim):
                raise ValueError(f"the text encoder gave {fresh.shape} for {len(missing)} texts of dim {self.encoder.dim}")
            for (text, rows), vector in zip(missing.items(), fresh):
                out[rows] = vector
                self._vectors[text] = vector.copy()  # a row of its own: not a view holding the whole batch
            while len(self._vectors) > self.capacity:
                self._vectors.popitem(last=False)
        self.asked += len(texts)
        self.encoded += len(missing)
        return out

    def summary(self) -> str:
        """One line for the end of a run."""
        share = 1 - self.encoded / self.asked if self.asked else 0.0
        return (f"text encoder: {self.encoded:,} distinct texts encoded for {self.asked:,} "
                f"({share:.0%} were repeats)")
