"""The ingest journal survives a torn last line; the MELD reader drops duplicate rows across units."""

import os


from ingest.write.journal import Journal, read_journals
from ingest.write.output import SetOutput
from lake.schema import ShardEntry


def test_a_torn_line_does_not_hide_later_commits(tmp_path):
    root = SetOutput(str(tmp_path))
    j = Journal(root, 0)
    j.append({"type": "units_done", "units": {"a.tar": 5}})
    j.close()
    with open(os.path.join(root.work(), "journal-0000.jsonl"), "a") as f:
        f.write('{"type": "units_do')  # the kill (or a full disk) cut this line
    j = Journal(root, 0)  # the resumed run
    j.append({"type": "units_done", "units": {"b.tar": 3}})
    j.close()
    assert read_journals(root).units_done == {"a.tar": 5, "b.tar": 3}


def test_a_journalled_shard_that_vanished_is_an_error(tmp_path):
    import pytest

    from lake.errors import LakeError

    root = SetOutput(str(tmp_path))
    j = Journal(root, 0)
    j.append({"type": "shard", "entry": ShardEntry("shards/train-0000-000000.tar", "train", 1, 10, "x").to_dict()})
    j.close()
    with pytest.raises(LakeError, match="re-run with --overwrite"):
        read_journals(root)


def test_meld_duplicate_rows_across_units(tmp_path):
    from ingest.sources.meld import COLUMNS, MeldSource

    folders = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
    for split, folder in folders.items():
        os.makedirs(tmp_path / folder)
        rows = [(0, 0), (0, 1), (0, 2), (0, 0)]  # (0, 0) again, in the second unit
        with open(tmp_path / f"{split}_sent_emo.csv", "w", encoding="utf-8") as f:
            f.write(",".join(COLUMNS) + "\n")
            for i, (d, u) in enumerate(rows):
                f.write(f'{i},hi,Joey,joy,positive,{d},{u},1,1,"00:00:01,000","00:00:02,000"\n')
        for d, u in set(rows):
            (tmp_path / folder / f"dia{d}_utt{u}.mp4").write_bytes(b"x")
    src = MeldSource(str(tmp_path), unit_rows=2)
    items = [it for unit in src.units() if unit.id.startswith("train:") for it in src.read(unit)]
    keys = [it.key for it in items if not hasattr(it, "reason")]
    assert keys == ["meld/train/dia0_utt0", "meld/train/dia0_utt1", "meld/train/dia0_utt2"]
    assert [it.reason for it in items if hasattr(it, "reason")] == ["duplicate csv row"]
