"""Evaluate each stage on a split of a shard set; write metrics.json, report.md, a confusion PNG.

Each stage is: open the set, rebuild the stage's Task and model from the checkpoint, run the
training loop's own `evaluate` (fp32, every row once), write the report. The numbers are the
ones the trainer's `--test-at-end` prints for the same checkpoint.

stage2 (CLAP): audio->text and text->audio R@1/5/10, MRR, median rank (in blocks: 24k x 24k
fits), and zero-shot emotion classification by similarity to the projected text embeddings
of the class names (the set's own text encoder embeds them).
stage3 (SLM): accuracy, macro/weighted F1, top-3/top-5, per-class P/R/F1, confusion matrix.
stage4 (MELD): weighted F1 (the benchmark number), accuracy, macro F1, per-class, confusion.

Both classification stages also show the model beside the linear probe of its own inputs
(evaluation.probe: what a researcher runs first) and the modality ablation (evaluation.ablation:
the model without its audio, without its text), so a report says whether the model beats the
obvious baseline and whether it uses the prosody it is built for.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from evaluation.ablation import VARIANTS, ablation, ablation_note, train_means
from evaluation.crosscorpus import cross_corpus_metrics, cross_corpus_note
from evaluation.layer_probe import layer_note, layer_probe, layer_rows, reference_rows
from evaluation.plots import plot_confusion, plot_layer_metric, plot_layer_weights
from evaluation.probe import MAX_TRAIN_ROWS, SHOWN, linear_probe, probe_note, probe_rows
from evaluation.report import write_report
from ingest.encoders import text_encoder_from_manifest
from lake.catalog import ShardSet, open_shard_set
from lake.distributed import World
from lake.errors import LakeError
from lake.layers import resolve_layers
from lake.splits import validation_split
from trainers import models
from trainers.features import layer_weights
from trainers.loop import Task, evaluate, gather_outputs
from trainers.metrics import classification_metrics, normalized_confusion, retrieval_both_directions
from trainers.reference import reference_note

ZERO_SHOT_TEMPLATE = "{}"
ONE = World()  # evaluation runs as one process


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LakeError("--device cuda, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def _open(data_root) -> ShardSet:
    """`data_root`: a set's path or URL, or an already opened ShardSet (the CLI opens it with its cache flags)."""
    return data_root if isinstance(data_root, ShardSet) else open_shard_set(data_root)


def _context(checkpoint: str, shards: ShardSet, split: str, rows: int, **extra) -> dict:
    return {"checkpoint": os.path.abspath(checkpoint), "data_root": shards.root, "fingerprint": shards.fingerprint,
            "split": split, "num_rows": rows, **extra}


def _finish(out: str, stage: str, metrics: dict, context: dict, taxonomy: list[str], title: str,
            sections=None) -> dict:
    os.makedirs(out, exist_ok=True)
    paths = write_report(out, stage, metrics, context, sections)
    if "confusion_matrix" in metrics:
        paths["confusion"] = plot_confusion(np.asarray(metrics["confusion_matrix"]), taxonomy,
                                            os.path.join(out, "confusion.png"), title)
    return paths


def _baselines(task: Task, model, loader, dev, shards: ShardSet, split: str, metrics: dict, name: str,
               probe: bool, ablate: str) -> tuple[dict, list[tuple[str, str]]]:
    """`metrics` with the probe beside the model and the ablation rows (their tables right after the
    headline numbers), and the report's notes on them."""
    sections = []
    if probe and split not in ("train", validation_split(shards.manifest.splits)):
        p = linear_probe(shards, split, layers=task.layers, selection=task.selection)
        metrics["baselines"] = [{"model": name, "C": None, **{k: metrics[k] for k in SHOWN}}] + probe_rows(p)
        metrics["probe_settings"] = p["settings"]
        sections.append(("Baseline: linear probe", probe_note(p)))
    elif probe:
        sections.append(("Baseline: linear probe", f"Not run on {split}: the probe is fitted on train and selected "
                                                   "on the validation split; evaluate on test to see it."))
    if VARIANTS[ablate]:
        means = train_means(shards, task.layers, VARIANTS[ablate])
        ab = ablation(lambda replaced: evaluate(task, model, replaced, dev, ONE), loader, means, VARIANTS[ablate],
                      task.selection, metrics)
        metrics["ablation"], metrics["ablation_per_class"] = ab["rows"], ab["per_class"]
        sections.append(("Modality ablation", ablation_note(task.selection)))
    first = {k: v for k, v in metrics.items() if not isinstance(v, list) or k in ("baselines", "ablation")}
    return {**first, **metrics}, sections


def _classification_stage(stage: str, kind: str, ckpt_path: str, data_root: str, out: str, split: str,
                          batch_size: int, device: str, num_workers: int, title: str, probe: bool = True,
                          ablate: str = "all", label_map: str = "", **files) -> dict:
    """Classify a split with a trained stage-3/4 model (and, by default, its baselines); write the report.
    `label_map`: score it on a set of another taxonomy (evaluation.crosscorpus)."""
    dev = device_of(device)
    shards = _open(data_root)
    task, model = models.load(ckpt_path, shards, kind, same_classes=not label_map, **files)
    loader = task.loader(split, batch_size, ONE, num_workers=num_workers)
    model = model.to(dev)
    ckpt = task.checkpoint
    extra = {"mode": ckpt["arch"]["mode"]} if "mode" in ckpt["arch"] else {}
    if reference_note(ckpt):
        extra["checkpoint_layout"] = reference_note(ckpt)
    if label_map:
        metrics, info = cross_corpus_metrics(gather_outputs(task, model, loader, dev, ONE), task.taxonomy,
                                             shards.taxonomy, label_map, trained_on_names(ckpt), shards.name)
        sections, classes, extra["cross_corpus"] = [("Across corpora", cross_corpus_note(info))], info["targets"], info
    else:
        metrics = evaluate(task, model, loader, dev, ONE)
        metrics, sections = _baselines(task, model, loader, dev, shards, split, metrics, title, probe, ablate)
        classes = shards.taxonomy
    figures = _mix_report(model, metrics, sections, out, title)
    if probe and stage == "stage3" and not label_map:
        figures.update(_layer_probe_report(shards, split, task.selection, metrics, sections, out))
    metrics["confusion_matrix_normalized"] = normalized_confusion(np.asarray(metrics["confusion_matrix"])).round(4).tolist()
    context = _context(ckpt_path, shards, split, metrics["num_rows"], trained_on=ckpt["data"]["fingerprint"],
                       epoch=ckpt["train"]["epoch"], **extra)
    paths = _finish(out, stage, metrics, context, classes, f"{title} on {shards.name} {split}", sections)
    return {"metrics": metrics, "paths": {**paths, **figures}, "headline": task.headline(metrics)}


def trained_on_names(ckpt: dict) -> list[str]:
    """The names of the set(s) a checkpoint was trained on (a label map may key its model side by them)."""
    return [r["name"] for r in ckpt["data"].get("sets") or []] or [ckpt["data"]["name"]]


def stage3(stage3_ckpt: str, data_root: str, out: str, split: str = "test", batch_size: int = 1024,
           device: str = "auto", num_workers: int = 0, probe: bool = True, ablate: str = "all",
           label_map: str = "") -> dict:
    """`probe`: the linear probe beside the model; `ablate`: none, audio, text or all (both, one table);
    `label_map`: a set of another taxonomy (evaluation.crosscorpus)."""
    return _classification_stage("stage3", "slm", stage3_ckpt, data_root, out, split, batch_size, device,
                                 num_workers, "SLM", probe, ablate, label_map)


def stage4(meld_ckpt: str, data_root: str, out: str, split: str = "test", batch_size: int = 1024,
           device: str = "auto", num_workers: int = 0, stage3_ckpt: str = "", probe: bool = True,
           ablate: str = "all", label_map: str = "") -> dict:
    """`stage3_ckpt`: only for a reference-layout MELD head (it holds no SLM)."""
    return _classification_stage("stage4", "meld", meld_ckpt, data_root, out, split, batch_size, device,
                                 num_workers, "MELD", probe, ablate, label_map, stage3_ckpt=stage3_ckpt)


def stage2(clap_ckpt: str, data_root: str, out: str, split: str = "test", batch_size: int = 1024,
           device: str = "auto", block: int = 4096, template: str = ZERO_SHOT_TEMPLATE, num_workers: int = 0,
           zero_shot: bool = True, text_model: str = "") -> dict:
    dev = device_of(device)
    shards = _open(data_root)
    m = shards.manifest
    task, model = models.load(clap_ckpt, shards, "clap")
    model.to(dev)
    loader = task.loader(split, batch_size, ONE, num_workers=num_workers)
    outputs = gather_outputs(task, model, loader, dev, ONE)
    a = torch.from_numpy(outputs["audio"]).to(dev)
    metrics = retrieval_both_directions(a, torch.from_numpy(outputs["text"]).to(dev), block)
    sections = []
    if zero_shot:
        text_encoder = text_encoder_from_manifest(m.encoders["text"], device=str(dev), text_model=text_model)
        prompts = [template.format(name) for name in shards.taxonomy]
        with torch.no_grad():
            classes = model.text_proj(torch.from_numpy(text_encoder.encode(prompts)).to(dev))
        pred = (a @ classes.T).argmax(1).cpu().numpy()
        zs = classification_metrics(outputs["label"], pred, m.num_classes, shards.taxonomy)
        metrics["zero_shot"] = {k: zs[k] for k in ("accuracy", "macro_f1", "weighted_f1")}
        metrics["zero_shot_template"] = template
        metrics["zero_shot_chance"] = 1.0 / m.num_classes
        metrics["confusion_matrix"] = zs["confusion_matrix"]
        metrics["per_class"] = zs["per_class"]
        sections.append(("Zero-shot classification",
                         f"Each clip takes the class whose name, embedded by the set's text encoder "
                         f"({m.encoders['text']['id']}) with the template `{template}` and projected by the text "
                         f"head, is closest to its projected audio. Chance: {1 / m.num_classes:.3f}. "
                         "The confusion matrix and per-class table below are for this classification."))
    arch = task.arch()
    figures = _mix_report(model, metrics, sections, out, "CLAP")
    context = _context(clap_ckpt, shards, split, len(outputs["label"]), audio_layer=arch["audio_layer"],
                       text_field=arch["text_field"])
    paths = _finish(out, "stage2", metrics, context, shards.taxonomy, f"CLAP zero-shot on {split}", sections)
    return {"metrics": metrics, "paths": {**paths, **figures}, "headline": task.headline(metrics)}


def probe(data_root: str, out: str = "", split: str = "test", audio_layer: str = "last",
          max_train_rows: int | None = None, layers: str = "") -> dict:
    """The linear probe alone (evaluation.probe), written as a report when `out` is given; with `layers` (a spec:
    'all', names, indices), the probe per layer instead (evaluation.layer_probe)."""
    shards = _open(data_root)
    if layers:
        return _probe_per_layer(shards, out, split, layers, max_train_rows)
    layers = resolve_layers(audio_layer, shards.manifest.audio_layers, what="--audio-layer (of the layers this set "
                                                                            "stores)")
    p = linear_probe(shards, split, layers, max_train_rows=max_train_rows or MAX_TRAIN_ROWS)
    sel = p["settings"]["metric"]
    headline = "  ".join(f"{what} {sel} {r['metrics'][sel]:.4f} (C={r['C']:g})" for what, r in p["results"].items())
    paths = {}
    if out:
        metrics = {"baselines": probe_rows(p), "probe": p["results"], "probe_settings": p["settings"]}
        context = {"checkpoint": "none (a linear probe fitted here)", "data_root": shards.root,
                   "fingerprint": shards.fingerprint, "split": split,
                   "num_rows": p["results"]["both"]["metrics"]["num_rows"]}
        paths = _finish(out, "probe", metrics, context, shards.taxonomy, "", [("How it was fitted", probe_note(p))])
    return {"metrics": p, "paths": paths, "headline": headline}


# -- layers: the per-layer probe, the learned layer weights --------------------------------------------------

def _probe_per_layer(shards: ShardSet, out: str, split: str, spec: str, max_train_rows: int | None) -> dict:
    """`probe --layers SPEC`: the audio probe on each layer, the text-only and fused ones as reference lines."""
    names = resolve_layers(spec, shards.manifest.audio_layers, what="--layers (of the layers this set stores)")
    lp = layer_probe(shards, split, names, max_train_rows=max_train_rows or MAX_TRAIN_ROWS)
    sel, best = lp["settings"]["metric"], lp["best_layer"]
    refs = "  ".join(f"{r['probe']} {r[sel]:.4f}" for r in reference_rows(lp))
    headline = f"best layer {best} ({sel} {lp['layers'][best]['metrics'][sel]:.4f}) of {len(names)};  {refs}"
    paths = {}
    if out:
        metrics, sections = {}, []
        figures = _write_layer_probe(lp, shards, split, metrics, sections, out)
        context = {"checkpoint": "none (linear probes fitted here)", "data_root": shards.root,
                   "fingerprint": shards.fingerprint, "split": split,
                   "num_rows": lp["reference"]["text"]["metrics"]["num_rows"]}
        paths = {**_finish(out, "probe per layer", metrics, context, shards.taxonomy, "", sections), **figures}
    return {"metrics": lp, "paths": paths, "headline": headline}


def _layer_probe_report(shards: ShardSet, split: str, selection: str, metrics: dict, sections: list, out: str
                        ) -> dict:
    """Stage 3's per-layer probe, when the set stores several layers and `split` is one the probe scores (a probe
    per layer: the plain probe's cost times the layers)."""
    if len(shards.manifest.audio_layers) < 2 or split in ("train", validation_split(shards.manifest.splits)):
        return {}
    lp = layer_probe(shards, split, selection=selection)
    return _write_layer_probe(lp, shards, split, metrics, sections, out)


def _write_layer_probe(lp: dict, shards: ShardSet, split: str, metrics: dict, sections: list, out: str) -> dict:
    """The per-layer probe's table, reference lines and settings into `metrics`, its note into `sections`,
    layers.png into `out`; returns {"layers": path}."""
    sel = lp["settings"]["metric"]
    metrics["layer_probe"], metrics["layer_probe_reference"] = layer_rows(lp), reference_rows(lp)
    metrics["layer_probe_settings"] = {**lp["settings"], "best_layer": lp["best_layer"]}
    sections.append(("Which layer carries the emotion", layer_note(lp) + " Figure: `layers.png`."))
    series = {sel: [r["metrics"][sel] for r in lp["layers"].values()]}
    if sel != "accuracy":
        series["accuracy"] = [r["metrics"]["accuracy"] for r in lp["layers"].values()]
    refs = {r["probe"]: r[sel] for r in metrics["layer_probe_reference"]}
    return {"layers": plot_layer_metric(list(lp["layers"]), series, refs, sel, os.path.join(out, "layers.png"),
                                        f"Linear probe per layer on {shards.name} {split}", lp["best_layer"])}


def _mix_report(model: torch.nn.Module, metrics: dict, sections: list, out: str, title: str) -> dict:
    """A model with learned layer mixes (--audio-layer weighted): their weights per layer into `metrics` (one record
    per layer), a note into `sections`, layer_weights.png into `out`; returns {"layer_weights": path} or {}."""
    mixes = layer_weights(model)
    if not mixes:
        return {}
    layers = list(dict.fromkeys(name for w in mixes.values() for name in w))
    metrics["layer_weights"] = [{"layer": name, **{what: w.get(name) for what, w in mixes.items()}} for name in layers]
    sections.append(("Learned layer weights", "The softmax weights of the model's layer mixes (`--audio-layer "
                     "weighted`: each stored layer standardised where the set records statistics, L2-normalised, "
                     "then summed with these weights; they started equal). Figure: `layer_weights.png`."))
    return {"layer_weights": plot_layer_weights(mixes, os.path.join(out, "layer_weights.png"),
                                                f"{title}: learned layer weights")}
