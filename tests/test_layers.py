"""Which layer carries the emotion: the per-layer probe finds it, and `--audio-layer weighted` (CLAP, SLM) learns
to weigh it most; the weights travel in checkpoints and exported projectors, reports show them, predict works.

The set: five stored layers of which only one (h3) holds the label (class centroid + noise), the others noise of
the same scale; the transcript embedding holds the label too (CLAP aligns audio with it), more weakly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from evaluation.cli import main as evaluation
from evaluation.layer_probe import layer_probe
from evaluation.predict import predict
from evaluation.stages import stage2, stage3, stage4
from lake.catalog import open_shard_set
from test_hf_encoders import hf_set, models, offline  # noqa: F401  (fixtures: a set ingested with hf:, hub off)
from test_sources import rows_and_embeddings
from trainers import clap, meld, slm
from trainers import models as stages
from trainers.checkpoint import load_checkpoint, save_atomic
from trainers.features import LayerMix, layer_weights

from conftest import make_manifest, write_labelled_set

LAYERS, CARRIER, CLASSES, A_DIM, T_DIM = ("h0", "h1", "h2", "h3", "h4"), 3, 4, 16, 12
FAST = ["--batch-size", "32", "--num-workers", "0", "--no-progress", "--no-test-at-end", "--seed", "0"]


def one_layer_set(root, rows=(320, 96, 96), seed=0) -> str:
    manifest = make_manifest(num_classes=CLASSES, layers=LAYERS, audio_dim=A_DIM, text_dim=T_DIM, name="one-layer")
    rng = np.random.default_rng(seed)
    ca, ct = 1.5 * rng.standard_normal((CLASSES, A_DIM)), rng.standard_normal((CLASSES, T_DIM))

    def arrays(y, k):
        audio = rng.standard_normal((k, len(LAYERS), A_DIM))
        audio[:, CARRIER] = ca[y] + 0.8 * rng.standard_normal((k, A_DIM))
        return {"audio": audio.astype(np.float16), "text": (ct[y] + 1.2 * rng.standard_normal((k, T_DIM))).astype(
            np.float16)}

    write_labelled_set(root, manifest, rows, rng, arrays)
    return str(root)


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    """The set; CLAP trained on `weighted`, exported; an SLM on it with its own prosody mix."""
    tmp = tmp_path_factory.mktemp("layers")
    root = one_layer_set(tmp / "set")
    assert clap.main(["--data-root", root, "--save-dir", str(tmp / "clap"), "--audio-layer", "weighted",
                      "--epochs", "12", "--lr", "3e-2", "--warmup-steps", "5", "--schedule", "constant", *FAST]) == 0
    proj = str(tmp / "proj.pt")
    assert clap.main(["export", "--checkpoint", str(tmp / "clap" / "clap_best.pt"), "--out", proj]) == 0
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", str(tmp / "slm"), "--audio-layer",
                     "weighted", "--epochs", "2", "--lr", "1e-2", "--hidden-dim", "64", *FAST]) == 0
    return root, proj, str(tmp / "slm" / "slm_stage3_best.pt"), tmp


def test_slm_weighted_puts_most_weight_on_the_carrier(weighted):
    """CLAP on a noise layer, so that only the prosody branch's mix can reach the layer that carries the label."""
    root, _, _, tmp = weighted
    assert clap.main(["--data-root", root, "--save-dir", str(tmp / "clap0"), "--audio-layer", "h0", "--epochs", "1",
                      *FAST]) == 0
    assert slm.main(["--data-root", root, "--clap-ckpt", str(tmp / "clap0" / "clap_best.pt"), "--save-dir",
                     str(tmp / "slm0"), "--audio-layer", "weighted", "--epochs", "8", "--lr", "5e-2",
                     "--hidden-dim", "64", *FAST]) == 0
    task, model = stages.load(str(tmp / "slm0" / "slm_stage3_best.pt"), stage="slm")
    assert task.layers == list(LAYERS) and task.arch()["clap_index"] == 0 and model.clap_audio.mix is None
    w = _weights(model.prosody_mix)
    assert max(w, key=w.get) == LAYERS[CARRIER] and w[LAYERS[CARRIER]] > 0.5, w


def _weights(mix: LayerMix) -> dict[str, float]:
    return dict(zip(mix.names, mix.weights().tolist()))


# -- the per-layer probe ---------------------------------------------------------------------------------------

def test_the_per_layer_probe_finds_the_layer_that_carries_the_label(tmp_path):
    root = one_layer_set(tmp_path / "s")
    lp = layer_probe(open_shard_set(root))
    scores = {name: r["metrics"]["macro_f1"] for name, r in lp["layers"].items()}
    assert list(scores) == list(LAYERS) and lp["best_layer"] == LAYERS[CARRIER]
    others = max(v for name, v in scores.items() if name != LAYERS[CARRIER])
    assert scores[LAYERS[CARRIER]] > 0.8 and others < 0.45 and scores[LAYERS[CARRIER]] - others > 0.4
    # the reference lines: the text alone, and the `last` layer (h4, noise) beside it, which adds nothing
    assert lp["settings"]["fused_layer"] == "h4" and set(lp["reference"]) == {"text", "both"}
    assert lp["reference"]["text"]["metrics"]["macro_f1"] > 0.5
    assert not lp["settings"]["subsampled"] and lp["settings"]["train_rows"] == 320


def test_probe_layers_command_writes_a_table_and_a_figure(tmp_path, capsys):
    root = one_layer_set(tmp_path / "s")
    out = tmp_path / "r"
    assert evaluation(["probe", "--data-root", root, "--layers", "1,h3,-1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best layer h3" in printed and "text only" in printed and "audio h4 + text" in printed
    written = json.load(open(out / "metrics.json"))["metrics"]
    assert [r["layer"] for r in written["layer_probe"]] == ["h1", "h3", "h4"]
    assert [r["layer"] for r in written["layer_probe"] if r["best"]] == ["h3"]
    assert {"C", "val macro_f1", "macro_f1", "accuracy"} <= set(written["layer_probe"][0])
    assert [r["probe"] for r in written["layer_probe_reference"]] == ["text only", "audio h4 + text"]
    assert written["layer_probe_settings"]["best_layer"] == "h3"
    report = (out / "report.md").read_text()
    assert "## Layer probe" in report and "Best layer by the validation score: **h3**" in report
    assert (out / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evaluation(["probe", "--data-root", root, "--layers", "h9"]) == 2
    assert "--layers (of the layers this set stores): no layer 'h9'" in capsys.readouterr().err


# -- weighted: CLAP, SLM, MELD ---------------------------------------------------------------------------------

def test_layer_mix_is_a_softmax_of_l2_normalised_layers_starting_equal():
    mix = LayerMix(["a", "b", "c"], "test")
    x = torch.randn(4, 3, 5) * torch.tensor([1.0, 10.0, 100.0])[None, :, None]  # layers on other scales
    assert torch.allclose(mix(x), (x / x.norm(dim=-1, keepdim=True)).mean(1), atol=1e-6)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 0.0, 50.0]))
    assert torch.allclose(mix(x), x[:, 2] / x[:, 2].norm(dim=-1, keepdim=True), atol=1e-5)
    assert list(mix.state_dict()) == ["logits"]
    with pytest.raises(ValueError, match="a mix of 3 layers got input of shape"):
        mix(torch.randn(4, 2, 5))


def test_clap_weighted_puts_most_weight_on_the_carrier_and_exports_it(weighted):
    root, proj, _, tmp = weighted
    task, model = stages.load(str(tmp / "clap" / "clap_best.pt"), open_shard_set(root), "clap")
    assert task.layers == list(LAYERS) and task.arch()["mix"] == list(LAYERS) and task.layer == "weighted"
    w = _weights(model.audio_proj.mix)
    assert max(w, key=w.get) == LAYERS[CARRIER] and w[LAYERS[CARRIER]] > 0.5, w
    # the exported projectors carry the mix, and load to the same head
    exported = torch.load(proj, weights_only=True)
    assert exported["mix"] == list(LAYERS) and "mix.logits" in exported["audio_proj"]
    _, loaded = stages.load(proj, stage="clap")
    assert torch.equal(loaded.audio_proj.mix.logits, model.audio_proj.mix.logits)
    # one named layer: the loader reads that layer alone
    one = clap.ClapTask.new(clap.ClapConfig(data_root=[root], audio_layer="2"), task.data)
    assert one.layers == ["h2"] and "mix" not in one.arch()


def test_slm_weighted_keeps_the_clap_mix_frozen_and_learns_its_own(weighted):
    root, proj, best, tmp = weighted
    task, model = stages.load(best, open_shard_set(root), "slm")
    _, clap_model = stages.load(proj, stage="clap")
    arch = task.arch()
    assert task.layers == arch["layers"] == list(LAYERS)
    assert arch["clap_index"] == list(range(len(LAYERS))) and arch["prosody_index"] is None
    assert torch.equal(model.clap_audio.mix.logits, clap_model.audio_proj.mix.logits)  # frozen: CLAP's as exported
    assert not model.clap_audio.mix.logits.requires_grad and model.prosody_mix.logits.requires_grad
    assert set(layer_weights(model)) == {"CLAP audio head (frozen)", "prosody branch"}
    # `clap` on a mixing CLAP is a mix of the prosody branch's own; a named layer reads the CLAP's layers + that one
    assert slm.slm_layers(list(LAYERS), True, "clap", list(LAYERS)) == (list(LAYERS), [0, 1, 2, 3, 4], None)
    assert slm.slm_layers(["h1", "h3"], True, "h4", list(LAYERS)) == (["h1", "h3", "h4"], [0, 1], 2)
    assert slm.slm_layers(["h3"], False, "weighted", list(LAYERS)) == (list(LAYERS), 3, None)
    assert slm.slm_layers(["h3"], False, "clap", list(LAYERS)) == (["h3"], 0, 0)


def test_stage_reports_show_the_weights_and_stage3_the_layer_probe(weighted):
    root, proj, best, tmp = weighted
    r2 = stage2(proj, root, str(tmp / "r2"), device="cpu", zero_shot=False)
    rows = r2["metrics"]["layer_weights"]
    assert [r["layer"] for r in rows] == list(LAYERS) and set(rows[0]) == {"layer", "CLAP audio head"}
    assert os.path.exists(r2["paths"]["layer_weights"])
    r3 = stage3(best, root, str(tmp / "r3"), device="cpu", ablate="none")
    written = json.load(open(tmp / "r3" / "metrics.json"))["metrics"]
    assert set(written["layer_weights"][0]) == {"layer", "CLAP audio head (frozen)", "prosody branch"}
    assert abs(sum(r["prosody branch"] for r in written["layer_weights"]) - 1) < 1e-6
    assert written["layer_probe_settings"]["best_layer"] == LAYERS[CARRIER]
    assert {"layer_weights", "layers", "confusion"} <= set(r3["paths"])
    report = (tmp / "r3" / "report.md").read_text()
    assert "## Layer weights" in report and "## Which layer carries the emotion" in report
    # MELD on the weighted SLM: nothing new to weigh; the SLM's mixes stay as trained, and its report shows them
    assert meld.main(["--data-root", root, "--stage3-ckpt", best, "--epochs", "1", "--batch-size", "32",
                      "--num-workers", "0", "--save-dir", str(tmp / "meld"), "--no-progress", "--no-test-at-end"]) == 0
    mtask, mmodel = stages.load(str(tmp / "meld" / "meld_slm_A_best.pt"), open_shard_set(root), "meld")
    _, smodel = stages.load(best, stage="slm")
    assert mtask.layers == list(LAYERS) and torch.equal(mmodel.slm.prosody_mix.logits, smodel.prosody_mix.logits)
    r4 = stage4(str(tmp / "meld" / "meld_slm_A_best.pt"), root, str(tmp / "r4"), device="cpu", ablate="none",
                probe=False)
    assert set(r4["metrics"]["layer_weights"][0]) == {"layer", "CLAP audio head (frozen)", "prosody branch (frozen)"}
    assert "layers" not in r4["paths"]  # the per-layer probe is stage 3's


def test_a_named_prosody_layer_on_a_weighted_clap_reads_only_the_clap_layers_and_it(weighted, tmp_path):
    root, proj, _, _ = weighted
    assert slm.main(["--data-root", root, "--clap-ckpt", proj, "--save-dir", str(tmp_path), "--audio-layer", "h3",
                     "--epochs", "1", "--batch-size", "64", "--no-progress", "--no-test-at-end"]) == 0
    task, model = stages.load(str(tmp_path / "slm_stage3_best.pt"), stage="slm")
    assert task.layers == list(LAYERS) and task.arch()["prosody_index"] == CARRIER and model.prosody_mix is None


def test_an_slm_checkpoint_from_before_layer_mix_still_loads(weighted, tmp_path):
    _, _, best, _ = weighted
    ckpt = load_checkpoint(best, "slm")
    ckpt["model"]["layer_logits"] = ckpt["model"].pop("prosody_mix.logits")  # the name the mix had
    save_atomic(ckpt, str(tmp_path / "old.pt"))
    _, old = stages.load(str(tmp_path / "old.pt"), stage="slm")
    _, new = stages.load(best, stage="slm")
    assert torch.equal(old.prosody_mix.logits, new.prosody_mix.logits)


def test_projectors_whose_mix_does_not_match_its_names_are_refused(weighted, tmp_path, capsys):
    _, proj, _, _ = weighted
    broken = torch.load(proj, weights_only=True)
    broken["mix"] = broken["mix"][:2]
    torch.save(broken, tmp_path / "p.pt")
    root = weighted[0]
    assert slm.main(["--data-root", root, "--clap-ckpt", str(tmp_path / "p.pt"), "--save-dir", str(tmp_path / "s"),
                     "--no-progress"]) == 2
    assert "audio head mixes 5 layers, but name 2 (mix)" in capsys.readouterr().err


# -- predict on a weighted model of a set ingested with a real (tiny) transformers speech model ---------------

def test_predict_with_weighted_clap_and_slm_on_an_hf_set(hf_set, tmp_path):
    tmp, out, _ = hf_set
    ck = tmp_path / "ck"
    fast = ["--preset", "debug", "--batch-size", "4", "--device", "cpu", "--no-progress", "--audio-layer", "weighted"]
    assert clap.main(["--data-root", str(out), "--save-dir", str(ck / "clap"), *fast]) == 0
    assert clap.main(["export", "--checkpoint", str(ck / "clap" / "clap_best.pt"), "--out", str(ck / "proj.pt")]) == 0
    assert slm.main(["--data-root", str(out), "--clap-ckpt", str(ck / "proj.pt"), "--save-dir", str(ck / "slm"),
                     "--no-test-at-end", *fast]) == 0
    best = str(ck / "slm" / "slm_stage3_best.pt")
    task, model = stages.load(best, stage="slm")
    assert task.layers == ["h0", "h1", "h2"] and model.prosody_mix is not None and model.clap_audio.mix is not None
    # each file gives the probabilities the model gives the set's stored row of that clip (every layer, fp16)
    rows = rows_and_embeddings(out)
    for key in ("clips/c03", "clips/c10"):
        _, _, transcript, audio, text = rows[key]
        (r,) = predict([str(tmp / f"{key}.wav")], best, clap_ckpt=str(ck / "proj.pt"), transcript=transcript, top=3)
        assert "error" not in r and len(r["slm"]) == 3
        with torch.no_grad():
            want = torch.softmax(model(torch.tensor(audio[None]).float(), torch.tensor(text[None]).float()), -1)[0]
        for p in r["slm"]:
            assert p["prob"] == pytest.approx(float(want[task.taxonomy.index(p["label"])]), abs=2e-3)
