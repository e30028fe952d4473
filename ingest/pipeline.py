"""One ingest rank: read its units, decode in worker processes, encode, pack, write.

    source.read(unit) --(Clip)--> decode pool (PyAV, N processes, ordered)
        --> window of decoded clips, sorted by length --> audio + text encoders (batched)
        --> BlockPacker (per split) --> BackgroundWriter --> shards + journal

Work is cut into segments of about `checkpoint_mb` of input: at the end of a
segment every open shard is closed and the segment's units are journalled as done,
so a killed run loses at most one segment per rank.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np

from lake.errors import LakeError, Preempted
from ingest.config import IngestConfig
from ingest.decode_pool import Featured, OrderedDecoder, chunk_fn
from ingest.journal import Journal, JournalState
from ingest.output import SetOutput
from ingest.packer import BlockPacker
from ingest.sources.base import Clip, Skip, Unit
from ingest.writer_thread import BackgroundWriter
from shards.writer import RotatingWriter


MAX_FAILURES_IN_A_ROW = 64
# A clip decoding to much less (or much more) audio than its source says it holds (LAION's JSON
# `duration`, EmoBox's `length`, a manifest segment) is not the clip its transcript and label describe.
SHORT_BY = (0.25, 0.05)  # seconds, share of the declared length: more missing is a truncated clip
LONG_BY = (1.0, 0.5)  # seconds, share: more extra is another recording


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


def assign_units(units: list[Unit], world_size: int) -> list[list[Unit]]:
    """Largest first to the least-loaded rank (deterministic for a given world size)."""
    loads = [0] * world_size
    out: list[list[Unit]] = [[] for _ in range(world_size)]
    for u in sorted(units, key=lambda u: (-u.size, u.id)):
        r = min(range(world_size), key=lambda i: (loads[i], i))
        out[r].append(u)
        loads[r] += max(u.size, 1)
    return [sorted(us, key=lambda u: u.id) for us in out]


def segments(units: list[Unit], checkpoint_bytes: float) -> Iterator[list[Unit]]:
    seg, size = [], 0
    for u in units:
        seg.append(u)
        size += u.size
        if size >= checkpoint_bytes:
            yield seg
            seg, size = [], 0
    if seg:
        yield seg


class RankWorker:
    """One rank's share of the units: read, decode, encode, pack, write, commit (segment by segment).

    `run` is the commit protocol every kind of ingest shares (PrecomputedWorker reuses it): open the
    journal and the writer, then per segment `_process(segment, committed, packer)`, close every open
    shard, journal the quarantine and the finished units. `preempted` (lake.signals): when set, the
    clip in hand is finished, the segment's shards are committed, and the run stops (Preempted).
    """

    def __init__(self, cfg: IngestConfig, source, taxonomy: list[str], audio_enc, text_enc, rank: int,
                 world_size: int, state: JournalState, progress=None, out: SetOutput | None = None,
                 preempted=None):
        self.cfg, self.source, self.taxonomy = cfg, source, taxonomy
        self.audio_enc, self.text_enc = audio_enc, text_enc
        self.rank, self.world_size, self.state = rank, world_size, state
        self.out = out or SetOutput(cfg.out)
        self.label_id = {name: i for i, name in enumerate(taxonomy)}
        self.progress = progress
        self.preempted = preempted
        self.clips_read = 0  # clips read from the source, committed ones included (what --limit counts)
        self.quarantine: list[dict] = []
        self.limit = -(-cfg.limit // world_size) if cfg.limit else 0
        self._failures_in_a_row = 0
        self._keys: set[str] = set()  # keys taken by this run: a second clip with one of them is refused

    # -- setup ------------------------------------------------------------------
    def clean_leftovers(self) -> None:
        """Delete this worker id's shards that no journal line committed (a killed run's leftovers)."""
        self.out.clean_leftovers(self.rank, set(self.state.shards))

    def split_of(self, clip: Clip | Skip) -> str:
        return self.source.split_policy.split_of(clip)

    def _stopping(self) -> bool:
        return bool(self.preempted)

    # -- the loop ---------------------------------------------------------------
    def run(self, units: list[Unit]) -> None:
        cfg = self.cfg
        todo = [u for u in units if u.id not in self.state.units_done]
        # clips read by earlier runs count towards --limit, so a resumed run takes the same clips
        self.clips_read = sum(self.state.units_done.get(u.id, 0) for u in units)
        self._unit_clips: dict[str, int] = {}
        self._bytes_total = sum(u.size for u in todo) or 1
        self._bytes_read = 0
        committed = self.state.committed_keys(self.out) if todo and self.state.shards else set()
        journal = Journal(self.out, self.rank)
        rotating = RotatingWriter(self.out.build_root, self.taxonomy, journal.shard, worker=self.rank,
                                  rows_per_shard=cfg.rows_per_shard, next_seq=self.state.next_seq(self.rank))
        writer = BackgroundWriter(rotating)
        packer = BlockPacker(cfg.block_rows, writer.submit, with_caption=self.source.has_captions)
        try:
            with self._processor() as process:
                for seg in segments(todo, cfg.checkpoint_mb * 1e6):
                    process(seg, committed, packer)
                    packer.flush()
                    writer.sync()  # every shard of this segment closed and journalled
                    if self.quarantine:
                        journal.append({"type": "quarantine", "records": self.quarantine})
                        self.quarantine = []
                    if self._stopping():  # the segment's units are not all read: they stay undone
                        raise Preempted(f"{self.preempted.name} received: rank {self.rank} committed its finished "
                                        f"shards; re-run the same command to continue from there")
                    journal.append({"type": "units_done", "units": {u.id: self._unit_clips.get(u.id, 0) for u in seg}})
            writer.stop()
        except BaseException:
            writer.abort()
            raise
        finally:
            journal.close()

    @contextmanager
    def _processor(self):
        """The per-segment work: decode in worker processes, then encode (a pool for the whole run)."""
        cfg = self.cfg
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))  # ranks sharing this machine
        workers = cfg.decode_workers if cfg.decode_workers > 0 else max(1, (os.cpu_count() or 2) // local_ranks - 1)
        # spawn, not fork: the parent holds CUDA contexts and a writer thread
        decoder = OrderedDecoder(lambda: ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")),
                                 chunk_fn(self.audio_enc), chunk=4, max_pending=cfg.batch_size * 32)

        def process(seg: list[Unit], committed: set[str], packer: BlockPacker) -> None:
            clips = self._clips(seg, committed)
            self._encode_stream(decoder.map((c, cfg.max_seconds) for c in clips), packer)

        try:
            yield process
        except BaseException:
            decoder.terminate()
            raise
        decoder.close()

    def _clips(self, seg: list[Unit], committed: set[str]) -> Iterator[Clip]:
        """Clips to decode; skip records go straight to quarantine. Stops at a clip boundary when preempted."""
        for unit in seg:
            if self.limit and self.clips_read >= self.limit:
                continue  # excluded by --limit: journalled as done with 0 clips
            for item in self.source.read(unit):
                if self._stopping():
                    return
                if isinstance(item, Skip):
                    if item.key not in committed:
                        self._quarantine(item.key, "read", item.reason, item.source_uri, self.split_of(item))
                    continue
                if self.limit and self.clips_read >= self.limit:
                    break
                self.clips_read += 1
                self._unit_clips[unit.id] = self._unit_clips.get(unit.id, 0) + 1
                if item.key in committed:
                    continue
                if item.key in self._keys:  # never commit a key twice: the second clip is refused, with why
                    self._quarantine(item.key, "read", f"duplicate key: another clip of this run has key {item.key!r}",
                                     item.source_uri, self.split_of(item))
                    continue
                self._keys.add(item.key)
                yield item
            self._bytes_read += unit.size
            if self.progress is not None and self._bytes_read:  # clips to come, estimated from the bytes read
                done = self.progress.n
                self.progress.total = max(done, int(done * self._bytes_total / self._bytes_read))

    def _quarantine(self, key: str, stage: str, reason: str, source_uri: str, split: str | None) -> None:
        self.quarantine.append({"key": key, "stage": stage, "reason": reason, "source_uri": source_uri, "split": split})
        if self.progress is not None:
            self.progress.update(1)

    def _encode_stream(self, decoded: Iterable, packer: BlockPacker) -> None:
        window: list = []
        size = self.cfg.batch_size * 16  # clips sorted together by length
        for clip, dec, reason in decoded:
            if dec is not None:
                reason = duration_mismatch(clip, dec)
            if reason is not None:
                self._quarantine(clip.key, "decode", reason, clip.source_uri, self.split_of(clip))
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
            clips = [c for c, _ in batch]
            text = self._encode_text([c.transcript for c in clips])
            caption = self._encode_text([c.caption or "" for c in clips]) if self.source.has_captions else None
            for i, (clip, dec) in enumerate(batch):
                if audio[i] is None:
                    continue
                split = self.split_of(clip)
                meta = {"keys": clip.key, "durations": round(float(dec.duration_s), 4),
                        "transcripts": clip.transcript, "source_uris": clip.source_uri,
                        "encoded_s": round(dec.samples / 16000.0, 4)}
                if self.source.has_captions:
                    meta["captions"] = clip.caption or ""
                meta["extra"] = clip.extra
                packer.add(split, audio[i], text[i], None if caption is None else caption[i],
                           self.label_id[clip.label], meta)
                if self.progress is not None:
                    self.progress.update(1)

    def _worker_features(self, batch: list) -> list:
        """Features the decode workers computed (`Featured`); their failures are quarantined here."""
        for clip, d in batch:
            if d.failure is None:
                self._failures_in_a_row = 0
                continue
            self._quarantine(clip.key, "encode", d.failure, clip.source_uri, self.split_of(clip))
            if d.failure.startswith("encode error"):  # the encoder itself, not the clip ("too short")
                self._failures_in_a_row += 1
                if self._failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                    raise LakeError(f"the audio encoder failed on {self._failures_in_a_row} clips in a row in the "
                                    f"decode workers (last: {d.failure}); stopping. Finished shards are kept: fix the "
                                    "cause and re-run the same command")
        return [d.features for _, d in batch]

    def _encode_audio(self, batch: list) -> list:
        """Per clip: float32 [L, D], or None (quarantined). A failing batch is retried clip by clip;
        an encoder that fails on every clip (a lost GPU, a broken model) stops the run instead."""
        if isinstance(batch[0][1], Featured):
            return self._worker_features(batch)
        waves = [d.wave for _, d in batch]
        try:
            out = list(self.audio_enc.encode(waves))
            self._failures_in_a_row = 0
        except Exception:  # noqa: BLE001
            out = []
            for clip, d in batch:
                try:
                    out.append(self.audio_enc.encode([d.wave])[0])
                    self._failures_in_a_row = 0
                except Exception as e:  # noqa: BLE001
                    self._failures_in_a_row += 1
                    if self._failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                        raise LakeError(f"the audio encoder failed on {self._failures_in_a_row} clips in a row "
                                        f"(last: {type(e).__name__}: {e}); stopping. Finished shards are kept: "
                                        "fix the cause and re-run the same command") from e
                    self._quarantine(clip.key, "encode", f"encode error: {type(e).__name__}: {e}",
                                     clip.source_uri, self.split_of(clip))
                    out.append(None)
        for i, ((clip, _), emb) in enumerate(zip(batch, out)):
            if emb is not None and not np.isfinite(emb).all():
                self._quarantine(clip.key, "encode", "encode error: non-finite audio embedding",
                                 clip.source_uri, self.split_of(clip))
                out[i] = None
        return out

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        bs = self.cfg.text_batch_size
        parts = [self.text_enc.encode(texts[i:i + bs]) for i in range(0, len(texts), bs)]
        return np.concatenate(parts) if parts else np.zeros((0, self.text_enc.dim), np.float32)
