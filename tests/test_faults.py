"""Reliability, second pass: one mechanism per class of fault, each test first failing on the code before it.

  a store that stops answering  lake.storage.storage_defaults (connect/read timeouts, bounded retries) for every
                                request, then one line naming the URL; lake.signals: a second SIGTERM/SIGINT
                                ends the process at once
  one bad clip                  ingest.sources.base.one_clip: every per-clip parse of a source runs in it, so
                                any fault (a non-UTF-8 member name, JSON nested 100,000 deep, end=inf) is that
                                clip's quarantine record and the run goes on
  the memory of a long clip     ingest.decode: one growing float32 buffer, resampled run by run, normalised
                                in place
  messages                      shards.cache: one `warning:` line with sizes in units; evaluation.predict's
                                input checks; report and plot writes through lake.storage.write_bytes_atomic
"""

from __future__ import annotations

import dataclasses
import io
import json
import mmap
import os
import subprocess
import sys
import tarfile
import types

import numpy as np
import pytest
from test_decode import tone, write

from lake.catalog import open_shard_set

from conftest import FullDisk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODERS = ("--audio-encoder", "fbank", "--text-encoder", "hashing")
ARGS = ("--decode-workers", "1", "--block-rows", "8", "--rows-per-shard", "16", "--val-fraction", "0.2",
        "--test-fraction", "0.2", *ENCODERS)


def run_ingest(capsys, *args) -> tuple[int, str, str]:
    from ingest.run import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def quarantined(out) -> dict[str, str]:
    return {q["key"]: q["reason"] for q in open_shard_set(str(out)).quarantine()}


def keys(out) -> set[str]:
    return set(open_shard_set(str(out)).index.column("key").to_pylist())


def mp3_bytes(tmp_path, i: int) -> bytes:
    path = write(tmp_path / f"c{i}.mp3", tone(0.6, 24000, freq=180.0 + 20 * i), 24000, "mp3", "libmp3lame")
    with open(path, "rb") as f:
        return f.read()


# -- one bad clip: quarantined with its reason, the run goes on -------------------------------------------

LAION_TAR = "en_ash_intense_anger_rage_fury_hatred_and_annoyance"


def _laion_with_bad_members(tmp_path) -> str:
    """A LAION tar of good clips and, between them, a member name in another encoding (raw byte 0xff), JSON
    nested 100,000 levels deep, a transcript with a lone surrogate and a NaN duration."""
    def meta(**kw) -> bytes:
        return json.dumps({"duration": 0.6, "flash_transcription": "hello there", **kw}).encode()

    audio = [mp3_bytes(tmp_path, i) for i in range(8)]
    members = []
    for i in range(6):
        members += [(f"{i:06d}.mp3", audio[i]), (f"{i:06d}.json", meta())]
    members.insert(4, ("bad\udcffname.mp3", audio[6]))  # tarfile writes the surrogate back as the byte 0xff
    members.insert(5, ("bad\udcffname.json", meta()))
    members += [("000100.mp3", audio[7]), ("000100.json", b"[" * 100_000 + b"]" * 100_000),
                ("000101.mp3", audio[7]), ("000101.json", b'{"duration": 0.6, "flash_transcription": "\\udc80"}'),
                ("000102.mp3", audio[7]), ("000102.json", b'{"duration": NaN, "flash_transcription": "hi"}')]
    root = tmp_path / "laion"
    root.mkdir()
    with tarfile.open(root / f"{LAION_TAR}.tar", "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(root)


def test_bad_laion_members_are_quarantined_and_the_run_completes_and_reruns(capsys, tmp_path):
    src, out = _laion_with_bad_members(tmp_path), tmp_path / "set"
    with tarfile.open(os.path.join(src, f"{LAION_TAR}.tar"), encoding="utf-8", errors="strict") as tar:
        with pytest.raises(UnicodeDecodeError):  # the defect is really in the tar's bytes
            tar.getmembers()
    code, _, err = run_ingest(capsys, "--source", "laion", "--input", src, "--out", out, *ARGS)
    assert code == 0, err
    assert keys(out) == {f"{LAION_TAR}/{i:06d}" for i in range(6)}
    why = quarantined(out)
    assert why[f"{LAION_TAR}/bad\\xffname.mp3"].startswith("bad member name: bad\\xffname.mp3 is not UTF-8")
    assert why[f"{LAION_TAR}/bad\\xffname.json"].startswith("bad member name")
    assert why[f"{LAION_TAR}/000100"].startswith("malformed json: RecursionError")
    assert why[f"{LAION_TAR}/000101"].startswith("not UTF-8: the transcript holds '\\udc80'")
    assert why[f"{LAION_TAR}/000102"] == "not a number: the extra json_duration is nan"
    code, stdout, err = run_ingest(capsys, "--source", "laion", "--input", src, "--out", out, *ARGS)
    assert code == 0 and "already complete" in stdout, err


def test_bad_manifest_numbers_are_quarantined_before_any_work_and_the_run_completes(capsys, tmp_path):
    for i in range(6):
        write(tmp_path / f"c{i}.wav", tone(0.5, 16000, freq=200.0 + 30 * i), 16000, "wav", "pcm_s16le")
    (tmp_path / "m.csv").write_text("path,label,start,end\n" + "".join(
        f"c{i}.wav,{['happy', 'sad'][i % 2]},,\n" for i in range(6)) +
        "c0.wav,happy,0,inf\n"  # line 8
        "c1.wav,sad,nan,0.3\n"  # line 9
        "c2.wav,sad,-1,0.3\n")  # line 10
    out = tmp_path / "set"
    code, _, err = run_ingest(capsys, "--source", "manifest", "--input", tmp_path / "m.csv", "--out", out, *ARGS)
    assert code == 0, err
    assert keys(out) == {f"c{i}" for i in range(6)}
    why = quarantined(out)
    assert why["m/line8"].startswith("bad segment: end 'inf' is not a finite number of seconds")
    assert why["m/line9"].startswith("bad segment: start 'nan' is not a number (")
    assert why["m/line10"].startswith("bad segment: start '-1' is negative")


def test_the_guard_turns_any_fault_of_one_clip_into_its_skip():
    from ingest.sources.base import Clip, Skip, one_clip
    from ingest.sources.location import SourceReadError
    from lake.errors import LakeError

    def skip(why):
        return Skip(key="k\udcfe", reason=why)

    def boom():
        raise KeyError("duration")

    assert one_clip(boom, skip) == Skip(key="k\\xfe", reason="bad clip: KeyError: 'duration'")
    clip = Clip(key="k", transcript="t", label="x", source_uri="u", declared_s=float("inf"))
    assert one_clip(lambda: clip, skip).reason == "not a number: the duration is inf"
    assert one_clip(lambda: dataclasses.replace(clip, declared_s=1.0), skip).declared_s == 1.0
    for run_level in (LakeError("the store is gone"), SourceReadError("s3://b/x.tar: reading failed")):
        with pytest.raises(type(run_level)):
            one_clip(lambda: (_ for _ in ()).throw(run_level), skip)


def test_split_hash_takes_any_key_and_keeps_every_utf8_key_where_it_was():
    from lake.splits import unit_interval

    assert unit_interval("en_x/000001") == 0.5138380334663006  # the hash of v1: no clip changes split
    assert 0 <= unit_interval("tar/bad\udcffname") < 1 and 0 <= unit_interval("\ud800") < 1


# -- messages ------------------------------------------------------------------------------------------

def test_cache_warnings_are_one_line_with_sizes_in_units(capsys, tmp_path, monkeypatch):
    from conftest import make_manifest, write_set

    import shards.cache as cache_mod

    root = tmp_path / "set"
    write_set(root, {"train": [4, 4]}, make_manifest())
    shards = dataclasses.replace(open_shard_set(str(root)), cache_dir=str(tmp_path / "cache"), cache_limit_gb=1e-6)
    entries = shards.manifest.shards_of("train")
    assert cache_mod.cache_for(shards, entries) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "cache_for" not in err and "warn(" not in err
    assert "exceed the shard cache's limit (1000 B, --cache-limit 1e-06 GB)" in err and " KiB)" in err
    shards = dataclasses.replace(shards, cache_limit_gb=1.0)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=300 << 20))
    assert cache_mod.cache_for(shards, entries) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "300.0 MiB free" in err and "0.0 GB" not in err


def test_report_and_plot_on_a_full_disk_name_their_file(tmp_path, monkeypatch, capsys):
    from evaluation.plots import plot_confusion
    from evaluation.report import write_report
    from lake.cli import run_cli

    out = tmp_path / "reports"
    FullDisk(monkeypatch, out)
    code = run_cli(lambda: plot_confusion(np.eye(3), ["a", "b", "c"], out / "confusion.png", "t"))
    err = capsys.readouterr().err
    assert code == 2 and f"no space left on the device holding {out / 'confusion.png'}" in err, err
    code = run_cli(lambda: write_report(out, "stage3", {"accuracy": 0.5},
                                        {"checkpoint": "c.pt", "fingerprint": "f", "split": "test"}))
    err = capsys.readouterr().err
    assert code == 2 and f"no space left on the device holding {out / 'metrics.json'}" in err, err
    assert not [n for n in os.listdir(out)]  # no half-written file left behind


def test_predict_inputs_say_what_is_wrong_with_each_file(tmp_path):
    from evaluation.predict import InputError, format_predictions, load_input

    wav = write(tmp_path / "a.wav", tone(0.5, 16000), 16000, "wav", "pcm_s16le")
    (tmp_path / "a.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(InputError, match=r"a.txt is not UTF-8 text \(byte 0xe9 at offset 3\).*--transcript"):
        load_input(wav, None)
    dec, text = load_input(wav, "given")
    assert text == "given" and dec.samples == 8000
    (tmp_path / "a.txt").write_text("café au lait\n", encoding="utf-8")
    assert load_input(wav, None)[1] == "café au lait"
    with pytest.raises(InputError, match="a directory, not an audio file"):
        load_input(str(tmp_path), None)
    with pytest.raises(InputError, match="no such file"):
        load_input(str(tmp_path / "gone.wav"), None)
    assert format_predictions([{"file": "d", "error": "a directory, not an audio file"}]) == \
        "d: a directory, not an audio file"


# -- a second stop signal ends the process at once -------------------------------------------------------

STUCK = """
import sys, time
from lake.signals import preemption_signals
with preemption_signals() as flag:
    print("ready", flush=True)
    while True:  # a loop that never reaches a safe point: a read from a store that stopped answering
        time.sleep(0.05)
        if flag:
            name = flag.name
            flag.signal = None  # still stuck: it cannot act on the request (reset before saying so: the test's
            print(name, flush=True)  # next signal may come the moment it reads this line)
"""


@pytest.mark.parametrize("second", ["SIGTERM", "SIGINT"])
def test_a_second_stop_signal_ends_a_stuck_process_at_once(second, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", STUCK], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "SIGTERM\n"  # the first one asks: the process goes on
        assert proc.poll() is None
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, second))
        code = proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert code == -getattr(signal, second), (code, err)  # ended by the signal, as a shell and a scheduler expect
    assert "stopped: a second stop signal" in err and "Traceback" not in err


def test_the_first_ctrl_c_still_interrupts_and_a_repeated_sigusr1_is_no_second_request(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", STUCK], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        for _ in range(2):
            proc.send_signal(signal.SIGUSR1)
            assert proc.stdout.readline() == "SIGUSR1\n"
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # the first SIGTERM/SIGINT after a SIGUSR1 is a second request too
        assert proc.wait(timeout=10) == -signal.SIGINT
    finally:
        proc.kill()


# -- a store that stops answering ------------------------------------------------------------------------

class FrozenEndpoint:
    """A TCP server that accepts every connection and never answers: an S3 endpoint that froze (a stopped
    process still completes the handshake from the kernel's backlog). Counts the connections it was sent."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def test_every_s3_request_has_timeouts_and_bounded_tries_that_a_user_can_change(monkeypatch):
    from lake import storage

    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setattr(storage, "_options", lambda conf={}: conf)  # a fresh fsspec configuration
    fs, _ = storage.filesystem("s3://some-bucket/set")
    assert fs.config_kwargs == {"connect_timeout": 5, "read_timeout": 10,
                                "retries": {"total_max_attempts": 3, "mode": "standard"}}
    assert fs.retries == storage.S3FS_TRIES == 2  # s3fs's own loop: 5 before, around botocore's 5 (legacy)
    storage.set_storage_options(["s3://some-bucket/set"], '{"config_kwargs": {"read_timeout": 60}}')
    assert storage.request_options("s3://x")["config_kwargs"] == {
        "connect_timeout": 5, "read_timeout": 60, "retries": {"total_max_attempts": 3, "mode": "standard"}}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # the AWS configuration's own setting wins over ours
    assert storage.request_options("s3://x")["config_kwargs"]["retries"] == {"mode": "standard"}
    assert "10 s without an answer, tried 3 times with backoff, twice over" in storage.LIMITS_HELP


def test_a_frozen_store_is_one_line_naming_the_url_within_the_limits(tmp_path):
    import subprocess
    import sys
    import time

    frozen = FrozenEndpoint()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=frozen.url, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "shards", "ls", "s3://bucket/set", "--storage-options",
                               '{"config_kwargs": {"read_timeout": 1, "connect_timeout": 1}}'],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    finally:
        frozen.close()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(frozen.held) <= 6, len(frozen.held)  # 3 tries of botocore's, twice: not 5 x 5
    assert took < 60, took  # 6 x 1 s, backoff and start-up
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: s3://bucket/set/manifest.json: cannot "
                                                                   f"reach {frozen.url} (no answer within 1 s, 6 tries")


# -- the memory of one long clip -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """A 10-minute mono wav at 22.05 kHz (resampled to 16 kHz on decode): written in seconds, unlike an mp3
    of that length; the copies that were made (mono pieces, their concatenation, the resampler's frames, the
    output's concatenation) do not depend on the codec. `python -m benchmarks.decode_memory` measures mp3s."""
    return write(tmp_path_factory.mktemp("long") / "ten.wav", tone(600.0, 22050), 22050, "wav", "pcm_s16le")


# The process's peak resident memory, not tracemalloc: the wave's buffer grows and shrinks by realloc (mremap, no
# copy), which tracemalloc on Python 3.13 counts as old + new buffer at once (2.04 "copies" there, 1.04 on 3.11).
PEAK_GROWTH = """
import resource, sys
from ingest.decode import decode_audio
data = open(sys.argv[1], "rb").read()
decode_audio(data[: len(data) // 50])  # the codec's own first-use allocations, before the mark
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = decode_audio(data)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(d.samples, d.wave.dtype, grown / d.wave.nbytes)
"""


def test_decoding_a_long_clip_peaks_near_the_wave_itself(ten_minutes):
    import tracemalloc

    from ingest.decode import decode_audio

    data = open(ten_minutes, "rb").read()
    proc = subprocess.run([sys.executable, "-c", PEAK_GROWTH, str(ten_minutes)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples, dtype, copies = proc.stdout.split()
    assert int(samples) == 600 * 16000 and dtype == "float32"
    assert float(copies) < 1.5, copies  # 1.11 (3.11) and 1.23 (3.13) of the wave's size; 2.78 copies before
    tracemalloc.start()
    try:
        cut = decode_audio(data, max_seconds=30.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cut.cut and cut.duration_s == 600.0 and cut.samples == 30 * 16000
    assert peak < 4 * cut.wave.nbytes  # what is cut is not kept: the stage and a frame, not 10 minutes


def test_a_long_wave_comes_back_from_its_worker_through_shared_memory(ten_minutes, tmp_path):
    import multiprocessing as mp
    import subprocess
    import sys
    from concurrent.futures import ProcessPoolExecutor

    from ingest import decode_pool
    from ingest.decode import decode_audio
    from ingest.decode_pool import OrderedDecoder, decode_chunk
    from ingest.sources.base import Clip

    if not os.path.isdir(decode_pool.SHM_DIR):
        pytest.skip("no /dev/shm here: long waves travel pickled")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = os.path.join(decode_pool.SHM_DIR, f"emolake-wave-{int(gone.stdout)}-test")
    open(orphan, "wb").close()  # what an ingest killed with a long wave in flight leaves

    clips = [Clip(key=k, transcript="", label="x", source_uri=ten_minutes, path=ten_minutes) for k in ("a", "b")]
    dec = OrderedDecoder(lambda: ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")), decode_chunk, chunk=1)
    try:
        assert not os.path.exists(orphan)  # swept when a decoder starts
        out = list(dec.map((c, 0.0) for c in clips))
    finally:
        dec.close()
    expected = decode_audio(ten_minutes).wave
    for clip, decoded, reason in out:
        assert reason is None and np.array_equal(decoded.wave, expected)
        assert isinstance(decoded.wave.base.obj, mmap.mmap)  # the file's memory, not a copy of it
    assert not [n for n in os.listdir(decode_pool.SHM_DIR) if n.startswith(f"emolake-wave-{os.getpid()}-")]
