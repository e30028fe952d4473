"""One ingest rank's rows from audio: read its units, decode in worker processes, encode, pack.

    source.read(unit) --(Clip)--> decode pool (PyAV, N processes, ordered)
        --> window of decoded clips, sorted by length --> audio + text encoders (batched)
        --> BlockPacker (per split) --> the write path (ingest.write.commit.RankCommit)

What is read and packed is counted by the rank's ingest.write.ledger.Ledger (--limit,
committed and duplicate keys, quarantine); how finished rows are committed, segment by
segment, is ingest.write.commit's.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np

from lake.blocks import row_meta
from lake.errors import LakeError
from lake.schema import SAMPLE_RATE
from lake.threads import compute_threads
from ingest.config import IngestConfig
from ingest.decode_pool import Featured, OrderedDecoder, chunk_fn, one_thread
from ingest.encoders.text_cache import TextCache
from ingest.sources.base import Clip, Skip, Unit
from ingest.write.ledger import Ledger
from ingest.write.packer import BlockPacker


MAX_FAILURES_IN_A_ROW = 64
# A clip decoding to much less (or much more) audio than its source says it holds (LAION's JSON
# `duration`, EmoBox's `length`, a manifest segment) is not the clip its transcript and label describe.
SHORT_BY = (0.25, 0.05)  # seconds, share of the declared length: more missing is a truncated clip
LONG_BY = (1.0, 0.5)  # seconds, share: more extra is another recording


def encoder_threads(device: str, spare_cores: int):
    """On a CPU rank, the encoders' torch threads while ingest runs: the cores its decode workers leave
    (at least one). More would fight the workers for the cores (torch's waiting threads spin); a
    user's OMP_NUM_THREADS decides instead. A GPU rank's encoders need no CPU threads of their own."""
    return compute_threads(max(1, spare_cores) if str(device).startswith("cpu") else None)


def duration_mismatch(clip: Clip, dec) -> str | None:
    """A quarantine reason when the decoded length contradicts the length the source declares."""
    declared = getattr(clip, "declared_s", None)
    if not declared or declared <= 0:
        return None
    got = dec.duration_s
    if declared - got > max(SHORT_BY[0], SHORT_BY[1] * declared):
        return f"duration mismatch: decoded {got:.3f} s, the source says {declared:.2f} s (truncated or wrong file)"
    if got - declared > max(LONG_BY[0], LONG_BY[1] * declared):
        return f"duration mismatch: decoded {got:.2f} s, the source says {declared:.2f} s (another recording?)"
    return None


class RankWorker:
    """One rank's producer of rows from audio: `processor()` gives RankCommit the per-segment work.
    `preempted` (lake.signals): when set, reading stops at a clip boundary (the clips in hand are finished)."""

    def __init__(self, cfg: IngestConfig, source, taxonomy: list[str], audio_enc, text_enc, world_size: int,
                 ledger: Ledger, progress=None, preempted=None, device: str = "cpu"):
        self.cfg, self.source, self.device = cfg, source, str(device)
        self.audio_enc = audio_enc
        self.texts = TextCache(text_enc) if text_enc is not None else None  # each distinct text encoded once
        self.world_size, self.ledger = world_size, ledger
        self.label_id = {name: i for i, name in enumerate(taxonomy)}
        self.progress = progress
        self.preempted = preempted
        self._failures_in_a_row = 0
        self._bytes_total = sum(u.size for u in ledger.todo) or 1
        self._bytes_read = self._clips_seen = 0

    def split_of(self, clip: Clip | Skip) -> str:
        return self.source.split_policy.split_of(clip)

    def _stopping(self) -> bool:
        return bool(self.preempted)

    @contextmanager
    def processor(self):
        """The per-segment work: decode in worker processes, then encode (a pool for the whole run)."""
        cfg = self.cfg
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))  # ranks sharing this machine
        cores = (os.cpu_count() or 2) // local_ranks  # this rank's share of the machine
        workers = cfg.decode_workers if cfg.decode_workers > 0 else max(1, cores - 1)
        # spawn, not fork: the parent holds CUDA contexts and a writer thread
        decoder = OrderedDecoder(lambda: ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                                             initializer=one_thread),
                                 chunk_fn(self.audio_enc), chunk=4, max_pending=cfg.batch_size * 32)

        def process(seg: list[Unit], packer: BlockPacker) -> None:
            clips = self._clips(seg)
            self._encode_stream(decoder.map((c, cfg.max_seconds) for c in clips), packer)

        try:
            with encoder_threads(self.device, cores - workers):
                yield process
        except BaseException:
            decoder.terminate()
            raise
        decoder.close()
        if self.progress is not None and self.progress.enabled and self.texts is not None and self.texts.asked:
            self.progress.write(self.texts.summary())

    def _clips(self, seg: list[Unit]) -> Iterator[Clip]:
        """Clips to decode; skip records go straight to quarantine. Stops at a clip boundary when preempted."""
        ledger = self.ledger
        for unit in seg:
            if ledger.full:
                continue  # excluded by --limit: journalled as done with 0 clips
            for item in self.source.read(unit):
                if self._stopping():
                    return
                if isinstance(item, Skip):
                    ledger.skipped(item.key, item.reason, item.source_uri, self.split_of(item))
                    self._clips_seen += 1
                    continue
                if ledger.full:
                    break
                self._clips_seen += 1
                if ledger.take(unit.id, item.key, item.source_uri, self.split_of(item)):
                    yield item
            self._bytes_read += unit.size
            if self.progress is not None and self._bytes_read:  # the run's clips, estimated from the bytes read
                estimate = int(self._clips_seen * self._bytes_total / self._bytes_read)
                self.progress.total = max(self.progress.n, estimate if not ledger.limit else min(estimate,
                                                                                                  ledger.limit))

    def _quarantine(self, clip: Clip, stage: str, reason: str) -> None:
        self.ledger.quarantine(clip.key, stage, reason, clip.source_uri, self.split_of(clip))

    def _encode_stream(self, decoded: Iterable, packer: BlockPacker) -> None:
        window: list = []
        # Clips sorted together by length, for an audio encoder that pads a batch to its longest clip. Features
        # the decode workers computed need no sorting: there a window would only hold the text encoder back
        # until it fills, and leave the last one to encode after the workers finish (one core idle).
        in_workers = getattr(self.audio_enc, "worker_features", None) is not None
        size = self.cfg.batch_size * (1 if in_workers else 16)
        for clip, dec, reason in decoded:
            if dec is not None:
                reason = duration_mismatch(clip, dec)
            if reason is not None:
                self._quarantine(clip, "decode", reason)
                continue
            window.append((clip, dec))
            if len(window) >= size:
                self._encode_window(window, packer)
                window = []
        if window:
            self._encode_window(window, packer)

    def _encode_window(self, window: list, packer: BlockPacker) -> None:
        window.sort(key=lambda cd: cd[1].samples)
        bs = self.cfg.batch_size
        for start in range(0, len(window), bs):
            batch = window[start:start + bs]
            audio = self._encode_audio(batch)
            alive = [(clip, dec, a) for (clip, dec), a in zip(batch, audio) if a is not None]
            clips = [c for c, _, _ in alive]
            text = self._encode_texts([c.transcript for c in clips], clips, "transcript")
            caption = self._encode_texts([c.caption or "" for c in clips], clips, "caption") \
                if self.source.has_captions else [None] * len(clips)
            for (clip, dec, a), t, c in zip(alive, text, caption):
                if t is None or (self.source.has_captions and c is None):
                    continue  # quarantined by the text encoder
                meta = row_meta(clip.key, dec.duration_s, clip.transcript, clip.source_uri,
                                encoded_s=dec.samples / SAMPLE_RATE,
                                caption=(clip.caption or "") if self.source.has_captions else None, extra=clip.extra)
                packer.add(self.split_of(clip), a, t, c, self.label_id[clip.label], meta)
                self.ledger.packed()

    def _encoder_failed(self, last: str, where: str = "", which: str = "audio") -> None:
        """One more clip an encoder failed on; an encoder that fails on every clip (a lost GPU, a broken model)
        stops the run instead of quarantining the whole source."""
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise LakeError(f"the {which} encoder failed on {self._failures_in_a_row} clips in a row{where} (last: "
                            f"{last}); stopping. Finished shards are kept: fix the cause and re-run the same command")

    def _one_by_one(self, encode, items: list, clips: list, what: str, which: str) -> list:
        """`encode(items)` as one batch; if it fails, item by item, a failing item's clip quarantined (None)."""
        try:
            out = list(encode(items))
            self._failures_in_a_row = 0
            return out
        except Exception:  # noqa: BLE001 - retried one by one below, so that only the bad clip is lost
            out = []
        for clip, item in zip(clips, items):
            try:
                out.append(encode([item])[0])
                self._failures_in_a_row = 0
            except Exception as e:  # noqa: BLE001
                self._encoder_failed(f"{type(e).__name__}: {e}", which=which)
                self._quarantine(clip, "encode", f"encode error: {what}: {type(e).__name__}: {e}")
                out.append(None)
        return out

    def _worker_features(self, batch: list) -> list:
        """Features the decode workers computed (`Featured`); their failures are quarantined here."""
        for clip, d in batch:
            if d.failure is None:
                self._failures_in_a_row = 0
                continue
            self._quarantine(clip, "encode", d.failure)
            if d.failure.startswith("encode error"):  # the encoder itself, not the clip ("too short")
                self._encoder_failed(d.failure, " in the decode workers")
        return [d.features for _, d in batch]

    def _encode_audio(self, batch: list) -> list:
        """Per clip: float32 [L, D], or None (quarantined). A failing batch is retried clip by clip."""
        if isinstance(batch[0][1], Featured):
            return self._worker_features(batch)
        out = self._one_by_one(self.audio_enc.encode, [d.wave for _, d in batch], [c for c, _ in batch], "audio",
                               "audio")
        for i, ((clip, _), emb) in enumerate(zip(batch, out)):
            if emb is not None and not np.isfinite(emb).all():
                self._quarantine(clip, "encode", "encode error: non-finite audio embedding")
                out[i] = None
        return out

    def _encode_texts(self, texts: list[str], clips: list, what: str) -> list:
        """Per clip: float32 [Dt], or None (that clip quarantined: the text encoder failed on it)."""
        bs = self.cfg.text_batch_size
        return [v for i in range(0, len(texts), bs)
                for v in self._one_by_one(self.texts.encode, texts[i:i + bs], clips[i:i + bs], what, "text")]
