"""`python -m shards verify` and the other subcommands, run as a user runs them."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from shards.cli import build_parser, main
from shards.verify import verify_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "shards", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_verify_passes_on_a_fresh_set(small_set):
    root, manifest, _ = small_set
    code, out, err = run_cli("verify", root)
    assert code == 0, out + err
    assert f"{len(manifest.shards)} shards" in out and "OK" in out


def _damage(path, how):
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x01  # one bit of one byte, inside a member's payload
        path.write_bytes(bytes(data))
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "delete":
        path.unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_verify_fails_naming_the_damaged_shard(small_set, how):
    root, manifest, _ = small_set
    victim = manifest.shards[1]
    _damage(root / victim.path, how)
    code, out, err = run_cli("verify", root)
    assert code == 1, out + err
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problems and all(victim.path in p for p in problems), out
    assert "FAILED" in out
    assert "Traceback" not in out + err


def test_verify_reports_every_problem_not_just_the_first(small_set):
    root, manifest, _ = small_set
    _damage(root / manifest.shards[0].path, "flip")
    _damage(root / manifest.shards[2].path, "delete")
    problems, _, summary = verify_set(str(root))
    assert any(manifest.shards[0].path in p for p in problems)
    assert any(manifest.shards[2].path in p for p in problems)
    assert summary["bad_shards"] == 2


def test_verify_catches_block_shape_disagreeing_with_manifest(small_set):
    root, manifest, _ = small_set
    path = root / "manifest.json"
    d = json.loads(path.read_text())
    d["encoders"]["audio"]["dim"] = manifest.audio_dim + 1  # the manifest now promises another width
    path.write_text(json.dumps(d))
    problems, _, _ = verify_set(str(root))
    assert problems and all("audio.npy" in p for p in problems)
    assert any(f"{manifest.audio_dim + 1}" in p for p in problems)


def test_verify_catches_index_duplicates_and_missing_keys(small_set):
    root, manifest, _ = small_set
    table = pq.read_table(root / "index.parquet")
    doubled = table.slice(0, table.num_rows - 1)  # drop the last clip ...
    import pyarrow as pa
    doubled = pa.concat_tables([doubled, table.slice(0, 1)])  # ... and list the first twice
    pq.write_table(doubled, root / "index.parquet")
    problems, _, _ = verify_set(str(root))
    text = "\n".join(problems)
    assert "more than once" in text and "not in the index" in text


def test_verify_flags_unlisted_shard_and_warns_on_leftover_tmp(small_set):
    root, manifest, _ = small_set
    (root / "shards" / "train-0009-000000.tar").write_bytes(b"\0" * 1024)
    (root / "shards" / "train-0009-000001.tar.tmp").write_bytes(b"\0" * 10)
    problems, warnings, _ = verify_set(str(root))
    assert any("not listed in the manifest" in p for p in problems)
    assert any("temporary" in w for w in warnings)


def test_not_a_shard_set_is_one_clear_message(tmp_path):
    code, out, err = run_cli("ls", tmp_path)
    assert code == 2 and "not a shard set" in err and "Traceback" not in err


def test_ls_stats_show_head(small_set, capsys):
    root, manifest, written = small_set
    assert main(["ls", str(root)]) == 0
    out = capsys.readouterr().out
    for s in manifest.shards:
        assert s.path in out
    assert main(["stats", "--json", str(root)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_classes"] == 3 and stats["rows"] == 29
    assert stats["splits"]["train"]["rows"] == 20 and stats["splits"]["test"]["rows"] == 5
    expected = {}
    for b in written["train"]:
        for label in b["label"].tolist():
            expected[f"class{label}"] = expected.get(f"class{label}", 0) + 1
    assert stats["labels"]["train"] == dict(sorted(expected.items()))
    assert stats["audio_layers"] == ["h0", "h1"] and stats["audio_dim"] == 8
    total = sum(d for b in written.values() for blk in b for d in blk["meta"]["durations"])
    assert abs(sum(s["duration_s"] for s in stats["splits"].values()) - total) < 1e-3
    assert main(["stats", str(root)]) == 0
    assert "class2" in capsys.readouterr().out
    key = written["val"][0]["meta"]["keys"][2]
    assert main(["show", "--json", str(root), key]) == 0
    clip = json.loads(capsys.readouterr().out)
    expected_norm = float(np.linalg.norm(written["val"][0]["text"][2].astype(np.float32)))
    assert clip["split"] == "val" and abs(clip["norms"]["text"] - expected_norm) < 1e-4
    assert main(["head", str(root), "-n", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5  # header, rule, 3 rows
    assert main(["show", str(root), "no-such-key"]) == 2


def test_every_argument_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"ls", "stats", "verify", "show", "head", "cp", "card"}
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest}"
    code, out, _ = run_cli("--help")
    assert code == 0 and "verify" in out


def test_the_repair_command_of_a_copied_set_writes_where_the_set_is_now():
    from conftest import make_manifest
    from lake.catalog import repair_hint

    m = make_manifest()
    m.ingest = {"settings": {"argv": ["--source", "laion", "--input", "raw", "--out", "/old/place/laion"]}}
    hint = repair_hint(m, "s3://bucket/lake/laion")
    assert "`python -m ingest --source laion --input raw --out s3://bucket/lake/laion`" in hint and "/old" not in hint
    m.ingest = {"settings": {"argv": ["--out=/old/place/laion", "--source", "laion"]}}
    assert "--out=/new --source laion" in repair_hint(m, "/new")
