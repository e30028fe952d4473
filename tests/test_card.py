"""The Hub dataset card of a set (shards.card): README.md's front matter and body, the parquet preview, the
snippets it shows, and how `shards cp` carries it (pushed to the Hub, regenerated elsewhere, left behind by a
pull). The Hub itself is stood in for by a local folder behind the hf:// scheme and a recording HfApi."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from lake.catalog import open_shard_set
from lake.schema import Manifest
from shards import cli
from shards.card import CARD_NAME, CardSettings, card_files, card_settings, size_category, write_card
from shards.copy import copy_set, stage_for_upload, upload_plan
from shards.mapped import ShardMap
from shards.verify import verify_set

from conftest import make_manifest, write_set

SPLITS = {"train": [5, 3, 4, 2, 6], "val": [4], "test": [3, 2]}


@pytest.fixture
def a_set(tmp_path):
    root = tmp_path / "set"
    write_set(root, SPLITS, rows_per_shard=10)
    with open(root / "quarantine.jsonl", "w") as f:
        for i, reason in enumerate(["decode error: 12 bytes: Invalid data", "decode error: truncated",
                                    "unknown emotion prompt: boredom"]):
            f.write(json.dumps({"key": f"bad{i}", "reason": reason, "split": "train", "stage": "read"}) + "\n")
    return str(root)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_front_matter_parses_as_yaml_with_the_keys_the_hub_reads(a_set):
    written = write_card(a_set)
    text = open(os.path.join(a_set, CARD_NAME), encoding="utf-8").read()
    meta = _front_matter(text)
    assert meta["pretty_name"] == "test-set" and meta["license"] == "other"
    assert meta["task_categories"] == ["audio-classification"] and meta["size_categories"] == ["n<1K"]
    assert "emolake" in meta["tags"] and "speech-emotion-recognition" in meta["tags"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": s, "path": f"preview/{s}.parquet"} for s in ("train", "val", "test")]}]
    assert sorted(os.path.relpath(p, a_set) for p in written) == sorted(
        [CARD_NAME] + [f"preview/{s}.parquet" for s in SPLITS])
    from huggingface_hub import DatasetCard

    assert DatasetCard(text).data.to_dict()["configs"] == meta["configs"]  # the Hub's own parser agrees
    # the body: what the set is, rows per split and class, quarantine by reason, the manifest's hash
    assert "29 speech clips" in text and "3 emotion classes" in text
    assert "| 1 | class1 | 12 | 3 | 3 | 18 |" in text and "|  | **all** | 20 | 4 | 5 | 29 |" in text
    assert "| decode error | 2 |" in text and "| unknown emotion prompt | 1 |" in text
    import hashlib

    assert hashlib.sha256(open(os.path.join(a_set, "manifest.json"), "rb").read()).hexdigest() in text


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (99_999, "10K<n<100K"),
                                          (1_200_000, "1M<n<10M"), (2 * 10**9, "1B<n<10B")])
def test_size_categories_are_the_hubs_buckets(rows, bucket):
    assert size_category(rows) == bucket


def test_licence_from_the_source_from_the_flag_and_kept_by_every_regeneration(tmp_path):
    meld = make_manifest(name="meld")
    meld.source = {"kind": "meld", "input": "/data/MELD.Raw"}
    write_set(tmp_path / "meld", {"train": [3], "dev": [2], "test": [2]}, manifest=meld)
    write_card(str(tmp_path / "meld"))
    text = open(tmp_path / "meld" / CARD_NAME, encoding="utf-8").read()
    assert _front_matter(text)["license"] == "gpl-3.0" and "github.com/declare-lab/MELD" in text
    assert _front_matter(text)["language"] == ["en"]
    assert [d["split"] for d in _front_matter(text)["configs"][0]["data_files"]] == ["train", "dev", "test"]

    root = str(tmp_path / "set")
    write_set(root, {"train": [4], "test": [2]})
    assert cli.main(["card", root, "--license", "cc-by-4.0"]) == 0
    assert cli.main(["card", root]) == 0  # no flag: the card's own choice stands
    assert _front_matter(open(os.path.join(root, CARD_NAME), encoding="utf-8").read())["license"] == "cc-by-4.0"
    assert card_settings(root) == CardSettings(license="cc-by-4.0")


def test_bad_license_is_one_line(a_set, capsys):
    assert cli.main(["card", a_set, "--license", "Not A Licence"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --license 'Not A Licence'") and err.count("\n") == 1
    assert not os.path.exists(os.path.join(a_set, CARD_NAME))


def test_preview_loads_with_datasets_as_the_index_rows_with_the_stored_embeddings(a_set, tmp_path):
    import datasets

    write_card(a_set, settings=CardSettings(preview_rows=7, preview_layers="all"))
    shards = open_shard_set(a_set)
    files = {s: os.path.join(a_set, "preview", f"{s}.parquet") for s in SPLITS}
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf-cache"))
    index = shards.index.to_pylist()
    entries = {e.path: e for e in shards.manifest.shards}
    for split in SPLITS:
        want = [r for r in index if r["split"] == split][:7]
        got = ds[split]
        assert got.num_rows == len(want) == min(7, shards.manifest.rows_of(split))
        for col in ("key", "split", "label", "label_id", "transcript", "source_uri"):
            assert got[col] == [r[col] for r in want], col
        np.testing.assert_allclose(got["duration_s"], [r["duration_s"] for r in want], rtol=1e-6)
        for i, r in enumerate(want):
            block = ShardMap(shards.path(r["shard"]), entries[r["shard"]]).block(r["block"])
            for j, layer in enumerate(("h0", "h1")):
                np.testing.assert_array_equal(np.float32(got[i][f"audio_{layer}"]), block["audio"][r["row"], j])
            np.testing.assert_array_equal(np.float32(got[i]["text"]), block["text"][r["row"]])


def test_the_snippets_in_the_card_run_as_written(a_set, tmp_path, capsys, monkeypatch):
    write_card(a_set)
    plain, ours = (next(b for b in _python_blocks(open(os.path.join(a_set, CARD_NAME)).read()) if want in b)
                   for want in ("import webdataset", "from lake.catalog"))
    monkeypatch.chdir(tmp_path)  # the set's path as the card wrote it, from elsewhere
    exec(compile(plain, "card", "exec"), {})  # webdataset + numpy alone
    out = capsys.readouterr().out
    assert out.startswith("train: 20 rows; last block starts with clip000014 class") and "(6, 2, 8) (6, 4)" in out
    exec(compile(ours, "card", "exec"), {})  # this project's loader
    assert capsys.readouterr().out.strip() == "{'audio': (20, 2, 8), 'text': (20, 4), 'label': (20,), 'row': (20,)}"

    # published on the Hub, the card names a local copy made the way it says (`hf download ... --local-dir
    # emo-set`, here a copy by shards cp); the snippet runs in a fresh interpreter beside it
    card = card_files(open_shard_set(a_set), "hf://datasets/someone/emo-set", CardSettings(preview_rows=0))
    text = card[CARD_NAME].decode()
    assert "hf download someone/emo-set --repo-type dataset --local-dir emo-set" in text
    assert "open_shard_set(\"hf://datasets/someone/emo-set\")" in text and list(card) == [CARD_NAME]
    copy_set(a_set, str(tmp_path / "emo-set"))
    plain = next(b for b in _python_blocks(text) if "import webdataset" in b)
    r = subprocess.run([sys.executable, "-c", plain], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout == out, r.stderr


def test_a_card_leaves_the_set_as_it_was_and_is_regenerated_byte_for_byte(a_set):
    manifest = open(os.path.join(a_set, "manifest.json"), "rb").read()
    stale = os.path.join(a_set, "preview", "dev.parquet")  # a split the set no longer has
    os.makedirs(os.path.dirname(stale))
    open(stale, "wb").write(b"old")
    first = {p: open(p, "rb").read() for p in write_card(a_set)}
    assert not os.path.exists(stale)
    assert {p: open(p, "rb").read() for p in write_card(a_set)} == first
    assert open(os.path.join(a_set, "manifest.json"), "rb").read() == manifest
    assert open_shard_set(a_set).fingerprint == Manifest.from_json(manifest.decode()).fingerprint()
    problems, warnings, _ = verify_set(a_set)
    assert problems == [] and warnings == []


def test_card_out_writes_elsewhere_and_a_local_copy_gets_its_own(a_set, tmp_path):
    out = tmp_path / "card-only"
    assert cli.main(["card", a_set, "--out", str(out), "--preview-rows", "3"]) == 0
    assert sorted(os.listdir(out)) == [CARD_NAME, "preview"] and not os.path.exists(os.path.join(a_set, CARD_NAME))
    dst = tmp_path / "copy"
    assert copy_set(a_set, str(dst)).card is False  # no card at the source: none made
    write_card(a_set, settings=CardSettings(license="mit", preview_rows=5))
    s = copy_set(a_set, str(dst))
    text = open(dst / CARD_NAME, encoding="utf-8").read()
    assert s.card and f'SET = "{dst}"' in text and _front_matter(text)["license"] == "mit"
    assert card_settings(str(dst)) == CardSettings(license="mit", preview_rows=5)


# -- the Hub: hf:// on a local folder, and an HfApi that writes there --------------------------------------------

class _LocalHub(DirFileSystem):
    """hf:// backed by a local folder: info, cat, open, ls, pipe and rm, as HfFileSystem answers them (no LFS
    record: hashes are computed by reading)."""

    protocol = "hf"
    cachable = False
    folder = ""

    def __init__(self, *args, **kwargs):
        super().__init__(path=self.folder, fs=LocalFileSystem(auto_mkdir=True))


class _RecordingApi:
    """The HfApi calls `shards cp` makes, applied to the local hub folder and recorded."""

    def __init__(self, folder):
        self.folder, self.uploads, self.deleted, self.commits = folder, [], [], 0

    def repo_info(self, repo_id, repo_type, revision):
        from types import SimpleNamespace

        return SimpleNamespace(sha=f"{self.commits:040x}")  # the branch's head commit

    def upload_large_folder(self, repo_id, folder, repo_type, revision, allow_patterns, print_report):
        self.commits += 1
        self.uploads.append(list(allow_patterns))
        for rel in allow_patterns:
            target = os.path.join(self.folder, "datasets", repo_id, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(os.path.join(folder, rel), "rb") as src, open(target, "wb") as dst:
                dst.write(src.read())

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, repo_type, revision, commit_message,
                    parent_commit=None):
        if parent_commit is not None and parent_commit != self.repo_info(repo_id, repo_type, revision).sha:
            import requests
            from huggingface_hub.errors import HfHubHTTPError

            response = requests.Response()
            response.status_code = 412
            raise HfHubHTTPError("412 Precondition Failed: A commit has happened since.", response=response)
        self.commits += 1
        with open(os.path.join(self.folder, "datasets", repo_id, path_in_repo), "wb") as f:
            f.write(path_or_fileobj)

    def create_commit(self, repo_id, operations, repo_type, revision, commit_message):
        self.commits += 1
        for op in operations:
            self.deleted.append(op.path_in_repo)
            os.remove(os.path.join(self.folder, "datasets", repo_id, op.path_in_repo))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import importlib

    import huggingface_hub

    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setattr(_LocalHub, "folder", str(folder))
    registry = importlib.import_module("fsspec.registry")._registry  # `fsspec.registry` is a read-only view
    monkeypatch.setitem(registry, "hf", _LocalHub)
    api = _RecordingApi(str(folder))
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    return api


def test_upload_plan_holds_the_card_and_the_preview_staged_as_files(a_set, tmp_path):
    shards = open_shard_set(a_set)
    card = card_files(shards, "hf://datasets/someone/emo-set")
    todo, paths = upload_plan(shards, str(tmp_path / "empty-hub"), card)
    assert paths == [e.path for e in todo] + ["index.parquet", "quarantine.jsonl", CARD_NAME,
                                              "preview/test.parquet", "preview/train.parquet", "preview/val.parquet"]
    stage_for_upload(shards, paths, str(tmp_path / "stage"), card)
    for rel, data in card.items():
        assert not os.path.islink(tmp_path / "stage" / rel) and open(tmp_path / "stage" / rel, "rb").read() == data


def test_cp_to_the_hub_uploads_the_card_and_a_pull_leaves_it(a_set, tmp_path, hub):
    write_card(a_set, settings=CardSettings(license="cc-by-4.0"))
    url = "hf://datasets/someone/emo-set"
    s = copy_set(a_set, url, cache_dir=str(tmp_path / "cache"))
    assert s.card and hub.uploads and {CARD_NAME, "preview/train.parquet", "preview/val.parquet",
                                       "preview/test.parquet"} <= set(hub.uploads[-1])
    repo = tmp_path / "hub" / "datasets" / "someone" / "emo-set"
    text = open(repo / CARD_NAME, encoding="utf-8").read()
    assert _front_matter(text)["license"] == "cc-by-4.0"  # the source card's choice travels with the set
    assert "--local-dir emo-set" in text and f"python -m shards verify {url}" in text
    pulled = tmp_path / "pulled"
    copy_set(url, str(pulled))
    assert sorted(os.listdir(pulled)) == ["index.parquet", "manifest.json", "quarantine.jsonl", "shards"]
    assert verify_set(str(pulled))[0] == []

    other = tmp_path / "other"  # another set replaces it: the old set's preview splits go too
    write_set(other, {"train": [4], "test": [3]}, seed=5)
    copy_set(str(other), url, overwrite=True, cache_dir=str(tmp_path / "cache"))
    assert "preview/val.parquet" in hub.deleted and sorted(os.listdir(repo / "preview")) == ["test.parquet",
                                                                                            "train.parquet"]


def test_a_push_whose_repository_moved_after_its_check_commits_no_manifest(a_set, tmp_path, hub, monkeypatch,
                                                                             capsys):
    """The Hub has no lock: the manifest's commit names the commit its shards were checked at as its parent,
    and another push in between makes the Hub refuse it (the 412 the Hub answers, raised by the stand-in)."""
    url = "hf://datasets/someone/emo-set"
    seen = hub.repo_info

    def another_push_meanwhile(*a, **kw):
        head = seen(*a, **kw)
        hub.commits += 1  # e.g. someone else's README.md edit, after this push read the head
        return head

    monkeypatch.setattr(hub, "repo_info", another_push_meanwhile)
    assert cli.main(["cp", a_set, url, "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "the manifest was not committed" in err[0] and url in err[0]
    assert not os.path.exists(tmp_path / "hub" / "datasets" / "someone" / "emo-set" / "manifest.json")
    monkeypatch.setattr(hub, "repo_info", seen)
    assert copy_set(a_set, url, cache_dir=str(tmp_path / "cache")).copied == 0  # the re-run: only the manifest
    assert verify_set(url)[0] == []
