"""Several sets in one run: shares of an epoch, one taxonomy through a label map, per-set validation, resume on
another number of ranks, and scoring a model across corpora."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from evaluation.crosscorpus import target_map, target_outputs
from lake.catalog import open_shard_set
from lake.distributed import World
from lake.errors import LakeError
from shards.partition import quotas, set_stream
from trainers import clap, slm
from trainers.checkpoint import load_checkpoint
from trainers.data import TrainingData
from trainers.metrics import classification_metrics

from conftest import make_manifest, signal_set, torchrun, write_set

A_CLASSES = ["ang", "hap", "neu", "sad"]
B_CLASSES = ["anger", "fear", "joy", "sadness"]
MAP = {"A": {"ang": "anger", "hap": "joy", "sad": "sadness"}, "B": {"anger": "anger", "joy": "joy", "sadness": "sadness"}}


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sets")
    a = signal_set(tmp / "a", rows=(200, 40, 40), seed=1, name="A", taxonomy=A_CLASSES)
    b = signal_set(tmp / "b", rows=(96, 30, 30), seed=2, name="B", taxonomy=B_CLASSES)
    label_map = tmp / "map.json"
    label_map.write_text(json.dumps(MAP))
    return a, b, str(label_map), tmp


# -- the order of an epoch: pure functions ----------------------------------------------------------------

@pytest.mark.parametrize("available,proportions,rows", [([100, 37], [0.7, 0.3], 0), ([5, 500, 61], [1, 1, 1], 1000),
                                                         ([10, 10], None, 0), ([3, 9], [0.25, 0.75], 7)])
def test_each_set_gets_its_share_within_one_row(available, proportions, rows):
    q = quotas(available, proportions, rows)
    total = rows or sum(available)
    assert sum(q) == total
    w = np.asarray(proportions or available, dtype=float)
    assert np.all(np.abs(np.array(q) - total * w / w.sum()) < 1)


def test_a_set_asked_for_more_rows_gives_every_row_once_before_any_twice_and_fewer_a_fresh_subset():
    blocks = np.array([7, 3, 5])  # 15 rows
    stream = set_stream(blocks, None, 40, seed=3, epoch=0, index=1, window_blocks=2)
    assert [sorted(stream[i:i + 15].tolist()) for i in (0, 15)] == [list(range(15))] * 2  # two whole passes
    assert len(set(stream[30:].tolist())) == 10  # then ten distinct rows of a third
    kept = np.zeros(15, bool)
    kept[::2] = True  # a label map keeps 8 rows
    subsets = [set(set_stream(blocks, kept, 5, seed=3, epoch=e, index=1, window_blocks=2).tolist()) for e in range(4)]
    assert all(len(s) == 5 and s <= set(np.flatnonzero(kept).tolist()) for s in subsets)
    assert len({frozenset(s) for s in subsets}) > 1  # another subset each epoch


# -- the loader over two sets -------------------------------------------------------------------------------

def _data(a, b, label_map="", proportions=None, epoch_rows=0):
    return TrainingData.open([a, b], label_map=label_map, proportions=proportions, epoch_rows=epoch_rows)


def test_a_mixed_epoch_has_the_asked_shares_equal_batches_on_every_rank_and_depends_on_seed_and_epoch(two_sets):
    a, b, label_map, _ = two_sets
    data = _data(a, b, label_map, proportions=[0.7, 0.3], epoch_rows=250)
    rows_a = int(np.sum(data.kept_rows("train")[:1]))
    loaders = [data.loader("train", 16, World(rank=r, world_size=2), training=True, seed=5) for r in range(2)]
    q = loaders[0].quotas
    assert q == [175, 75] and rows_a < 175  # A is repeated, B subsampled
    for epoch in range(3):
        for lo in loaders:
            lo.set_epoch(epoch)
        order = loaders[0].plan.order(epoch)
        offset = loaders[0].plan.set_offsets[1]
        assert [(order < offset).sum(), (order >= offset).sum()] == q  # exactly the quotas, every epoch
        per_rank = [lo.batches() for lo in loaders]
        assert len(per_rank[0]) == len(per_rank[1]) == 250 // 16  # full global batches of 16
        labels = [b["label"] for lo in loaders for b in lo]
        assert all(((x >= 0) & (x < 3)).all() for x in labels)  # the merged taxonomy; left-out rows never come
    again = data.loader("train", 16, World(rank=1, world_size=2), training=True, seed=5)
    again.set_epoch(1)
    loaders[1].set_epoch(1)
    assert [x.tolist() for x in again.batches()] == [x.tolist() for x in loaders[1].batches()]
    loaders[1].set_epoch(2)
    assert [x.tolist() for x in again.batches()] != [x.tolist() for x in loaders[1].batches()]


def test_the_mix_and_the_position_are_restored_mid_epoch(two_sets):
    a, b, label_map, _ = two_sets
    data = _data(a, b, label_map, proportions=[0.5, 0.5])
    full = data.loader("train", 16, World(), training=True, seed=2)
    full.set_epoch(1)
    expected = [batch["row"].tolist() for batch in full]
    first = data.loader("train", 16, World(), training=True, seed=2)
    first.set_epoch(1)
    it = iter(first)
    seen = [next(it)["row"].tolist() for _ in range(3)]
    resumed = data.loader("train", 16, World(), training=True, seed=2)
    resumed.load_state_dict(first.state_dict())
    assert seen + [batch["row"].tolist() for batch in resumed] == expected
    other = _data(a, b, label_map, proportions=[0.6, 0.4]).loader("train", 16, World(), training=True, seed=2)
    with pytest.raises(LakeError, match="cannot resume: the checkpoint's sets, their fingerprints and rows"):
        other.load_state_dict(first.state_dict())


def test_a_label_map_merges_two_taxonomies_and_counts_what_it_leaves_out(two_sets):
    a, b, label_map, _ = two_sets
    data = _data(a, b, label_map)
    assert data.taxonomy == ["anger", "joy", "sadness"]
    index = {s.name: s.index.to_pydict() for s in data.sets}
    left = {n: sum(1 for lab, sp in zip(ix["label"], ix["split"]) if sp == "train" and lab in ("neu", "fear"))
            for n, ix in index.items()}
    lines = data.summary()
    assert f"left out ({'neu' if left['A'] else ''}" in lines[0] or left["A"] == 0
    assert [int(x.split()[1]) for x in lines] == [sum(1 for sp in index[n]["split"] if sp == "train") - left[n]
                                                   for n in ("A", "B")]
    assert data.train_labels().max() == 2 and len(data.train_labels()) == sum(data.kept_rows("train"))
    with pytest.raises(LakeError, match="pass --label-map FILE"):
        _data(a, b)


def test_sets_of_other_encoders_are_refused_in_one_line(two_sets, tmp_path, capsys):
    a, _, _, _ = two_sets
    other = make_manifest(num_classes=4, layers=("h0", "h1"), audio_dim=16, text_dim=12, name="C")
    other.encoders["audio"]["id"] = "another-audio"
    write_set(tmp_path / "c", {"train": [40], "val": [8]}, other)
    capsys.readouterr()
    assert clap.main(["--data-root", a, str(tmp_path / "c"), "--save-dir", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and a in err and str(tmp_path / "c") in err and "another-audio" in err, err


# -- training on two sets, from the command line ----------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_run(two_sets):
    a, b, label_map, tmp = two_sets
    proj = str(tmp / "clap_projectors.pt")
    assert clap.main(["--data-root", a, b, "--label-map", label_map, "--save-dir", str(tmp / "clap"), "--epochs", "2",
                      "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "2", "--no-progress"]) == 0
    assert clap.main(["export", "--checkpoint", str(tmp / "clap" / "clap_best.pt"), "--out", proj]) == 0
    return a, b, label_map, proj, tmp


def test_the_slm_trains_on_two_sets_with_shares_and_a_label_map(mixed_run, capsys):
    a, b, label_map, proj, tmp = mixed_run
    save = tmp / "slm"
    capsys.readouterr()
    assert slm.main(["--data-root", a, b, "--proportions", "0.7", "0.3", "--label-map", label_map, "--clap-ckpt", proj,
                     "--num-emotions", "3", "--save-dir", str(save), "--epochs", "2", "--batch-size", "32",
                     "--lr", "1e-3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 sets, 3 classes; an epoch draws A 158 rows (0.700), B 67 rows (0.300)" in out
    assert "A: " in out and "train rows kept" in out and "left out (neu" in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch 001")]
    assert epoch_lines and "  A " in epoch_lines[0] and "  B " in epoch_lines[0]
    ckpt = load_checkpoint(str(save / "slm_stage3_best.pt"), "slm")
    assert [(s["name"], s["proportion"]) for s in ckpt["data"]["sets"]] == [("A", 0.7), ("B", 0.3)]
    assert ckpt["data"]["sets"][0]["label_map"] == MAP["A"] and ckpt["arch"]["taxonomy"] == ["anger", "joy", "sadness"]
    assert set(ckpt["train"]["metrics"]["sets"]) == {"A", "B"}
    summary = json.load(open(save / "slm_stage3_summary.json"))
    assert set(summary["test"]["sets"]) == {"A", "B"}
    capsys.readouterr()
    assert slm.main(["--data-root", a, b, "--proportions", "0.5", "0.5", "--label-map", label_map, "--clap-ckpt", proj,
                     "--save-dir", str(save), "--epochs", "3", "--batch-size", "32", "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "trained on other data" in err and "proportion 0.7 -> 0.5" in err and err.count("\n") == 1


def test_resumed_on_another_number_of_ranks_a_mixed_run_ends_with_the_steps_of_an_uninterrupted_one(mixed_run):
    a, b, label_map, proj, tmp = mixed_run
    common = ["--data-root", a, b, "--proportions", "0.6", "0.4", "--label-map", label_map, "--clap-ckpt", proj,
              "--epochs", "2", "--batch-size", "32", "--lr", "1e-3", "--device", "cpu", "--no-progress",
              "--no-test-at-end"]
    assert slm.main([*common, "--save-dir", str(tmp / "whole")]) == 0
    steps = load_checkpoint(str(tmp / "whole" / "slm_stage3_last.pt"))["train"]["step"]  # global batches
    for before, after, name in ((2, 1, "two_to_one"), (1, 2, "one_to_two")):
        save = tmp / name
        cut = ["--save-dir", str(save), "--save-every-steps", "3", "--max-steps", "4"]
        proc = torchrun("trainers.slm", *common, *cut) if before == 2 else None
        assert proc is None or proc.returncode == 0, proc.stdout + proc.stderr
        if before == 1:
            assert slm.main([*common, *cut]) == 0
        last = load_checkpoint(str(save / "slm_stage3_last.pt"))
        assert last["train"]["step"] == 3 and last["loader"]["world"] == before and last["loader"]["consumed"] == 3
        if after == 2:
            proc = torchrun("trainers.slm", *common, "--save-dir", save, "--resume")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert f"on 2 rank(s), it ran on {before}" in proc.stdout
        else:
            assert slm.main([*common, "--save-dir", str(save), "--resume"]) == 0
        assert load_checkpoint(str(save / "slm_stage3_last.pt"))["train"]["step"] == steps


# -- across corpora ------------------------------------------------------------------------------------------

def test_cross_corpus_metrics_equal_a_hand_computation():
    model_classes = ["Anger", "Elation", "Amusement", "Sadness", "Fear"]
    data_classes = ["ang", "hap", "neu", "sad"]
    mapping = {"Anger": "ang", "Elation": "hap", "Amusement": "hap", "Sadness": "sad"}  # Fear and neu: no target
    tm = target_map(model_classes, data_classes, mapping, ["train-set"], "corpus")
    assert tm.targets == ["ang", "hap", "sad"] and tm.unreached() == []
    with np.errstate(divide="ignore"):
        logits = np.log(np.array([[0.1, 0.3, 0.3, 0.2, 0.1],  # model probabilities: Anger Elation Amusement Sad Fear
                                  [0.5, 0.1, 0.1, 0.1, 0.2],
                                  [0.1, 0.1, 0.1, 0.2, 0.5],
                                  [0.3, 0.0, 0.0, 0.6, 0.1],
                                  [0.2, 0.2, 0.2, 0.2, 0.2]]), dtype=np.float32)
    labels = np.array([1, 0, 2, 3, 3])  # hap, ang, neu (left out: maps to nothing), sad, sad
    out = target_outputs(logits, labels, tm)
    assert out["label"].tolist() == [1, 0, 2, 2]
    probs = np.exp(out["logits"])  # by hand: ang = Anger, hap = Elation + Amusement, sad = Sadness
    assert np.allclose(probs, [[0.1, 0.6, 0.2], [0.5, 0.2, 0.1], [0.3, 0.0, 0.6], [0.2, 0.4, 0.2]], atol=1e-6)
    pred = probs.argmax(1)
    assert pred.tolist() == [1, 0, 2, 1]
    m = classification_metrics(out["label"], pred, 3)
    assert m["accuracy"] == 0.75  # the last sad row is predicted hap (Elation + Amusement = 0.4)
    assert m["macro_f1"] == pytest.approx(np.mean([1.0, 2 / 3, 2 / 3]))


def test_a_model_is_scored_on_a_set_of_another_taxonomy_and_the_matrix_is_written(mixed_run, tmp_path, capsys):
    from evaluation.cli import main as evaluation

    a, b, label_map, proj, tmp = mixed_run
    trained = {}
    for name, root, n in (("a", a, 4), ("b", b, 4)):
        save = tmp_path / name
        assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--num-emotions", str(n), "--save-dir", str(save),
                         "--epochs", "1", "--batch-size", "32", "--no-progress", "--no-test-at-end"]) == 0
        trained[name] = str(save / "slm_stage3_best.pt")
    report = tmp_path / "cross"
    assert evaluation(["stage3", "--stage3-ckpt", trained["a"], "--data-root", b, "--label-map", label_map,
                       "--out", str(report), "--device", "cpu"]) == 0
    metrics = json.load(open(report / "metrics.json"))
    info = metrics["context"]["cross_corpus"]
    assert info["targets"] == ["anger", "joy", "sadness"] and info["rows_left_out"] == {
        "fear": sum(1 for lab, sp in zip(*[open_shard_set(b).index.to_pydict()[k] for k in ("label", "split")])
                    if sp == "test" and lab == "fear")}
    assert [c["class"] for c in metrics["metrics"]["per_class"]] == ["anger", "joy", "sadness"]
    assert "Across corpora" in (report / "report.md").read_text()
    out = tmp_path / "matrix"
    assert evaluation(["matrix", "--checkpoints", trained["a"], trained["b"], "--data-root", a, b, "--label-map",
                       label_map, "--out", str(out), "--device", "cpu"]) == 0
    result = json.load(open(out / "matrix.json"))
    assert [r["trained_on"] for r in result["rows"]] == ["A", "B"] and [c["name"] for c in result["columns"]] == ["A", "B"]
    assert [[c["mapped"] for c in row] for row in result["cells"]] == [[False, True], [True, False]]
    assert (out / "matrix.png").stat().st_size > 1000 and "| A |" in (out / "matrix.md").read_text()
    capsys.readouterr()
    assert evaluation(["matrix", "--checkpoints", trained["a"], "--data-root", b, "--out", str(out)]) == 2
    assert "pass --label-map FILE" in capsys.readouterr().err
