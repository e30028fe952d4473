"""A damaged row is found before it is used: per-block checksums checked on first read, labels checked against the
taxonomy, and a non-finite loss stopping the run; each one line naming the shard and block (or the epoch and step)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from evaluation.cli import main as evaluation
from lake.catalog import open_shard_set
from lake.errors import LakeError
from shards.loader import ShardLoader
from trainers import clap, slm

from conftest import make_manifest, signal_set, write_set


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A clean set, CLAP projectors trained on it, and a fresh copy of the set to damage per test."""
    tmp = tmp_path_factory.mktemp("corrupt")
    root = signal_set(tmp / "clean", rows=(200, 40, 40), name="sig")
    assert clap.main(["--data-root", root, "--save-dir", str(tmp / "clap"), "--epochs", "1", "--batch-size", "32",
                      "--no-progress"]) == 0
    proj = str(tmp / "proj.pt")
    assert clap.main(["export", "--checkpoint", str(tmp / "clap" / "clap_best.pt"), "--out", proj]) == 0
    return root, proj


def damaged_copy(root, tmp_path, member: str, write) -> tuple[str, str, int]:
    """A copy of the set whose first train shard's block 1 `member` payload went through `write(payload bytes)`;
    returns (copy root, shard path, block)."""
    dst = str(tmp_path / "damaged")
    shutil.copytree(root, dst)
    shards = open_shard_set(dst)
    entry = shards.manifest.shards_of("train")[0]
    offset, size = entry.blocks[1].members[member]
    path = shards.shard_path(entry)
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(size))
        header = 10 + int.from_bytes(data[8:10], "little")  # an .npy v1 header
        write(data, header)
        f.seek(offset)
        f.write(bytes(data))
    return dst, path, 1


def _nan_audio(data, header):
    data[header:header + 6] = np.array([np.nan, np.inf, -np.inf], np.float16).tobytes()


def _flip(data, header):
    data[header + 7] ^= 0x10


def _label_999(data, header):
    data[header:header + 2] = np.array([999], np.int16).tobytes()


@pytest.mark.parametrize("member,write", [("audio", _nan_audio), ("text", _flip), ("label", _label_999)])
def test_a_damaged_member_stops_training_in_one_line_naming_shard_and_block(trained, tmp_path, capsys, member, write):
    root, proj = trained
    dst, path, block = damaged_copy(root, tmp_path, member, write)
    save = tmp_path / "slm"
    capsys.readouterr()
    assert slm.main(["--data-root", dst, "--clap-ckpt", proj, "--save-dir", str(save), "--epochs", "2",
                     "--batch-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{path} block {block}" in err and "differ from the checksum" in err and "to repair: re-run" in err
    assert not (save / "slm_stage3_best.pt").exists()
    capsys.readouterr()
    assert evaluation(["stage3", "--stage3-ckpt", str(trained_slm(trained, tmp_path)), "--data-root", dst,
                       "--out", str(tmp_path / "report"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} block" in err, err


def trained_slm(trained, tmp_path):
    root, proj = trained
    save = tmp_path / "good"
    if not (save / "slm_stage3_best.pt").exists():
        assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", str(save), "--epochs", "1",
                         "--batch-size", "32", "--no-progress", "--no-test-at-end"]) == 0
    return save / "slm_stage3_best.pt"


def test_a_set_without_checksums_still_has_its_labels_checked(tmp_path):
    """Sets written before checksums: a label outside the taxonomy is one line, not an IndexError."""
    m = make_manifest(num_classes=3)
    write_set(tmp_path / "old", {"train": [16, 16], "val": [8]}, m)
    shards = open_shard_set(str(tmp_path / "old"))
    for s in shards.manifest.shards:
        for b in s.blocks:
            b.checksums = {}  # as written by earlier code
    entry = shards.manifest.shards_of("train")[0]
    offset, size = entry.blocks[0].members["label"]
    with open(shards.shard_path(entry), "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(size))
        header = 10 + int.from_bytes(data[8:10], "little")
        data[header:header + 2] = np.array([999], np.int16).tobytes()
        f.seek(offset)
        f.write(bytes(data))
    with pytest.raises(LakeError, match=r"block 0: label id 999 is outside the set's 3 classes"):
        list(ShardLoader(shards, "train", 8))


def test_a_loss_that_turns_non_finite_stops_the_run_and_is_never_saved(trained, tmp_path, capsys):
    root, proj = trained
    save = tmp_path / "diverged"
    capsys.readouterr()
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", str(save), "--epochs", "3",
                     "--batch-size", "32", "--lr", "1e30", "--log-every", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the training loss is not finite (NaN or inf) from step" in err, err
    assert "epoch 000" in err and "no checkpoint was saved" in err
    assert not any(name.endswith("best.pt") for name in os.listdir(save))
