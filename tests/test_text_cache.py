"""ingest.encoders.text_cache: each distinct text encoded once, the same vectors as encoding every text."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.text import CREMA_D
from ingest.encoders import build_text_encoder
from ingest.encoders.text_cache import TextCache


class Counting:
    """A real encoder (hashing) that records every batch it is asked for."""

    def __init__(self, fail_on: str | None = None):
        self.inner = build_text_encoder("hashing")
        self.dim = self.inner.dim
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    def encode(self, texts):
        self.batches.append(list(texts))
        if self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        return self.inner.encode(texts)


def test_repeats_are_encoded_once_and_get_the_same_vectors():
    enc = Counting()
    cache = TextCache(enc)
    texts = [CREMA_D[i % 3] for i in range(10)] + ["a new one", None]
    out = cache.encode(texts)
    assert enc.batches == [[CREMA_D[0], CREMA_D[1], CREMA_D[2], "a new one", ""]]  # first-seen order, None is ""
    np.testing.assert_array_equal(out, enc.inner.encode([t or "" for t in texts]))
    # a later batch: only what was never seen goes to the encoder
    out2 = cache.encode([CREMA_D[1], CREMA_D[5], CREMA_D[5]])
    assert enc.batches[-1] == [CREMA_D[5]]
    np.testing.assert_array_equal(out2, enc.inner.encode([CREMA_D[1], CREMA_D[5], CREMA_D[5]]))
    assert (cache.asked, cache.encoded) == (15, 6)
    assert cache.summary() == "text encoder: 6 distinct texts encoded for 15 (60% were repeats)"


def test_memory_is_bounded_least_recently_used_first():
    enc = Counting()
    cache = TextCache(enc, max_bytes=2 * 4 * enc.dim)  # room for two vectors
    assert cache.capacity == 2
    cache.encode(["a", "b"])
    cache.encode(["a"])  # a is now the most recent
    cache.encode(["c"])  # b goes
    cache.encode(["a", "b"])
    assert enc.batches == [["a", "b"], ["c"], ["b"]]


def test_a_failing_batch_keeps_nothing_and_passes_the_error():
    enc = Counting(fail_on="bad")
    cache = TextCache(enc)
    with pytest.raises(RuntimeError, match="bad"):
        cache.encode(["good", "bad"])
    assert cache.asked == cache.encoded == 0
    cache.encode(["good"])  # nothing of the failed call was kept: encoded now
    assert enc.batches[-1] == ["good"]


def test_an_encoder_giving_the_wrong_shape_is_refused():
    class Short(Counting):
        def encode(self, texts):
            return super().encode(texts)[:-1]

    with pytest.raises(ValueError, match="for 2 texts"):
        TextCache(Short()).encode(["x", "y"])


def test_the_benchmark_runs_on_a_small_corpus(tmp_path):
    from benchmarks.text import main

    figures = main(["--corpus", str(tmp_path / "corpus"), "--clips", "40", "--meld-clips", "30",
                    "--text-encoder", "hashing"])
    assert figures["crema_d"]["distinct"] == 12 and figures["crema_d"]["texts"] == 1500
    assert 0 < figures["synthetic"]["repeats"] < 1
    assert figures["synthetic"]["max_fp16_diff"] == 0.0  # hashing: a text's vector does not depend on its batch
