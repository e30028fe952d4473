"""Every failure a clear message (issue: robustness). One test per class, each checking the exit status,
that the message names the thing and holds no traceback, and that nothing written before was lost.

  storage errors     lake.errors.describe_os_error via lake.cli.run_cli   (full disk, read-only, --out a file)
  --overwrite        ingest.write.output: built beside the old set, swapped in when complete
  one writer         lake.setlock.SetLock (flock; a leased object behind a URL)
  repair             ingest.write.repair: a re-run checks the set and rebuilds or re-ingests what is damaged
  silent results     ingest: no key twice (write.ledger), declared durations, no empty set; predict's warnings
  numbers            lake.cliargs ranges, checked at parse time for every command
  preemption         lake.signals: SIGTERM -> the journal consistent, exit 75, the re-run continues
  logs               lake.progress: plain lines, no \\r, when the output is a file; help without placeholders
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ingest.write.journal import Journal, read_journals
from ingest.write.merge import merge_set
from ingest.write.output import SetOutput, finish_swap, overwrite_sibling
from lake.blocks import parse_shard_name
from lake.catalog import open_shard_set
from lake.setlock import SetLock
from lake.errors import PREEMPTED_EXIT
from shards.verify import verify_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "EMOLAKE_PROGRESS_EVERY": "0"}
ARGS = ("--languages", "en,de", "--decode-workers", "1", "--block-rows", "16", "--rows-per-shard", "32",
        "--val-fraction", "0.2", "--test-fraction", "0.2", "--device", "cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ingest.synthetic import generate

    root = tmp_path_factory.mktemp("corpus")
    generate(str(root), clips=60, meld_clips=0, seed=8, workers=2)
    return root / "laion"


def run(module: str, *args, check: bool = False, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300, **kw)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def ingest(corpus, out, *extra, check=False):
    return run("ingest", "--source", "laion", "--input", corpus, "--out", out, *ARGS, *extra, check=check)


def one_clear_line(proc, code: int, *words: str) -> str:
    """The failure's stderr: exit `code`, no traceback, the last line naming every one of `words`."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    for w in words:
        assert w in last, (w, last)
    return last


def fingerprint(root) -> str:
    return open_shard_set(str(root)).fingerprint


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """A finished, verified set (made once; tests that damage it work on copies)."""
    out = tmp_path_factory.mktemp("finished") / "laion"
    ingest(corpus, out, check=True)
    assert verify_set(str(out))[0] == []
    return out


def copy_of(finished, tmp_path):
    import shutil

    dst = tmp_path / "laion"
    shutil.copytree(finished, dst)
    return dst


# -- 1. storage errors ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs (root only: skipped elsewhere); `remount(size)` grows or freezes it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")

    def remount(opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)

    yield mnt, remount
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_and_a_rerun_with_space_resumes(corpus, finished, small_disk):
    mnt, remount = small_disk
    out = mnt / "laion"
    proc = ingest(corpus, out, "--checkpoint-mb", "0.02")
    one_clear_line(proc, 2, "no space left on the device holding", str(mnt), "finished shards are kept")
    assert not (out / "manifest.json").exists()
    remount("size=64m")  # space freed
    again = ingest(corpus, out, "--checkpoint-mb", "0.02", check=True)
    assert "resuming" in again.stderr
    assert verify_set(str(out))[0] == []
    assert sorted(open_shard_set(str(out)).index.column("key").to_pylist()) == \
        sorted(open_shard_set(str(finished)).index.column("key").to_pylist())


def test_a_read_only_filesystem_and_an_out_that_is_a_file(corpus, small_disk, tmp_path):
    mnt, remount = small_disk
    remount("ro")
    one_clear_line(ingest(corpus, mnt / "laion"), 2, "read-only filesystem", str(mnt))
    afile = tmp_path / "afile"
    afile.write_text("not a set")
    one_clear_line(ingest(corpus, afile), 2, str(afile), "is a file")
    assert afile.read_text() == "not a set"


def test_the_os_error_mapper_names_path_cause_and_remedy():
    import errno

    from lake.errors import describe_os_error

    full = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.tar"))
    assert full.startswith("no space left on the device holding /data/x.tar") and "re-run" in full
    assert "read-only" in describe_os_error(OSError(errno.EROFS, "Read-only file system", "/ro/x"))
    assert "permission denied for /root/x" in describe_os_error(PermissionError(errno.EACCES, "Permission denied",
                                                                                  "/root/x"))
    assert describe_os_error(OSError(errno.EBADMSG, "Bad message", "/x")) == "/x: Bad message"


# -- 2. --overwrite keeps the old set until the new one is complete -------------------------------------

def test_overwrite_keeps_the_old_set_until_the_new_one_is_complete(corpus, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    old = fingerprint(out)
    args = ["--source", "laion", "--input", str(corpus), "--out", str(out), *ARGS, "--overwrite", "--max-seconds", "2",
            "--checkpoint-mb", "0.02"]
    proc = subprocess.Popen([sys.executable, "-m", "ingest", *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    building = tmp_path / ".laion.overwrite" / "_work"
    deadline = time.time() + 120
    while not any(n.startswith("journal-") for n in (os.listdir(building) if building.exists() else [])) \
            and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the new set half built
    proc.wait()
    assert fingerprint(out) == old and verify_set(str(out))[0] == []  # the old set, untouched
    done = run("ingest", *args, check=True)
    assert "resuming" in done.stderr  # the half-built new set was resumed, not restarted
    assert verify_set(str(out))[0] == [] and fingerprint(out) != old
    def builds(root):
        return {parse_shard_name(e.path).build for e in open_shard_set(str(root)).manifest.shards}

    assert len(builds(out)) == 1 and builds(out) != builds(finished)  # the resumed run named its shards as the killed one
    assert open_shard_set(str(out)).manifest.ingest["plan"]["max_seconds"] == 2.0
    assert sorted(os.listdir(tmp_path)) == [".laion.lock", "laion"]  # no work folder or old copy left behind


def test_an_interrupted_swap_is_completed_by_the_next_run(corpus, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    new = overwrite_sibling(SetOutput(str(out)))
    import shutil

    shutil.copytree(finished, new.root)
    os.replace(out, tmp_path / ".laion.replaced")  # killed between the two renames of the swap
    assert "completed an interrupted --overwrite" in finish_swap(SetOutput(str(out)))
    assert verify_set(str(out))[0] == [] and not (tmp_path / ".laion.replaced").exists()


# -- 3. one writer per set ---------------------------------------------------------------------------------

def _wait_for(path, what, proc, timeout=120):
    deadline = time.time() + timeout
    while not (os.path.exists(path) and what(path)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the first ingest ended too soon"


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(corpus, tmp_path):
    out = tmp_path / "laion"
    args = ["--source", "laion", "--input", str(corpus), "--out", str(out), *ARGS, "--checkpoint-mb", "0.02"]
    first = subprocess.Popen([sys.executable, "-m", "ingest", *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for(tmp_path / ".laion.lock", lambda p: str(first.pid) in open(p).read(), first)
    os.killpg(first.pid, signal.SIGSTOP)  # holding the lock, mid-run
    try:
        before = sorted(os.listdir(out / "shards")) if (out / "shards").exists() else []
        second = run("ingest", *args)
        one_clear_line(second, 2, "another ingest", f"pid {first.pid}", "is writing", str(out))
        assert (sorted(os.listdir(out / "shards")) if (out / "shards").exists() else []) == before  # nothing touched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    ingest(corpus, out, "--checkpoint-mb", "0.02", check=True)  # the kernel dropped the dead writer's lock
    assert verify_set(str(out))[0] == []

    with SetLock(str(out)):  # a writer holds the finished set: readers still read it, a writer is refused
        assert run("shards", "verify", out, check=True).stdout.startswith("OK: ")
        assert len(open_shard_set(str(out)).index) == len(_keys(out)) > 0
        one_clear_line(ingest(corpus, out, "--overwrite"), 2, "another ingest", f"pid {os.getpid()}", str(out))


def test_the_object_store_lock_refuses_a_live_owner_and_takes_over_a_dead_one(s3_bucket):
    from lake import storage
    from lake.errors import LakeError

    root = f"{s3_bucket}/sets/locked"
    with SetLock(root):
        with pytest.raises(LakeError, match=r"another ingest \(.*, pid \d+, since .*\) is writing"):
            with SetLock(root):
                pass
    assert not storage.exists(f"{root}/_lock.json")  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    storage.write_bytes_atomic(f"{root}/_lock.json", json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "since": "then", "token": "x",
         "lease_until": time.time() + 3600}).encode())
    with SetLock(root):  # its owner is a dead process of this host: taken over at once
        pass


# -- 4. a damaged set has a repair path ----------------------------------------------------------------------

def _keys(root):
    return sorted(open_shard_set(str(root)).index.column("key").to_pylist())


def test_a_deleted_index_is_rebuilt_by_rerunning_the_command(corpus, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    os.remove(out / "index.parquet")
    report = run("shards", "verify", out)
    assert report.returncode == 1 and "to repair: re-run `python -m ingest --source laion" in report.stdout
    fixed = ingest(corpus, out, check=True)
    assert "repair: index.parquet: rebuilt" in fixed.stderr
    assert verify_set(str(out))[0] == [] and _keys(out) == _keys(finished)


def test_a_truncated_manifest_is_rebuilt_from_the_shards(corpus, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    fixed = ingest(corpus, out, check=True)
    assert "repair: manifest.json: rebuilt" in fixed.stderr
    assert verify_set(str(out))[0] == [] and _keys(out) == _keys(finished)
    assert fingerprint(out) == fingerprint(finished)  # the same shards, the same set


def test_two_swapped_shards_are_found_and_reingested(corpus, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    a, b = sorted((out / "shards").iterdir())[:2]
    tmp = a.with_suffix(".x")
    os.replace(a, tmp), os.replace(b, a), os.replace(tmp, b)
    assert verify_set(str(out))[0] != []
    fixed = ingest(corpus, out, "--check", check=True)
    assert "damaged shard(s) deleted" in fixed.stderr and "ingested again" in fixed.stderr
    assert verify_set(str(out))[0] == [] and _keys(out) == _keys(finished)
    again = ingest(corpus, out, "--check", check=True)
    assert "already complete and checks out" in again.stdout


# -- 5. no silent wrong result ------------------------------------------------------------------------------

def test_a_clip_shorter_than_its_json_says_is_quarantined(tmp_path):
    import io
    import tarfile

    import numpy as np

    from ingest.synthetic.media import encode_mp3

    tars = tmp_path / "tars"
    tars.mkdir()
    rng = np.random.default_rng(0)
    with tarfile.open(tars / "en_alloy_intense_anger_rage_fury_hatred_and_annoyance.tar", "w") as tar:
        for i, (seconds, says) in enumerate([(1.5, 1.5), (1.4, 1.4), (0.003, 3.3)]):
            for name, data in ((f"c{i}.mp3", encode_mp3((0.3 * rng.standard_normal(int(16000 * seconds)))
                                                         .astype(np.float32), sr=16000)),
                               (f"c{i}.json", json.dumps({"duration": says, "flash_transcription": "so angry"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "set"
    run("ingest", "--source", "laion", "--input", tars, "--out", out, *ARGS, "--val-fraction", "0", "--test-fraction",
        "0", check=True)
    reasons = {q["key"]: q["reason"] for q in open_shard_set(str(out)).quarantine()}
    key = next(k for k in reasons if k.endswith("/c2"))
    assert reasons[key].startswith("duration mismatch") and "3.30 s" in reasons[key]
    assert len(_keys(out)) == 2


def test_an_ingest_that_writes_no_row_says_so_and_fails(tmp_path):
    import tarfile

    tars = tmp_path / "tars"
    tars.mkdir()
    with tarfile.open(tars / "en_alloy_intense_anger_rage_fury_hatred_and_annoyance.tar", "w"):
        pass  # an empty tar: nothing to ingest
    proc = run("ingest", "--source", "laion", "--input", tars, "--out", tmp_path / "set", *ARGS)
    one_clear_line(proc, 2, "no clip could be used", "nothing was written as a set")
    assert not (tmp_path / "set" / "manifest.json").exists()


def test_merge_refuses_a_key_committed_by_two_ranks(tmp_path):
    """Each rank never commits a key twice; two ranks sharing one would be a source bug. The merge
    (the last step before a manifest exists) refuses it in one line instead of writing a set whose
    own verify fails."""
    from conftest import write_set

    from lake.errors import LakeError

    root = tmp_path / "set"
    manifest, _ = write_set(root, {"train": [10, 10]}, rows_per_shard=10)
    index = open_shard_set(str(root)).index.to_pylist()
    first, second = manifest.shards  # two shards, as two ranks would have committed them
    rows = {e.path: [r for r in index if r["shard"] == e.path] for e in (first, second)}
    rows[second.path][0]["key"] = rows[first.path][0]["key"]  # rank 1 committed one of rank 0's keys
    for rank, e in enumerate((first, second)):
        journal = Journal(SetOutput(str(root)), rank)
        journal.adopt(e, rows[e.path])
        journal.append({"type": "units_done", "units": {f"unit{rank}": 10}})
        journal.close()
    os.remove(root / "manifest.json")
    plan = {"name": manifest.name, "source": manifest.source, "encoders": manifest.encoders,
            "taxonomy": manifest.taxonomy, "fields": manifest.fields}
    with pytest.raises(LakeError, match=r"the same key was committed by two shards \(" + rows[first.path][0]["key"]):
        merge_set(SetOutput(str(root)), plan, ["unit0", "unit1"], {})
    assert not (root / "manifest.json").exists()


# -- 6. numbers are checked at parse time, the same way everywhere -----------------------------------------

BAD_NUMBERS = [
    ("ingest", ["--batch-size", "0"], "--batch-size", "at least 1"),
    ("ingest", ["--decode-workers", "-1"], "--decode-workers", "at least 0"),
    ("ingest", ["--limit", "-1"], "--limit", "at least 0"),
    ("ingest", ["--max-seconds", "-1"], "--max-seconds", "at least 0"),
    ("ingest", ["--val-fraction", "1.5"], "--val-fraction", "in [0, 1)"),
    ("trainers.slm", ["--batch-size", "0"], "--batch-size", "at least 1"),
    ("trainers.slm", ["--eval-batch-size", "0"], "--eval-batch-size", "at least 1"),
    ("trainers.slm", ["--lr", "-1"], "--lr", "above 0"),
    ("trainers.slm", ["--lr", "nan"], "--lr", "above 0"),
    ("trainers.slm", ["--dropout", "1.5"], "--dropout", "in [0, 1)"),
    ("trainers.slm", ["--label-smoothing", "1"], "--label-smoothing", "in [0, 1)"),
    ("trainers.slm", ["--num-workers", "-1"], "--num-workers", "at least 0"),
    ("trainers.slm", ["--epochs", "0"], "--epochs", "at least 1"),
    ("trainers.clap", ["--log-every", "0"], "--log-every", "at least 1"),
    ("trainers.meld", ["--label-smoothing", "2"], "--label-smoothing", "in [0, 1)"),
    ("evaluation", ["stage3", "--batch-size", "0"], "--batch-size", "at least 1"),
    ("shards", ["head", "-n", "-5"], "-n", "at least 1"),
    ("shards", ["verify", "--workers", "0"], "--workers", "at least 1"),
    ("evaluation", ["probe", "--max-train-rows", "0"], "--max-train-rows", "at least 1"),
    ("benchmarks.train", ["--steps", "0"], "--steps", "at least 1"),
    ("benchmarks.loader", ["--batch-size", "0"], "--batch-size", "at least 1"),
    ("benchmarks.gpu", ["--peak-tflops", "-3"], "--peak-tflops", "above 0"),
]


def _with_required(module, args):
    required = {"ingest": ["--source", "laion", "--input", "x", "--out", "y"], "trainers.slm": ["--data-root", "x",
                "--clap-ckpt", "y"], "trainers.clap": ["--data-root", "x"], "trainers.meld": ["--data-root", "x",
                "--stage3-ckpt", "y"]}
    if module == "evaluation":
        return args + (["--data-root", "y"] if args[0] == "probe" else ["--stage3-ckpt", "x", "--data-root", "y", "--out", "z"])
    if module.startswith("benchmarks."):
        return args
    if module == "shards":
        return args + ["some-set"]
    return required[module] + args


@pytest.mark.parametrize("module,args,flag,rule", BAD_NUMBERS, ids=[f"{m}{' '.join(a)}" for m, a, _, _ in BAD_NUMBERS])
def test_every_numeric_flag_has_a_range_checked_at_parse_time(module, args, flag, rule, capsys):
    import importlib

    main = importlib.import_module({"ingest": "ingest.run", "evaluation": "evaluation.cli", "shards": "shards.cli"}
                                   .get(module, module)).main
    with pytest.raises(SystemExit) as e:
        main(_with_required(module, args))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and f"must be {rule}" in err and "Traceback" not in err


def test_dataclass_configs_check_their_ranges_outside_the_command_line_too():
    from lake.errors import LakeError
    from trainers.slm import SlmConfig

    with pytest.raises(LakeError, match="--log-every must be at least 1, got 0"):
        SlmConfig(data_root="x", clap_ckpt="y", log_every=0)


# -- 9. preemption ---------------------------------------------------------------------------------------------

def test_a_preemption_signal_stops_ingest_at_a_clip_boundary_and_the_rerun_continues(corpus, finished, tmp_path):
    """SIGUSR1 here (Slurm's --signal); the trainers' preemption test sends SIGTERM."""
    out = tmp_path / "laion"
    args = ["--source", "laion", "--input", str(corpus), "--out", str(out), *ARGS, "--checkpoint-mb", "0.02"]
    proc = subprocess.Popen([sys.executable, "-m", "ingest", *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    journal = out / "_work" / "journal-0000.jsonl"
    _wait_for(journal, lambda p: '"units_done"' in open(p).read(), proc)
    proc.send_signal(signal.SIGUSR1)  # to the ingest process; its decode workers are left to it
    _, err = proc.communicate(timeout=120)
    last = one_clear_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), PREEMPTED_EXIT,
                          "SIGUSR1 received", "re-run the same command")
    assert last.startswith("stopped:")
    state = read_journals(SetOutput(str(out)))  # consistent: every journalled shard is there, with its rows
    assert state.shards and not (out / "manifest.json").exists()
    run("ingest", *args, check=True)
    assert verify_set(str(out))[0] == [] and _keys(out) == _keys(finished)


# -- 10. logs a person can read ------------------------------------------------------------------------------

def test_redirected_ingest_logs_are_plain_lines(finished, corpus, tmp_path):
    proc = ingest(corpus, tmp_path / "logged", check=True)
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert any(line.startswith("ingest: ") and " clip" in line for line in proc.stderr.splitlines())


def _parsers():
    from evaluation.cli import build_parser as evaluation
    from ingest.config import build_parser as ingest
    from shards.cli import build_parser as shards
    from trainers import clap, meld, slm
    from trainers.cli import stage_parser

    yield "ingest", ingest()
    yield "evaluation", evaluation()
    yield "shards", shards()
    for mod, cls in ((clap, clap.ClapConfig), (slm, slm.SlmConfig), (meld, meld.MeldConfig)):
        yield mod.__name__, stage_parser(mod.__name__, cls, "", mod.DEFAULTS, mod.PRESETS)
    yield "clap export", clap._export_parser()


def _all(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all(sub)


def test_help_texts_have_no_placeholder_or_doubled_defaults():
    for name, top in _parsers():
        for parser in _all(top):
            text = parser.format_help()
            for bad in ("(default: None)", "(default: )", "..(", ". (default"):
                assert bad not in text, (name, parser.prog, bad)
            for action in parser._actions:
                shown = parser._get_formatter()._expand_help(action) if action.help else ""
                assert shown.lower().count("default") <= 1, (name, parser.prog, action.dest, shown)
