"""Coming from the previous tooling (vano04/TAMERSv2): its parquet imported, its checkpoints loaded.

The files are built here in the reference's layouts: parquet written with pyarrow the way its
embed_ddp.py (per emotion and rank, one row group per batch of 8) and reshard.py (shuffled mix,
zstd, small row groups, the first input's metadata) write them; checkpoints with its key names,
holding this project's own models' weights renamed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.config import IngestConfig
from ingest.run import ingest_set
from ingest.sources.tamers_parquet import tamers_key
from ingest.write.journal import read_journals
from ingest.write.output import SetOutput
from lake.blocks import path_without_build
from lake.catalog import open_shard_set
from lake.errors import LakeError
from lake.splits import assign_split
from lake.tamers import LAION_AUDIO_ID, LAYERS, MELD_AUDIO_ID
from lake.taxonomy import MELD_CLASSES
from shards.format import iter_shard
from shards.verify import verify_set

D = 32  # the reference's vectors are 768-d; dims are read from the files, so tests stay small

BASE_META = {"text_model": "google/embeddinggemma-300m", "audio_quantizer": "TuKoResearch/WavCochV8192",
             "audio_model": "TuKoResearch/AuriStream100M_RoPE_librilight", "projection_shape": f"{D}->{D}",
             "audio_embedding_dim": str(D), "text_embedding_dim": str(D), "target_sr": "16000", "world_size": "2",
             "decode_backend": "torchaudio", "token_cache_mode": "none"}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _schema(meta: dict, dim: int = D) -> pa.Schema:
    return pa.schema([("path", pa.string()), ("transcript", pa.string()), ("label_id", pa.int32()),
                      ("audio_embedding", pa.list_(pa.float32(), dim)), ("text_embedding", pa.list_(pa.float32(), dim))],
                     metadata={k.encode(): v.encode() for k, v in meta.items()})


def _table(rows: dict, schema: pa.Schema) -> pa.Table:
    def vec(a):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float32()), a.shape[1])

    return pa.Table.from_arrays([pa.array(rows["path"], pa.string()), pa.array(rows["transcript"], pa.string()),
                                 pa.array(rows["label_id"], pa.int32()), vec(rows["audio"]), vec(rows["text"])],
                                schema=schema)


def make_rows(emotion: str, label_id: int, n: int, seed: int, root: str = "/home/me/LAION/audio/en") -> dict:
    """Clips of one emotion folder as embed_ddp.py saw them: absolute wav paths, unit-norm vectors."""
    rng = np.random.default_rng(seed)
    centre_a, centre_t = rng.standard_normal(D), rng.standard_normal(D)
    return {"path": [f"{root}/{emotion}/{seed:02d}{i:04d}.wav" for i in range(n)],
            "transcript": [f"{emotion} words {i}" for i in range(n)], "label_id": [label_id] * n,
            "audio": _unit(centre_a + 0.7 * rng.standard_normal((n, D))),
            "text": _unit(centre_t + 1.0 * rng.standard_normal((n, D)))}


def write_per_emotion(folder, emotion: str, rank: int, rows: dict, meta: dict | None = None) -> str:
    """embed_ddp.py's layout: `{emotion}.rank{RR}.parquet`, one row group per batch of 8."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{emotion}.rank{rank:02d}.parquet")
    meta = {**BASE_META, "manifest": f"audio/en/{emotion}/manifest.jsonl", "emotion": emotion, "rank": str(rank),
            **(meta or {})}
    schema = _schema(meta)
    table = _table(rows, schema)
    with pq.ParquetWriter(path, schema, compression="snappy") as w:
        for start in range(0, table.num_rows, 8):
            w.write_table(table.slice(start, 8))
    return path


def write_resharded(folder, tables: list[pa.Table], shard_size: int = 100_000, row_group_size: int = 16,
                    seed: int = 1337) -> list[str]:
    """reshard.py's layout: concatenated, shuffled, `shard_{idx:04d}.parquet`, zstd."""
    os.makedirs(folder, exist_ok=True)
    combined = pa.concat_tables(tables, promote_options="default")
    combined = combined.take(pa.array(np.random.default_rng(seed).permutation(combined.num_rows)))
    paths = []
    for idx, start in enumerate(range(0, combined.num_rows, shard_size)):
        path = os.path.join(folder, f"shard_{idx:04d}.parquet")
        pq.write_table(combined.slice(start, shard_size), path, compression="zstd", row_group_size=row_group_size)
        paths.append(path)
    return paths


EMOTIONS = [("anger", 0, 70), ("joy", 1, 50), ("sadness", 2, 60)]


@pytest.fixture(scope="module")
def reference_laion(tmp_path_factory):
    """Three per-emotion files (two ranks), with one bad row of each kind and a repeated path."""
    folder = tmp_path_factory.mktemp("ref") / "embeddings"
    rows = {e: make_rows(e, i, n, seed=i) for e, i, n in EMOTIONS}
    rows["joy"]["audio"][3, 5] = np.nan  # a broken vector
    rows["joy"]["text"][4, 0] = 1e6  # finite in float32, inf in float16
    rows["sadness"]["path"][7] = None  # no path
    rows["sadness"]["path"][8] = rows["anger"]["path"][2]  # the same clip twice (first: anger row 2)
    for rank, (e, _, _) in enumerate(EMOTIONS):
        write_per_emotion(folder, e, rank % 2, rows[e])
    with open(folder / "README.md", "w") as f:
        f.write("not parquet\n")
    bad = {("joy", 3), ("joy", 4), ("sadness", 7), ("sadness", 8)}
    return str(folder), rows, bad


def ingest_cfg(src, out, **kw) -> IngestConfig:
    kind = kw.pop("tamers_kind", "auto")  # the CLI's --tamers-kind
    kw = {"val_fraction": 0.2, "test_fraction": 0.2, "block_rows": 16, "rows_per_shard": 48, **kw}
    cfg = IngestConfig(source="tamers-parquet", input=str(src), out=str(out), **kw)
    cfg.tamers_kind = kind
    return cfg


def _index(root) -> dict[str, dict]:
    return {r["key"]: r for r in open_shard_set(str(root)).index.to_pylist()}


def _vectors(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    shards = open_shard_set(str(root))
    out = {}
    for entry in shards.manifest.shards:
        for block in iter_shard(shards.shard_path(entry)):
            for i, key in enumerate(block["meta"]["keys"]):
                out[key] = (block["audio"][i], block["text"][i])
    return out


def test_key_rule():
    assert tamers_key("/home/me/LAION/audio/en/anger/000123.wav") == "en/anger/000123"
    assert tamers_key("C:\\data\\audio\\en\\joy\\7.wav") == "en/joy/7"
    assert tamers_key("/x/MELD/output/eval/audio/00012.mp3", "meld") == "eval/00012"
    assert tamers_key("elsewhere/en/joy/7.wav") == "en/joy/7"


def test_import_round_trips_values_and_verifies(reference_laion, tmp_path, capsys):
    src, rows, bad = reference_laion
    out = tmp_path / "imported"
    status = ingest_set(ingest_cfg(src, out))
    assert status == "done"
    problems, _, _ = verify_set(str(out))
    assert problems == []
    m = open_shard_set(str(out)).manifest
    assert m.taxonomy == ["anger", "joy", "sadness"]  # the reference's label_id order, names from its files
    assert m.encoders["audio"]["id"] == LAION_AUDIO_ID and m.audio_layers == [LAYERS["laion"]]
    assert m.encoders["audio"]["dim"] == D and "seed 17" in m.encoders["audio"]["config"]["projection"]
    assert m.fields == ["audio", "text", "label"] and m.source["kind"] == "tamers-parquet"
    index, vectors = _index(out), _vectors(out)
    expected = {}
    for e, label_id, n in EMOTIONS:
        for i in range(n):
            if (e, i) not in bad:
                expected[tamers_key(rows[e]["path"][i])] = (e, label_id, i)
    assert set(index) == set(expected)
    for key, (e, label_id, i) in expected.items():
        r = index[key]
        assert (r["label_id"], r["label"], r["transcript"]) == (label_id, e, rows[e]["transcript"][i])
        assert r["split"] == assign_split(key, 0.2, 0.2) and r["source_uri"] == rows[e]["path"][i]
        a, t = vectors[key]
        assert a.shape == (1, D) and a.dtype == np.float16
        assert np.array_equal(a[0], rows[e]["audio"][i].astype(np.float16))  # fp16 of the float32 input
        assert np.array_equal(t, rows[e]["text"][i].astype(np.float16))
    quarantine = {q["key"]: q["reason"] for q in open_shard_set(str(out)).quarantine()}
    assert sorted(quarantine.values()) == ["bad embedding: missing or non-finite in float16 (audio)",
                                           "bad embedding: missing or non-finite in float16 (text)",
                                           "malformed row: no path"]
    assert "repeat the path" in capsys.readouterr().out  # a note of the end-of-run summary
    # the same command again finds it complete; a fresh import of the same files is byte-identical
    assert ingest_set(ingest_cfg(src, out)) == "complete"
    again = tmp_path / "again"
    ingest_set(ingest_cfg(src, again))
    sha = lambda root: sorted((path_without_build(s.path), s.sha256)  # noqa: E731 - each build names its shards anew
                              for s in open_shard_set(str(root)).manifest.shards)
    assert sha(out) == sha(again)


def test_resharded_set_needs_a_taxonomy(reference_laion, tmp_path):
    src, rows, _ = reference_laion
    tables = [pq.read_table(os.path.join(src, f)) for f in sorted(os.listdir(src)) if f.endswith(".parquet")]
    folder = tmp_path / "data_sharded"
    write_resharded(folder, tables, shard_size=100)
    # reshard.py keeps the first input's metadata: its `emotion` is "anger" for rows of every class
    assert pq.read_schema(folder / "shard_0000.parquet").metadata[b"emotion"] == b"anger"
    with pytest.raises(LakeError, match=r"shard_0000.parquet: a resharded file .* pass --taxonomy FILE"):
        ingest_set(ingest_cfg(folder, tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()  # refused before writing anything
    names = tmp_path / "classes.txt"
    names.write_text("Anger\nElation\nSadness\n")
    out = tmp_path / "resharded"
    ingest_set(ingest_cfg(folder, out, taxonomy=str(names)))
    assert verify_set(str(out))[0] == []
    assert open_shard_set(str(out)).taxonomy == ["Anger", "Elation", "Sadness"]
    # the same clips as the per-emotion import (keys from paths), in the same splits, with the same label ids
    # (but the repeated path, whose first place differs after the shuffle)
    per_emotion = tmp_path / "per_emotion"
    ingest_set(ingest_cfg(src, per_emotion))
    twice = tamers_key(rows["anger"]["path"][2])
    a, b = _index(out), _index(per_emotion)
    assert a.keys() == b.keys()
    assert all((a[k]["split"], a[k]["label_id"]) == (b[k]["split"], b[k]["label_id"]) for k in a if k != twice)
    two_many = tmp_path / "two.txt"
    two_many.write_text("Anger\nElation\n")
    with pytest.raises(LakeError, match="label_id 2, but the taxonomy names only 2 classes"):
        ingest_set(ingest_cfg(folder, tmp_path / "nope2", taxonomy=str(two_many)))


def test_bad_files_get_one_clear_message(tmp_path):
    rows = make_rows("anger", 0, 8, seed=0)
    folder = tmp_path / "missing"
    t = _table(rows, _schema({**BASE_META, "emotion": "anger"})).drop_columns(["text_embedding"])
    os.makedirs(folder)
    pq.write_table(t, folder / "anger.rank00.parquet")
    with pytest.raises(LakeError, match=r"anger.rank00.parquet: not a reference embedding file: missing column\(s\) "
                                        r"text_embedding"):
        ingest_set(ingest_cfg(folder, tmp_path / "o1"))
    folder = tmp_path / "dims"
    write_per_emotion(folder, "anger", 0, rows, meta={"audio_embedding_dim": "768"})
    with pytest.raises(LakeError, match=f"audio_embedding holds {D} values per row, but the file's metadata says 768"):
        ingest_set(ingest_cfg(folder, tmp_path / "o2"))
    folder = tmp_path / "mixed"
    write_per_emotion(folder, "anger", 0, rows)
    write_per_emotion(folder, "joy", 0, make_rows("joy", 1, 8, seed=1), meta={"projection_shape": ""})
    with pytest.raises(LakeError, match="joy.rank00.parquet: no projection_shape .* --tamers-kind"):
        ingest_set(ingest_cfg(folder, tmp_path / "o3"))
    with pytest.raises(LakeError, match="not a directory"):
        ingest_set(ingest_cfg(tmp_path / "absent", tmp_path / "o4"))
    (tmp_path / "mixed" / "truncated.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(LakeError, match="truncated.parquet: not a readable parquet file"):
        ingest_set(ingest_cfg(tmp_path / "mixed", tmp_path / "o5"))


def test_killed_import_resumes_where_it_stopped(reference_laion, tmp_path, monkeypatch):
    """Killed in the second file after some of its rows were committed: the re-run skips the finished
    first file and the committed keys, and ends with the same rows as an uninterrupted import."""
    import time

    import ingest.sources.tamers_parquet as tamers_parquet
    from ingest.sources.tamers_parquet import TamersParquetSource

    src, _, _ = reference_laion
    small = dict(checkpoint_mb=0.0, block_rows=8, rows_per_shard=16)  # every file its own segment
    full = tmp_path / "full"
    ingest_set(ingest_cfg(src, full, **small))
    out = tmp_path / "killed"
    written = SetOutput(str(out))
    monkeypatch.setattr(tamers_parquet, "BATCH_ROWS", 8)
    real = TamersParquetSource.read_rows
    opened = []

    def dies_in_second_file(self, unit):
        opened.append(unit.id)
        for n, batch in enumerate(real(self, unit)):
            if len(opened) == 2 and n == 0:
                committed_after_first = len(read_journals(written).shards)
            if len(opened) == 2 and n == 5:
                deadline = time.time() + 20  # until the writer thread has committed a shard of this file
                while len(read_journals(written).shards) <= committed_after_first and time.time() < deadline:
                    time.sleep(0.01)
                raise KeyboardInterrupt  # as a kill would, mid-file
            yield batch

    monkeypatch.setattr(TamersParquetSource, "read_rows", dies_in_second_file)
    with pytest.raises(KeyboardInterrupt):
        ingest_set(ingest_cfg(src, out, **small))
    assert not (out / "manifest.json").exists()
    state = read_journals(written)
    assert list(state.units_done) == [opened[0]]
    mid_file = {k for k in state.committed_keys(written) if k.startswith("en/joy/")}
    assert mid_file  # rows of the killed file were already in committed shards

    def records(self, unit):
        opened.append(unit.id)
        yield from real(self, unit)

    monkeypatch.setattr(TamersParquetSource, "read_rows", records)
    first = opened[0]
    opened.clear()
    ingest_set(ingest_cfg(src, out, **small))
    assert first not in opened and len(opened) == 2  # the finished file was not read again
    assert verify_set(str(out))[0] == []  # no key twice
    a, b = _index(full), _index(out)
    assert {k: (r["split"], r["label_id"]) for k, r in a.items()} == {k: (r["split"], r["label_id"]) for k, r in b.items()}
    va, vb = _vectors(full), _vectors(out)
    assert all(np.array_equal(va[k][0], vb[k][0]) and np.array_equal(va[k][1], vb[k][1]) for k in va)


def test_import_from_a_url(reference_laion, tmp_path):
    """Any fsspec URL: here the in-process memory:// filesystem."""
    import fsspec

    src, _, _ = reference_laion
    fs = fsspec.filesystem("memory")
    for name in os.listdir(src):
        fs.pipe(f"/tamers/export/{name}", open(os.path.join(src, name), "rb").read())
    out = tmp_path / "from_url"
    ingest_set(ingest_cfg("memory://tamers/export", out))
    local = tmp_path / "local"
    ingest_set(ingest_cfg(src, local))
    assert _index(out).keys() == _index(local).keys()
    assert open_shard_set(str(out)).manifest.source["input"] == "memory://tamers/export"


def test_two_ranks_share_the_files(reference_laion, tmp_path):
    """`torchrun --nproc_per_node 2 -m ingest --source tamers-parquet`: each rank imports its files."""
    import subprocess
    import sys

    src, _, _ = reference_laion
    out, single = tmp_path / "two_ranks", tmp_path / "one_rank"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ingest", "--source", "tamers-parquet", "--input", str(src), "--out", str(out),
                           "--val-fraction", "0.2", "--test-fraction", "0.2", "--block-rows", "16",
                           "--rows-per-shard", "48", "--device", "cpu"], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ingest_set(ingest_cfg(src, single))
    assert verify_set(str(out))[0] == []
    workers = {s.path.split("-")[1] for s in open_shard_set(str(out)).manifest.shards}
    assert workers == {"0000", "0001"}  # both ranks wrote shards
    a, b = _index(out), _index(single)
    assert {k: (r["split"], r["label_id"]) for k, r in a.items()} == {k: (r["split"], r["label_id"]) for k, r in b.items()}


def write_meld_features(folder, n_per_split=(56, 14, 14), seed=5) -> str:
    """The reference's MELD features in the same columns, without the projection (no projection_shape)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((7, 2, D))
    paths, labels = [], []
    for split, n in zip(("train", "eval", "test"), n_per_split):
        paths += [f"/home/me/MELD/output/{split}/audio/{i:05d}.mp3" for i in range(n)]
        labels += list(rng.integers(0, 7, n))
    labels = np.array(labels)
    rows = {"path": paths, "transcript": [f"utterance {i}" for i in range(len(paths))], "label_id": labels,
            "audio": _unit(centres[labels, 0] + 0.8 * rng.standard_normal((len(paths), D))),
            "text": _unit(centres[labels, 1] + 1.2 * rng.standard_normal((len(paths), D)))}
    meta = {k: v for k, v in BASE_META.items() if k != "projection_shape"}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "meld_features.parquet")
    pq.write_table(_table(rows, _schema(meta)), path, row_group_size=32)
    return path


def test_meld_features_import_under_their_own_encoder_id(tmp_path):
    folder = tmp_path / "meld_ref"
    write_meld_features(folder)
    with pytest.raises(LakeError, match="--tamers-kind"):
        ingest_set(ingest_cfg(folder, tmp_path / "nope"))
    out = tmp_path / "meld"
    ingest_set(ingest_cfg(folder, out, tamers_kind="meld"))
    m = open_shard_set(str(out)).manifest
    assert m.encoders["audio"]["id"] == MELD_AUDIO_ID and m.audio_layers == [LAYERS["meld"]]
    assert m.taxonomy == MELD_CLASSES and m.source["splits"] == {"method": "official"}
    assert {s: v["rows"] for s, v in m.splits.items()} == {"train": 56, "dev": 14, "test": 14}
    assert all(r["split"] == {"eval": "dev"}.get(r["key"].split("/")[0], r["key"].split("/")[0])
               for r in _index(out).values())
    laion = tmp_path / "laion_meta"
    write_per_emotion(laion, "anger", 0, make_rows("anger", 0, 8, seed=0))
    with pytest.raises(LakeError, match="not MELD features"):
        ingest_set(ingest_cfg(laion, tmp_path / "nope2", tamers_kind="meld"))


# -- checkpoints ---------------------------------------------------------------------

import argparse  # noqa: E402

import torch  # noqa: E402

from trainers import clap, meld, models, slm  # noqa: E402
from lake.tamers import refuse_rebuild  # noqa: E402
from trainers.checkpoint import read_checkpoint_file  # noqa: E402
from trainers.reference import (MELD_NAMES, SLM_NAMES, is_reference_meld, is_reference_slm,  # noqa: E402
                                reference_note, refuse_resume)


def load(path, stage, shards=None, **files):
    """(model, checkpoint dict) through the one door (trainers.models)."""
    task, model = models.load(str(path), shards, stage, **files)
    return model, task.checkpoint


@pytest.fixture(scope="module")
def trained_on_import(tmp_path_factory):
    """The reference's LAION export imported, then CLAP and the SLM trained on it by this project's trainers;
    its MELD features imported beside it."""
    tmp = tmp_path_factory.mktemp("trained_on_import")
    folder = tmp / "embeddings"
    for rank, (e, label_id, _) in enumerate(EMOTIONS):
        write_per_emotion(folder, e, rank % 2, make_rows(e, label_id, 120, seed=10 + label_id))
    laion = str(tmp / "laion")
    ingest_set(ingest_cfg(folder, laion))
    write_meld_features(tmp / "meld_ref")
    meld_set = str(tmp / "meld")
    ingest_set(ingest_cfg(tmp / "meld_ref", meld_set, tamers_kind="meld"))
    common = ["--data-root", laion, "--batch-size", "32", "--num-workers", "0", "--no-progress", "--lr", "3e-3"]
    assert clap.main([*common, "--save-dir", str(tmp / "clap"), "--epochs", "2", "--warmup-steps", "2"]) == 0
    proj = str(tmp / "clap_projectors.pt")
    assert clap.main(["export", "--checkpoint", str(tmp / "clap" / "clap_best.pt"), "--out", proj]) == 0
    assert slm.main([*common, "--clap-ckpt", proj, "--save-dir", str(tmp / "slm"), "--epochs", "2",
                     "--hidden-dim", "64", "--no-test-at-end"]) == 0
    return {"laion": laion, "meld": meld_set, "proj": proj, "slm": str(tmp / "slm" / "slm_stage3_best.pt"), "tmp": tmp}


def to_reference(state: dict, names, prefix: str = "") -> dict:
    """This project's parameter names -> the reference's (the inverse of the mapping under test)."""
    out = {}
    for k, v in state.items():
        ref, ours = next((a, b) for a, b in names if k.startswith(b))
        out[prefix + ref + k[len(ours):]] = v.clone()
    return out


def reference_slm_file(model: torch.nn.Module, path, **extra) -> str:
    """slm_stage3_epoch149_best.pt as train_slm.py saves it (DDP names, AdamW state, argparse config)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    config = argparse.Namespace(data_root="datasets/LAION", clap_ckpt="checkpoints/clap_projectors.pt",
                                num_emotions=model.head[-1].out_features, in_dim=D, proj_dim=D, hidden_dim=64,
                                dropout=0.1, batch_size=512, epochs=150, lr=1e-4, weight_decay=0.01)
    payload = {"model_state": to_reference(model.state_dict(), SLM_NAMES, "module."),
               "optimizer_state": optimizer.state_dict(), "epoch": 149, "global_step": 150 * 2000,
               "val_acc": 0.61, "best_val_acc": 0.62, "config": config, **extra}
    torch.save(payload, path)
    return str(path)


def _rows_of(root: str, split: str, layers: list[str]):
    from shards.loader import ShardLoader

    loader = ShardLoader(open_shard_set(root), split, 64, training=False, layers=layers,
                         fields=("audio", "text", "label"))
    batches = list(loader)
    return torch.cat([b["audio"] for b in batches]).float(), torch.cat([b["text"] for b in batches]).float()


def reference_forward(state: dict, x_a: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """The reference's ProsodySLM.forward (slm_model.py), written out on its own key names."""
    def lin(name, x):
        return x @ state[f"module.{name}.weight"].T + state[f"module.{name}.bias"]

    s_a, s_t = lin("clap.audio_proj", x_a), lin("clap.text_proj", x_t)
    s_a, s_t = s_a / (s_a.norm(dim=-1, keepdim=True) + 1e-8), s_t / (s_t.norm(dim=-1, keepdim=True) + 1e-8)
    q, k, v = lin("W_q", s_t), lin("W_k", s_a), lin("W_v", lin("prosody_lin", x_a))
    c = ((q * k).sum(-1, keepdim=True) / q.shape[-1] ** 0.5).sigmoid() * v
    h = torch.nn.functional.gelu(lin("mlp.0", torch.cat([c, s_a, s_t, s_a * s_t, (s_a - s_t).abs()], -1)))
    return lin("mlp.3", h)


def test_reference_stage3_checkpoint_gives_the_same_logits(trained_on_import, tmp_path):
    ours, ours_ckpt = load(trained_on_import["slm"], "slm")
    path = reference_slm_file(ours, tmp_path / "slm_stage3_epoch149_best.pt")
    obj = read_checkpoint_file(path)
    assert is_reference_slm(obj) and not is_reference_meld(obj) and not is_reference_slm(read_checkpoint_file(
        trained_on_import["slm"]))  # this project's own checkpoint loads as data too, and is told apart
    shards = open_shard_set(trained_on_import["laion"])
    model, ckpt = load(path, "slm", shards)
    assert ckpt["arch"] == {**ours_ckpt["arch"]} and ckpt["data"]["encoders"] == shards.manifest.encoders
    assert ckpt["reference"]["config"]["num_emotions"] == 3 and ckpt["train"]["epoch"] == 149
    audio, text = _rows_of(trained_on_import["laion"], "test", ckpt["arch"]["layers"])
    with torch.no_grad():
        assert torch.equal(model(audio, text), ours(audio, text))
        # and what the reference's own forward computes on the same (unit-norm) rows
        assert torch.allclose(reference_forward(obj["model_state"], audio[:, 0], text), model(audio, text), atol=1e-4)
    with pytest.raises(LakeError, match="a reference SLM with 3 outputs, but the set has 7 classes"):
        load(path, "slm", open_shard_set(trained_on_import["meld"]))
    with pytest.raises(LakeError, match="reference-layout .* not resumed"):
        refuse_resume(obj, path)
    assert reference_note(ckpt) == f"{path}: a reference-layout checkpoint (vano04/TAMERSv2 train_slm.py stage 3), epoch 149"
    with pytest.raises(LakeError, match="cannot be rebuilt here .* re-ingest the audio"):
        refuse_rebuild(ckpt["data"]["encoders"], "predict")
    refuse_rebuild(read_checkpoint_file(trained_on_import["slm"])["data"]["encoders"] | {"audio": {"id": "auristream"}}, "x")


def test_reference_stage3_mapping_is_strict(trained_on_import, tmp_path):
    ours, _ = load(trained_on_import["slm"], "slm")
    state = to_reference(ours.state_dict(), SLM_NAMES, "module.")
    cases = {"missing": ({k: v for k, v in state.items() if k != "module.W_k.bias"}, r"nothing for w_k\.bias"),
             "extra": ({**state, "module.attn.weight": torch.zeros(2)}, r"unused reference key\(s\) attn\.weight"),
             "shape": ({**state, "module.W_v.weight": torch.zeros(D, D + 1)},
                       r"W_v\.weight -> w_v\.weight: shape \(32, 33\), expected \(32, 32\)")}
    for name, (bad, message) in cases.items():
        torch.save({"model_state": bad, "epoch": 0}, tmp_path / f"{name}.pt")
        with pytest.raises(LakeError, match=message + r".*mapping clap\.audio_proj\.\* -> clap_audio\.fc\.\*"):
            load(tmp_path / f"{name}.pt", "slm", open_shard_set(trained_on_import["laion"]))


def reference_meld_file(head: meld.MeldHead, mode: str, path, top_level: bool = False) -> str:
    """meld_slm_{A,B}_best.pt as meld_train_slm.py saves it: the head alone, under its module names."""
    name, names = MELD_NAMES[mode]
    part = to_reference({k: v for k, v in head.state_dict().items() if k.startswith("head.")}, names)
    trainable = {name: part}
    config = {"mode": mode, "stage3_ckpt": "models/slm_stage3_epoch149_best.pt", "epochs": 20, "lr": 1e-4}
    payload = trainable if top_level else {"trainable_state": trainable, "optimizer_state": {}, "epoch": 11,
                                           "global_step": 1200, "best_val_acc": 0.55, "config": config, "mode": mode}
    torch.save(payload, path)
    return str(path)


def test_stage4_evaluation_of_reference_meld_checkpoints(trained_on_import, tmp_path):
    from evaluation import cli as evaluation

    ours_slm, _ = load(trained_on_import["slm"], "slm")
    slm_path = reference_slm_file(ours_slm, tmp_path / "slm_stage3_epoch149_best.pt")
    meld_root = trained_on_import["meld"]
    audio, text = _rows_of(meld_root, "test", [LAYERS["meld"]])
    torch.manual_seed(0)
    for mode, top_level in (("A", False), ("B", False), ("A", True)):
        head = meld.MeldHead(ours_slm, mode, 7, hidden_dim=48)
        with torch.no_grad():
            for p in head.head.parameters():
                p.add_(0.1 * torch.randn_like(p))  # not the init: LayerNorm and biases carry weights too
        path = reference_meld_file(head, mode, tmp_path / f"meld_slm_{mode}_best.pt", top_level)
        assert is_reference_meld(read_checkpoint_file(path))
        model, ckpt = load(path, "meld", open_shard_set(meld_root), stage3_ckpt=slm_path)
        with torch.no_grad():
            assert torch.equal(model(audio, text), head.eval()(audio, text))
        assert ckpt["data"]["encoders"]["audio"]["id"] == MELD_AUDIO_ID
        out = tmp_path / f"eval_{mode}_{top_level}"
        assert evaluation.main(["stage4", "--meld-ckpt", path, "--stage3-ckpt", slm_path, "--data-root", meld_root,
                                "--out", str(out), "--batch-size", "64", "--device", "cpu"]) == 0
        metrics = json.load(open(out / "metrics.json"))
        logits = model(audio, text).detach().numpy()
        from shards.loader import ShardLoader
        from trainers.metrics import classification_metrics

        y = np.concatenate([b["label"].numpy() for b in ShardLoader(open_shard_set(meld_root), "test", 64,
                                                                      training=False, fields=("label",))])

        direct = classification_metrics(y, logits.argmax(1), 7, MELD_CLASSES)
        assert metrics["metrics"]["weighted_f1"] == pytest.approx(direct["weighted_f1"])
        assert "reference-layout checkpoint" in metrics["context"]["checkpoint_layout"]
        assert "reference-layout checkpoint" in (out / "report.md").read_text()
        assert [c["class"] for c in metrics["metrics"]["per_class"]] == MELD_CLASSES
        assert sum(c["support"] for c in metrics["metrics"]["per_class"]) == metrics["context"]["num_rows"] == 14
    with pytest.raises(LakeError, match="a MELD head with 7 outputs, but the set has 3 classes"):
        load(path, "meld", open_shard_set(trained_on_import["laion"]), stage3_ckpt=slm_path)


def test_meld_refuses_an_slm_trained_on_imported_rows_with_other_vectors(trained_on_import, capsys):
    """A MELD set in another space than the SLM's: natively ingested, or the reference's own MELD features."""
    from conftest import make_manifest, write_set

    native = trained_on_import["tmp"] / "native_meld"
    manifest = make_manifest(num_classes=7, layers=("h12",), audio_dim=D, text_dim=D, name="native_meld")
    write_set(native, {"train": [16, 16], "dev": [8], "test": [8]}, manifest)
    for root in (str(native), trained_on_import["meld"]):
        rc = meld.main(["--data-root", root, "--stage3-ckpt", trained_on_import["slm"], "--mode", "A",
                        "--epochs", "1", "--batch-size", "16", "--num-workers", "0", "--no-progress",
                        "--save-dir", str(trained_on_import["tmp"] / "meld_out")])
        assert rc == 2
        err = capsys.readouterr().err
        assert "other encoders" in err and "tamers-auristream-randproj17" in err and len(err.strip().splitlines()) == 1


class RunsCode:
    """What a booby-trapped checkpoint holds: unpickling it would call os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_carrying_code_is_refused(trained_on_import, tmp_path):
    import pickle

    marker = tmp_path / "code_ran"
    ours, _ = load(trained_on_import["slm"], "slm")
    good = reference_slm_file(ours, tmp_path / "good.pt")
    evil = reference_slm_file(ours, tmp_path / "evil.pt", config=RunsCode(marker))
    raw = tmp_path / "raw.pkl"
    with open(raw, "wb") as f:
        pickle.dump({"model_state": {}, "x": RunsCode(marker)}, f, protocol=2)
    projectors = tmp_path / "clap_projectors.pt"
    torch.save({"audio_proj": {"weight": torch.zeros(4, 4), "bias": torch.zeros(4)},
                "text_proj": {"weight": torch.zeros(4, 4), "bias": torch.zeros(4)}, "hook": RunsCode(marker)}, projectors)
    for path, read in ((evil, lambda p: load(p, "slm")), (str(raw), read_checkpoint_file),
                       (str(projectors), lambda p: load(p, "clap"))):
        with pytest.raises(LakeError, match=r"contains Python objects other than tensors and plain containers "
                                            r"\(found GLOBAL (posix|os)\.system\); refusing to run code"):
            read(path)
    assert not marker.exists()
    load(good, "slm")  # the same file without the trap loads


def test_commands_refuse_a_checkpoint_carrying_code_in_one_line(trained_on_import, tmp_path, capsys):
    """Through the command lines: exit 2, one line naming the file, no code run, nothing written."""
    from evaluation.cli import main as evaluation

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    ckpt = torch.load(trained_on_import["slm"], weights_only=False)
    torch.save({**ckpt, "hook": RunsCode(marker)}, evil)
    runs = (
        (evaluation, ["stage3", "--stage3-ckpt", str(evil), "--data-root", trained_on_import["laion"],
                      "--out", str(tmp_path / "report")]),
        (slm.main, ["--data-root", trained_on_import["laion"], "--clap-ckpt", str(evil), "--epochs", "1",
                    "--save-dir", str(tmp_path / "slm"), "--no-progress"]),
        (meld.main, ["--data-root", trained_on_import["meld"], "--stage3-ckpt", str(evil), "--epochs", "1",
                     "--save-dir", str(tmp_path / "meld"), "--no-progress"]),
    )
    for main, argv in runs:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert str(evil) in err and "refusing to run code" in err, err
    assert not marker.exists()
    assert not any((tmp_path / d).exists() for d in ("report", "slm", "meld"))


def test_reference_projector_layouts_load(tmp_path):
    w = {"audio": torch.randn(8, 16), "text": torch.randn(8, 12)}
    for name, layout in (("fc", lambda m: {"fc.weight": w[m], "fc.bias": torch.zeros(8)}),
                         ("bare", lambda m: {"weight": w[m], "bias": torch.zeros(8)})):
        torch.save({"audio_proj": layout("audio"), "text_proj": layout("text")}, tmp_path / f"{name}.pt")
        task, model = models.load(str(tmp_path / f"{name}.pt"), stage="clap")
        assert task.arch()["dims"] == {"audio": 16, "text": 12, "proj": 8} and task.arch()["audio_layer"] is None
        assert torch.equal(model.audio_proj.fc.weight, w["audio"]) and set(model.text_proj.state_dict()) == {
            "fc.weight", "fc.bias"}
