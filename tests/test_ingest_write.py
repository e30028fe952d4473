"""The ingest write path's bookkeeping, in one process: the ledger both producers ask, the audio
encoder's failure streak, and the outcome rank 0 broadcasts (ingest.write)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from conftest import write_set
from ingest.config import IngestConfig
from ingest.decode import Decoded
from ingest.decode_pool import Featured
from ingest.encoders.text_cache import TextCache
from ingest.pipeline import MAX_FAILURES_IN_A_ROW, RankWorker
from ingest.sources.base import Clip, SplitPolicy, Unit
from ingest.write.journal import Journal, JournalState, read_journals
from ingest.write.ledger import Ledger, per_rank_limit
from ingest.write.output import SetOutput
from ingest.write.prepare import Status
from lake.catalog import open_shard_set
from lake.errors import LakeError


def test_the_ledger_takes_what_an_uninterrupted_run_would(tmp_path):
    """Unit "a" finished in an earlier run (4 clips, committed); "b" was cut short after one committed clip."""
    root = tmp_path / "set"
    manifest, _ = write_set(root, {"train": [4, 1]}, rows_per_shard=4)
    out = SetOutput(str(root))
    index = open_shard_set(str(root)).index.to_pylist()
    journal = Journal(out, 0)
    for entry in manifest.shards:
        journal.adopt(entry, [r for r in index if r["shard"] == entry.path])
    journal.append({"type": "units_done", "units": {"a": 4}})
    journal.close()
    units = [Unit("a", 10), Unit("b", 10)]
    ledger = Ledger(units, read_journals(out), out, limit=per_rank_limit(16, 2))  # 8 clips for this rank
    assert [u.id for u in ledger.todo] == ["b"] and ledger.clips_read == 4  # a's clips count towards --limit
    committed = index[-1]["key"]  # the one row of the second shard: b's
    assert not ledger.take("b", committed, "u0", "train")  # in a committed shard: counted, not packed again
    assert ledger.take("b", "new1", "u1", "train")
    assert not ledger.take("b", "new1", "u2", "val")  # a second clip with a key of this run: refused
    ledger.skipped(committed, "malformed json: x", "u0", "train")  # a committed clip is not quarantined again
    ledger.skipped("gone", "malformed json: y", "u3", "val")
    assert not ledger.full
    assert ledger.take("b", "new2", "u4", "test") and ledger.full  # 4 + 4 clips read, the duplicate too
    records = ledger.take_quarantine()
    assert [(r["key"], r["stage"], r["reason"].split(":")[0], r["split"]) for r in records] == [
        ("new1", "read", "duplicate key", "val"), ("gone", "read", "malformed json", "val")]
    assert ledger.take_quarantine() == []  # journalled once
    assert ledger.clips_of(units) == {"a": 0, "b": 4}
    assert per_rank_limit(0, 4) == 0 and per_rank_limit(10, 4) == 3


class LostGpu:
    """An audio encoder whose every call fails, as one on a lost GPU does."""

    def encode(self, waves):
        raise RuntimeError("CUDA error: device-side assert triggered")


def _worker(tmp_path) -> RankWorker:
    source = type("Source", (), {"split_policy": SplitPolicy("hash", 0.2, 0.2), "has_captions": False})()
    ledger = Ledger([], JournalState(), SetOutput(str(tmp_path)), limit=0)
    cfg = IngestConfig(source="laion", input=str(tmp_path), out=str(tmp_path / "out"))
    return RankWorker(cfg, source, ["a"], LostGpu(), None, 1, ledger)


def _clips(n: int) -> list[Clip]:
    return [Clip(key=f"k{i}", transcript="", label="a", source_uri=f"u{i}") for i in range(n)]


def test_an_audio_encoder_failing_on_every_clip_stops_the_run_either_way(tmp_path):
    """In this process (a failed batch retried clip by clip) or in the decode workers: the same streak."""
    wave = np.zeros(1600, np.float32)
    worker = _worker(tmp_path)
    batch = [(c, Decoded(wave, 0.1, False)) for c in _clips(MAX_FAILURES_IN_A_ROW + 6)]
    with pytest.raises(LakeError, match=rf"failed on {MAX_FAILURES_IN_A_ROW} clips in a row \(last: RuntimeError: CUDA"):
        worker._encode_audio(batch)
    assert len(worker.ledger.take_quarantine()) == MAX_FAILURES_IN_A_ROW - 1  # the ones before the stop
    worker = _worker(tmp_path)
    short = [(c, Featured(wave[:0], 0.01, False, None, "too short: 0.010 s")) for c in _clips(100)]
    assert worker._encode_audio(short) == [None] * 100  # the clips' fault, not the encoder's: no streak
    failing = [(c, Featured(wave[:0], 0.1, False, None, "encode error: RuntimeError: x")) for c in _clips(100)]
    with pytest.raises(LakeError, match=rf"failed on {MAX_FAILURES_IN_A_ROW} clips in a row in the decode workers"):
        worker._encode_audio(failing)


def test_the_outcome_rank_0_broadcasts_pickles_whole():
    """torch.distributed.broadcast_object_list pickles it: every rank gets the same status and SetOutput."""
    out = SetOutput("s3://bucket/sets/laion", "/tmp/staging-x")
    status, back = pickle.loads(pickle.dumps((Status.RESUME, out)))
    assert status is Status.RESUME and status == "resume"
    assert (back.root, back.remote, back.staging) == (out.root, True, "/tmp/staging-x")
    error = pickle.loads(pickle.dumps(LakeError("/x: a finished set made with other settings")))
    assert isinstance(error, LakeError) and str(error) == "/x: a finished set made with other settings"


class PickyText:
    """A text encoder that fails on one transcript (a tokenizer choking on it) and works on the others."""

    dim = 3

    def encode(self, texts):
        if "bad" in texts:
            raise ValueError("cannot tokenize")
        return np.ones((len(texts), self.dim), np.float32)


def test_a_transcript_the_text_encoder_fails_on_quarantines_that_clip_only(tmp_path):
    worker = _worker(tmp_path)
    worker.texts = TextCache(PickyText())  # as ingest calls it: each distinct text once
    clips = _clips(5)
    clips[2].transcript = "bad"
    out = worker._encode_texts([c.transcript for c in clips], clips, "transcript")
    assert [x is None for x in out] == [False, False, True, False, False]
    [record] = worker.ledger.take_quarantine()
    assert record["key"] == "k2" and record["reason"] == "encode error: transcript: ValueError: cannot tokenize"
