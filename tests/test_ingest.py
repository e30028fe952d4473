"""`python -m ingest` on a synthetic corpus: the rows it must hold, resume after SIGKILL, 2 ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lake.catalog import open_shard_set
from lake.splits import assign_split
from shards.mapped import ShardMap
from shards.verify import verify_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ingest.synthetic import generate

    root = tmp_path_factory.mktemp("corpus")
    generate(str(root), clips=90, meld_clips=48, seed=3, workers=2)
    truth = [json.loads(line) for line in open(root / "truth.jsonl")]
    return root, truth


def ingest(*args, check=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ingest", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


LAION_ARGS = ("--languages", "en,de", "--decode-workers", "1", "--block-rows", "16", "--rows-per-shard", "48",
              "--val-fraction", "0.2", "--test-fraction", "0.2")


def _rows(root) -> dict[str, dict]:
    return {r["key"]: r for r in open_shard_set(str(root)).index.to_pylist()}


def test_laion_ingest_offline_encoders(corpus, tmp_path):
    src, truth = corpus
    out = tmp_path / "laion"
    proc = ingest("--source", "laion", "--input", src / "laion", "--out", out, *LAION_ARGS)
    assert "rows in" in proc.stdout and "skipped" in proc.stdout and "map to no class" in proc.stdout
    assert "distinct texts encoded for" in proc.stderr  # each repeated transcript or caption encoded once
    problems, _, _ = verify_set(str(out))
    assert problems == []
    laion = [t for t in truth if t["source"] == "laion" and t["status"] not in ("ignored_tar",)]
    ok = {t["key"]: t for t in laion if t["status"] == "ok"}
    rows = _rows(out)
    assert set(rows) == set(ok)  # every good clip once, no bad one
    for key, r in rows.items():
        assert r["label"] == ok[key]["label"]
        assert r["transcript"] == ok[key]["transcript"]
        assert r["split"] == assign_split(key, 0.2, 0.2)
    quarantined = {q["key"] for q in open_shard_set(str(out)).quarantine()}
    bad = {t["key"] for t in laion if t["status"] != "ok"}
    assert bad <= quarantined | {k.rsplit("/", 1)[0] + "/*" for k in bad}
    m = open_shard_set(str(out)).manifest
    assert m.encoders["audio"]["id"] == "fbank" and m.fields == ["audio", "text", "caption", "label"]
    assert m.taxonomy == [c for c in m.taxonomy if c in {t["label"] for t in laion if t["status"] == "ok"}]
    # a second run of the same command finds the set complete
    again = ingest("--source", "laion", "--input", src / "laion", "--out", out, *LAION_ARGS)
    assert "already complete" in again.stdout


def test_meld_ingest_keeps_official_splits(corpus, tmp_path):
    src, truth = corpus
    out = tmp_path / "meld"
    ingest("--source", "meld", "--input", src / "meld", "--out", out, "--decode-workers", "1", "--block-rows", "16")
    assert verify_set(str(out))[0] == []
    shards = open_shard_set(str(out))
    assert shards.taxonomy == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    meld = {t["key"]: t for t in truth if t["source"] == "meld"}
    rows = _rows(out)
    assert set(rows) == {k for k, t in meld.items() if t["status"] == "ok"}
    for key, r in rows.items():
        assert (r["split"], r["label"], r["transcript"]) == (meld[key]["split"], meld[key]["label"], meld[key]["transcript"])
        assert "\x92" not in r["transcript"]
        if "final_videos_test" in meld[key]["file"]:
            assert "final_videos_test" in r["source_uri"]  # the re-cut clip, not its plain-named twin
    reasons = {q["key"]: q["reason"] for q in shards.quarantine()}
    for key, t in meld.items():
        if t["status"] == "missing_clip":
            assert reasons[key].startswith("missing clip")
        if t["status"] == "corrupt_audio":
            assert key in reasons
    assert set(shards.manifest.splits) == {"train", "dev", "test"}


def test_a_meld_csv_cut_mid_row_is_reported_and_the_rest_ingested(corpus, tmp_path):
    """Through the command: the cut row is quarantined with its file and line, every other clip lands."""
    import csv

    from ingest.sources.meld import SPLITS

    src, truth = corpus
    meld = tmp_path / "MELD.Raw"
    meld.mkdir()
    for csv_name, folder in SPLITS.values():
        os.symlink(src / "meld" / folder, meld / folder)
        (meld / csv_name).write_bytes((src / "meld" / csv_name).read_bytes())
    text = (meld / "train_sent_emo.csv").read_text(encoding="utf-8").rstrip("\n")
    head, last = text.rsplit("\n", 1)
    row = next(csv.reader([last]))
    cut_key = f"meld/train/dia{row[5]}_utt{row[6]}"
    (meld / "train_sent_emo.csv").write_text(head + "\n" + last[: len(last) // 3], encoding="utf-8")
    out = tmp_path / "meld_set"
    proc = ingest("--source", "meld", "--input", meld, "--out", out, "--decode-workers", "1", "--block-rows", "16")
    assert "Traceback" not in proc.stderr
    assert verify_set(str(out))[0] == []
    shards = open_shard_set(str(out))
    ok = {k for k, t in ((t["key"], t) for t in truth if t["source"] == "meld") if t["status"] == "ok"}
    assert set(_rows(out)) == ok - {cut_key}
    bad = [q["reason"] for q in shards.quarantine() if q["reason"].startswith("bad csv row")]
    assert len(bad) == 1 and f"train_sent_emo.csv line {head.count(chr(10)) + 2}" in bad[0], bad


def test_standin_auristream_and_embeddinggemma(corpus, tmp_path):
    src, truth = corpus
    out = tmp_path / "real-encoders"
    ingest("--source", "laion", "--input", src / "laion", "--out", out, *LAION_ARGS, "--limit", "30",
           "--audio-encoder", "auristream", "--audio-model", os.path.join(FIXTURES, "auristream_tiny"),
           "--audio-tokenizer", os.path.join(FIXTURES, "wavcoch_tiny"), "--audio-layers", "all",
           "--text-encoder", "embeddinggemma", "--text-model", os.path.join(FIXTURES, "embeddinggemma_tiny"))
    assert verify_set(str(out))[0] == []
    m = open_shard_set(str(out)).manifest
    a, t = m.encoders["audio"], m.encoders["text"]
    n_layer = a["config"]["n_layer"]
    assert a["layers"] == [f"h{i}" for i in range(n_layer + 1)] + ["final_norm"]
    assert a["dim"] != 768 and t["dim"] != 768  # read from the stand-ins, not assumed
    assert t["config"]["prompt"] == "Classification"
    assert 0 < sum(s.rows for s in m.shards) <= 30


def _journal_units(out) -> int:
    n = 0
    for name in os.listdir(out / "_work") if (out / "_work").exists() else []:
        if name.startswith("journal-"):
            n += sum('"units_done"' in line for line in open(out / "_work" / name))
    return n


def test_killed_ingest_resumes_to_the_same_rows(corpus, tmp_path):
    src, _ = corpus
    args = ("--source", "laion", "--input", src / "laion", *LAION_ARGS, "--checkpoint-mb", "0.05")
    ingest(*args, "--out", tmp_path / "whole")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ingest", *map(str, args), "--out", str(out)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while _journal_units(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed; lower --checkpoint-mb"
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its decode workers, mid-segment
    proc.wait()
    assert not (out / "manifest.json").exists()
    resumed = ingest(*args, "--out", out)
    assert "resuming" in resumed.stderr
    assert verify_set(str(out))[0] == []
    whole, again = open_shard_set(str(tmp_path / "whole")), open_shard_set(str(out))
    keys = again.index.column("key").to_pylist()
    assert len(keys) == len(set(keys))
    assert set(keys) == set(whole.index.column("key").to_pylist())
    # and the same embeddings for each key
    def embeddings(shards):
        out = {}
        for e in shards.manifest.shards:
            m = ShardMap(shards.shard_path(e), e)
            for b in range(len(e.blocks)):
                blk = m.block(b)
                out.update(zip(blk["meta"]["keys"], blk["audio"]))
        return out
    a, b = embeddings(whole), embeddings(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert {q["key"] for q in whole.quarantine()} == {q["key"] for q in again.quarantine()}


def test_two_ranks_write_one_merged_set(corpus, tmp_path):
    src, _ = corpus
    out = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ingest", "--source", "laion", "--input", str(src / "laion"), "--out", str(out),
                           *LAION_ARGS, "--device", "cpu"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shards = open_shard_set(str(out))
    assert verify_set(str(out))[0] == []
    workers = {os.path.basename(s.path).split("-")[1] for s in shards.manifest.shards}
    assert workers == {"0000", "0001"}  # each rank wrote its own shards, rank 0 merged them
    assert shards.manifest.ingest["settings"]["world_size"] == 2
    single = tmp_path / "one"
    ingest("--source", "laion", "--input", src / "laion", "--out", single, *LAION_ARGS)
    assert sorted(shards.index.column("key").to_pylist()) == sorted(open_shard_set(str(single)).index.column("key").to_pylist())
    assert not (out / "_work").exists()


def test_refuses_a_set_made_with_other_encoders(corpus, tmp_path):
    src, _ = corpus
    out = tmp_path / "s"
    ingest("--source", "laion", "--input", src / "laion", "--out", out, *LAION_ARGS, "--limit", "10")
    proc = ingest("--source", "laion", "--input", src / "laion", "--out", out, *LAION_ARGS, "--limit", "10",
                  "--text-encoder", "hashing", "--audio-layers", "last", "--max-seconds", "2", check=False)
    assert proc.returncode == 2 and "other settings" in proc.stderr and "max_seconds" in proc.stderr
    assert "Traceback" not in proc.stderr
    ingest("--source", "laion", "--input", src / "laion", "--out", out, *LAION_ARGS, "--limit", "10",
           "--max-seconds", "2", "--overwrite")
    assert open_shard_set(str(out)).manifest.ingest["plan"]["max_seconds"] == 2.0
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    proc = ingest("--source", "laion", "--input", src / "laion", "--out", tmp_path / "junk", check=False)
    assert proc.returncode == 2 and "not a shard set" in proc.stderr
    proc = ingest("--source", "laion", "--input", tmp_path / "nowhere", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "not a directory of LAION tars" in proc.stderr
    import torch

    if not torch.cuda.is_available():  # on a GPU machine --device cuda is valid
        proc = ingest("--source", "laion", "--input", src / "laion", "--out", tmp_path / "o", "--device", "cuda",
                      check=False)
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr


def test_help_explains_every_flag():
    from ingest.config import build_parser

    for action in build_parser()._actions:
        assert action.help, action.dest
