"""Honest baselines: the linear probe, the modality ablation, and per-feature standardisation.

The probe must give the numbers of a direct scikit-learn fit on the same arrays; the ablation
must show which input carries the label; a set whose encoder asks for standardisation must
record its train statistics, and the trainers must feed their models standardised inputs.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lake.catalog import open_shard_set
from lake.schema import MANIFEST_NAME, Manifest
from lake.storage import write_bytes_atomic
from shards.format import iter_shard
from shards.stats import feature_stats, standardization_stats
from trainers import clap, meld, models, slm
from trainers.checkpoint import load_checkpoint

from conftest import make_manifest, write_labelled_set

A_DIM, T_DIM, CLASSES = 16, 12, 4
# fbank-like mixed scales: per-feature offsets and spreads over three orders of magnitude
SCALE = np.geomspace(0.05, 50.0, A_DIM)
OFFSET = np.linspace(-20.0, 40.0, A_DIM)


def labelled_set(root, carrier: str = "both", rows=(240, 80, 80), seed=0, standardize=False, name="b"):
    """A set whose `carrier` input ("audio", "text" or "both") holds the label (class centroid + noise);
    the other one is noise. The audio lives on mixed scales, as fbank's does."""
    manifest = make_manifest(num_classes=CLASSES, layers=("h0",), audio_dim=A_DIM, text_dim=T_DIM, name=name)
    if standardize:
        manifest.encoders["audio"]["standardize"] = True
    rng = np.random.default_rng(seed)
    ca, ct = rng.standard_normal((CLASSES, A_DIM)), rng.standard_normal((CLASSES, T_DIM))

    def arrays(y, k):
        a = (ca[y] if carrier in ("audio", "both") else 0) + 0.7 * rng.standard_normal((k, A_DIM))
        t = (ct[y] if carrier in ("text", "both") else 0) + 0.7 * rng.standard_normal((k, T_DIM))
        return {"audio": (OFFSET + SCALE * a)[:, None].astype(np.float16), "text": t.astype(np.float16)}

    write_labelled_set(root, manifest, rows, rng, arrays)
    if standardize:  # what ingest's merge does when a set is finished
        record_stats(root)
    return str(root)


def record_stats(root) -> Manifest:
    shards = open_shard_set(str(root))
    shards.manifest.feature_stats = standardization_stats(shards)
    write_bytes_atomic(os.path.join(str(root), MANIFEST_NAME), shards.manifest.to_json().encode())
    return shards.manifest


def raw_split(root, split: str) -> dict[str, np.ndarray]:
    """A split's arrays read straight from the tars (not through the loader), in manifest order."""
    m = open_shard_set(str(root)).manifest
    blocks = [b for e in m.shards_of(split) for b in iter_shard(os.path.join(str(root), e.path))]
    return {k: np.concatenate([b[k] for b in blocks]) for k in ("audio", "text", "label")}


def train_pipeline(root, save, slm_epochs=8, clap_epochs=4, seed=0) -> str:
    """CLAP, its export, and an SLM on `root`; returns the SLM's best checkpoint."""
    assert clap.main(["--data-root", root, "--save-dir", os.path.join(save, "clap"), "--epochs", str(clap_epochs),
                      "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "5", "--num-workers", "0",
                      "--seed", str(seed), "--no-progress", "--no-test-at-end"]) == 0
    proj = os.path.join(save, "clap_projectors.pt")
    assert clap.main(["export", "--checkpoint", os.path.join(save, "clap", "clap_best.pt"), "--out", proj]) == 0
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", os.path.join(save, "slm"),
                     "--epochs", str(slm_epochs), "--batch-size", "32", "--lr", "1e-3", "--num-workers", "0",
                     "--seed", str(seed), "--no-progress", "--no-test-at-end"]) == 0
    return os.path.join(save, "slm", "slm_stage3_best.pt")


# -- standardisation -------------------------------------------------------------------------------

def test_statistics_are_those_of_the_train_split_and_only_for_flagged_encoders(tmp_path):
    root = labelled_set(tmp_path / "s", standardize=True)
    m = open_shard_set(root).manifest
    stats = m.feature_stats
    assert stats["split"] == "train" and stats["rows"] == 240 and set(stats) == {"split", "rows", "audio"}
    audio = raw_split(root, "train")["audio"][:, 0].astype(np.float64)
    assert np.allclose(stats["audio"]["h0"]["mean"], audio.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(stats["audio"]["h0"]["std"], audio.std(0), rtol=1e-9)
    # the text encoder asks for nothing; on demand the same function gives any field's statistics
    text = feature_stats(open_shard_set(root), "train", ("text",))["text"]
    assert np.allclose(text["mean"], raw_split(root, "train")["text"].astype(np.float64).mean(0), atol=1e-9)
    # a set whose encoders ask for nothing records nothing, and its manifest has no such key
    plain = labelled_set(tmp_path / "p")
    assert open_shard_set(plain).manifest.feature_stats == {}
    assert "feature_stats" not in json.load(open(os.path.join(plain, MANIFEST_NAME)))
    assert Manifest.from_json(m.to_json()).feature_stats == stats
    old = json.load(open(os.path.join(root, MANIFEST_NAME)))
    del old["feature_stats"]  # a manifest written before the field existed
    assert Manifest.from_dict(old).feature_stats == {}


def test_a_constant_feature_gets_std_one(tmp_path):
    root = labelled_set(tmp_path / "s")
    shards = open_shard_set(root)
    a = raw_split(root, "train")["audio"]
    stats = feature_stats(shards, "train", ("audio",))["audio"]["h0"]
    assert all(s > 0 for s in stats["std"])
    from shards.stats import _Moments

    mom = _Moments()
    for part in np.array_split(np.c_[a[:, 0, :2], np.full(len(a), 3.0)], 7):  # batch by batch, as streamed
        mom.add(part)
    got = mom.result()
    assert got["std"][2] == 1.0 and got["mean"][2] == 3.0
    assert np.allclose(got["std"][:2], a[:, 0, :2].astype(np.float64).std(0), rtol=1e-12)


def test_ingest_records_the_statistics_of_a_flagged_encoder(tmp_path, monkeypatch):
    """A real ingest (decode + fbank + hashing): merge records the train statistics when the audio
    encoder's record asks for standardisation."""
    from ingest.encoders.fbank import FbankEncoder
    from ingest.run import main as ingest
    from ingest.synthetic import generate

    info = FbankEncoder.info
    monkeypatch.setattr(FbankEncoder, "info", lambda self: {**info(self), "standardize": True})
    generate(str(tmp_path / "corpus"), clips=40, meld_clips=0, seed=1, workers=1)
    out = tmp_path / "set"
    assert ingest(["--source", "laion", "--input", str(tmp_path / "corpus" / "laion"), "--out", str(out),
                   "--languages", "en,de", "--decode-workers", "1", "--val-fraction", "0.2",
                   "--test-fraction", "0.2"]) == 0
    m = open_shard_set(str(out)).manifest
    assert m.encoders["audio"]["standardize"] is True
    stats = m.feature_stats
    train = raw_split(out, "train")["audio"][:, 0].astype(np.float64)
    assert stats["rows"] == m.rows_of("train") == len(train) and list(stats["audio"]) == ["logmel_stats"]
    assert np.allclose(stats["audio"]["logmel_stats"]["mean"], train.mean(0), atol=1e-9)
    assert "text" not in stats  # hashing asks for nothing


def test_trainers_feed_standardised_inputs_and_checkpoints_carry_the_statistics(tmp_path):
    root = labelled_set(tmp_path / "s", standardize=True)
    best = train_pipeline(root, str(tmp_path / "run"), slm_epochs=2, clap_epochs=2)
    audio = torch.from_numpy(raw_split(root, "train")["audio"])  # [N, 1, D] fp16, as the loader gives it
    task, model = models.load(best, stage="slm")
    ckpt = task.checkpoint
    assert ckpt["arch"]["standardize"] == {"clap_audio": True, "prosody": True}
    for x in (model.prosody_standardize(audio)[:, 0], model.clap_audio.standardize(audio[:, 0])):
        assert torch.allclose(x.mean(0), torch.zeros(A_DIM), atol=1e-4)
        assert torch.allclose(x.std(0, unbiased=False), torch.ones(A_DIM), atol=1e-4)
    assert model.clap_text.standardize is None  # the text encoder is on a common scale
    clap_ckpt = load_checkpoint(str(tmp_path / "run" / "clap" / "clap_best.pt"), "clap")
    assert clap_ckpt["arch"]["standardize"] == {"audio": True}
    # evaluating on another set with the same encoders uses the checkpoint's statistics, not that set's
    other = labelled_set(tmp_path / "o", standardize=True, seed=5, name="b")
    task, evaluated = models.load(best, open_shard_set(other), "slm")
    assert torch.equal(evaluated.prosody_standardize.mean, model.prosody_standardize.mean)
    assert not np.allclose(open_shard_set(other).manifest.feature_stats["audio"]["h0"]["mean"],
                           model.prosody_standardize.mean[0].numpy(), atol=1e-3)


def test_a_set_without_statistics_keeps_the_reference_model(tmp_path, capsys):
    root = labelled_set(tmp_path / "p")
    best = train_pipeline(root, str(tmp_path / "run"), slm_epochs=1, clap_epochs=1)
    ckpt = load_checkpoint(best, "slm")
    assert "standardize" not in ckpt["arch"] and not any("standardize" in k for k in ckpt["model"])
    # a warm start of that model on a set that standardises is refused: the models differ
    std = labelled_set(tmp_path / "s", standardize=True)
    run = train_pipeline(std, str(tmp_path / "std"), slm_epochs=1, clap_epochs=1)
    proj = os.path.join(os.path.dirname(os.path.dirname(run)), "clap_projectors.pt")
    capsys.readouterr()
    assert slm.main(["--data-root", std, "--clap-ckpt", proj, "--checkpoint", best, "--epochs", "1",
                     "--batch-size", "32", "--save-dir", str(tmp_path / "warm"), "--no-progress"]) == 2
    assert "differs from this one in standardize" in capsys.readouterr().err


# -- the linear probe ------------------------------------------------------------------------------

def test_probe_numbers_are_those_of_a_direct_scikit_learn_fit(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from evaluation.probe import C_GRID, linear_probe

    root = labelled_set(tmp_path / "s", carrier="both")
    got = linear_probe(open_shard_set(root))
    data = {s: raw_split(root, s) for s in ("train", "val", "test")}

    def x(split, what):
        a, t = data[split]["audio"][:, 0].astype(np.float32), data[split]["text"].astype(np.float32)
        return {"audio": a, "text": t, "both": np.concatenate([a, t], 1)}[what]

    labels = list(range(CLASSES))
    for what in ("audio", "text", "both"):
        scores = []
        for c in C_GRID:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000, random_state=0))
            model.fit(x("train", what), data["train"]["label"])
            scores.append((f1_score(data["val"]["label"], model.predict(x("val", what)), labels=labels,
                                    average="macro", zero_division=0), c, model))
        val, c, model = max(scores, key=lambda s: (s[0], -s[1]))  # the best; on a tie the smaller C
        pred = model.predict(x("test", what))
        r = got["results"][what]
        assert r["C"] == c and r["val_score"] == pytest.approx(val, abs=1e-12)
        assert r["metrics"]["macro_f1"] == pytest.approx(f1_score(data["test"]["label"], pred, labels=labels,
                                                                  average="macro", zero_division=0), abs=1e-12)
        assert r["metrics"]["accuracy"] == pytest.approx(accuracy_score(data["test"]["label"], pred), abs=1e-12)
    assert got["results"]["both"]["metrics"]["macro_f1"] > 0.8  # both inputs carry the label here
    assert got["settings"]["train_rows"] == 240 and not got["settings"]["subsampled"]


def test_probe_command_line(tmp_path, capsys):
    from evaluation.cli import main

    root = labelled_set(tmp_path / "s", carrier="audio")
    assert main(["probe", "--data-root", root, "--out", str(tmp_path / "r"), "--max-train-rows", "100"]) == 0
    out = capsys.readouterr().out
    assert "audio macro_f1" in out and "both macro_f1" in out
    written = json.load(open(tmp_path / "r" / "metrics.json"))
    assert written["metrics"]["probe_settings"]["train_rows"] == 100 and written["metrics"]["probe_settings"]["subsampled"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "linear probe: audio" in report and "fixed-seed subsample of 100 of the 240 train rows" in report
    assert main(["probe", "--data-root", root, "--split", "val"]) == 2
    assert "fitted on train and selected on val" in capsys.readouterr().err


# -- the modality ablation -------------------------------------------------------------------------

@pytest.mark.parametrize("carrier, other", [("audio", "text"), ("text", "audio")])
def test_ablation_shows_the_input_that_carries_the_label(tmp_path, carrier, other):
    from evaluation.stages import stage3, stage4

    root = labelled_set(tmp_path / "s", carrier=carrier, standardize=True)
    best = train_pipeline(root, str(tmp_path / "run"))
    res = stage3(best, root, str(tmp_path / "r3"), device="cpu")
    rows = {r["input"]: r for r in res["metrics"]["ablation"]}
    assert rows["fused"]["macro_f1"] > 0.8 and rows["fused"]["change"] == 0
    assert rows[f"without {carrier}"]["change"] < -0.4  # near chance (0.25) without it
    assert abs(rows[f"without {other}"]["change"]) < 0.05  # nothing lost without the other one
    per_class = res["metrics"]["ablation_per_class"]
    assert len(per_class) == CLASSES and all(r[f"change without {carrier}"] < 0 for r in per_class)
    probe = {r["model"]: r["macro_f1"] for r in res["metrics"]["baselines"]}
    assert probe[f"linear probe: {carrier}"] > 0.8 > 0.5 > probe[f"linear probe: {other}"]
    report = open(tmp_path / "r3" / "report.md").read()
    assert "## Ablation" in report and "## Baselines" in report and "without audio" in report
    if carrier == "audio":  # stage 4 on the same set (a MELD head on the frozen SLM), selected by weighted F1
        assert meld.main(["--data-root", root, "--stage3-ckpt", best, "--epochs", "3", "--batch-size", "32",
                          "--num-workers", "0", "--save-dir", str(tmp_path / "meld"), "--no-progress",
                          "--no-test-at-end"]) == 0
        res = stage4(str(tmp_path / "meld" / "meld_slm_A_best.pt"), root, str(tmp_path / "r4"), device="cpu",
                     ablate="audio", probe=False)
        rows = {r["input"]: r for r in res["metrics"]["ablation"]}
        assert set(rows) == {"fused", "without audio"} and rows["without audio"]["change"] < -0.3
        assert "weighted_f1" in rows["fused"] and "baselines" not in res["metrics"]
