"""Evaluate each stage on a split of a shard set; write metrics.json, report.md, a confusion PNG.

stage2 (CLAP): audio->text and text->audio R@1/5/10, MRR, median rank (in blocks: 24k x 24k
fits), and zero-shot emotion classification by similarity to the projected text embeddings
of the class names (the set's own text encoder embeds them).
stage3 (SLM): accuracy, macro/weighted F1, top-3/top-5, per-class P/R/F1, confusion matrix.
stage4 (MELD): weighted F1 (the benchmark number), accuracy, macro F1, per-class, confusion.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from lake.catalog import ShardSet, open_shard_set
from lake.errors import LakeError
from shards.loader import ShardLoader
from trainers.features import resolve_layer
from trainers.metrics import classification_metrics, normalized_confusion, retrieval_both_directions

ZERO_SHOT_TEMPLATE = "{}"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LakeError("--device cuda, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def _loader(shards: ShardSet, split: str, batch_size: int, layers, fields, num_workers: int) -> ShardLoader:
    return ShardLoader(shards, split, batch_size, training=False, layers=layers, fields=fields,
                       num_workers=num_workers)


def _context(checkpoint: str, shards: ShardSet, split: str, rows: int, **extra) -> dict:
    return {"checkpoint": os.path.abspath(checkpoint), "data_root": shards.root, "fingerprint": shards.fingerprint,
            "split": split, "num_rows": rows, **extra}


def _finish(out: str, stage: str, metrics: dict, context: dict, taxonomy: list[str], title: str,
            sections=None) -> dict:
    from evaluation.plots import plot_confusion
    from evaluation.report import write_report

    os.makedirs(out, exist_ok=True)
    paths = write_report(out, stage, metrics, context, sections)
    if "confusion_matrix" in metrics:
        paths["confusion"] = plot_confusion(np.asarray(metrics["confusion_matrix"]), taxonomy,
                                            os.path.join(out, "confusion.png"), title)
    return paths


def _check_data(ckpt: dict, shards: ShardSet, path: str) -> None:
    """The set must hold what the model was trained on: the same classes, the same embedding space."""
    trained = ckpt["arch"]["taxonomy"]
    if list(trained) != list(shards.taxonomy):
        raise LakeError(f"{path}: trained on classes {trained[:5]}...; {shards.root} has {shards.taxonomy[:5]}...; "
                        "evaluate on a set with the same taxonomy")
    if ckpt["data"]["encoders"] != shards.manifest.encoders:
        raise LakeError(f"{path}: trained on embeddings of other encoders than {shards.root}'s; evaluate on a set "
                        "ingested with the same encoders")


def _with_normalized(metrics: dict) -> dict:
    metrics["confusion_matrix_normalized"] = normalized_confusion(np.asarray(metrics["confusion_matrix"])).round(4).tolist()
    return metrics


def _classification_stage(stage: str, model, ckpt: dict, ckpt_path: str, layers: list[str], data_root: str,
                          out: str, split: str, batch_size: int, device: str, num_workers: int, title: str,
                          **context) -> dict:
    """Classify a split with a frozen model (audio, text -> logits) and write the stage's report."""
    from trainers.slm import classification_metrics_from

    dev = _device(device)
    shards = open_shard_set(data_root)
    _check_data(ckpt, shards, ckpt_path)
    loader = _loader(shards, split, batch_size, layers, ("audio", "text", "label"), num_workers)
    model = model.to(dev)
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            logits.append(model(batch["audio"].to(dev), batch["text"].to(dev)).float().cpu())
            labels.append(batch["label"])
    outputs = {"logits": torch.cat(logits).numpy(), "label": torch.cat(labels).numpy()}
    metrics = _with_normalized(classification_metrics_from(outputs, shards.taxonomy))
    context = _context(ckpt_path, shards, split, loader.num_rows, trained_on=ckpt["data"]["fingerprint"],
                       epoch=ckpt["epoch"] + 1, **context)
    paths = _finish(out, stage, metrics, context, shards.taxonomy, f"{title} on {shards.name} {split}")
    return {"metrics": metrics, "paths": paths}


def stage3(stage3_ckpt: str, data_root: str, out: str, split: str = "test", batch_size: int = 1024,
           device: str = "auto", num_workers: int = 2) -> dict:
    from trainers.slm import load_slm

    model, ckpt = load_slm(stage3_ckpt)
    return _classification_stage("stage3", model, ckpt, stage3_ckpt, ckpt["arch"]["layers"], data_root, out, split,
                                 batch_size, device, num_workers, "SLM")


def stage4(meld_ckpt: str, data_root: str, out: str, split: str = "test", batch_size: int = 1024,
           device: str = "auto", num_workers: int = 2) -> dict:
    from trainers.meld import load_meld

    model, ckpt = load_meld(meld_ckpt)
    mode = ckpt["arch"]["mode"]
    return _classification_stage("stage4", model, ckpt, meld_ckpt, ckpt["arch"]["slm_arch"]["layers"], data_root, out,
                                 split, batch_size, device, num_workers, f"MELD ({mode})", mode=mode)


def stage2(clap_ckpt: str, data_root: str, out: str, split: str = "test", batch_size: int = 1024,
           device: str = "auto", block: int = 4096, template: str = ZERO_SHOT_TEMPLATE, num_workers: int = 2,
           zero_shot: bool = True, text_model: str = "") -> dict:
    from trainers.clap import Clap, load_projectors, projectors_into

    dev = _device(device)
    shards = open_shard_set(data_root)
    m = shards.manifest
    proj = load_projectors(clap_ckpt)
    dims = proj["dims"]
    if (dims["audio"], dims["text"]) != (m.audio_dim, m.text_dim):
        raise LakeError(f"{clap_ckpt}: projectors for {dims['audio']}/{dims['text']} dims; {data_root} stores "
                        f"{m.audio_dim}/{m.text_dim}")
    if proj["data"] and proj["data"]["encoders"] != m.encoders:
        raise LakeError(f"{clap_ckpt}: trained on embeddings of other encoders than {data_root}'s")
    layer = proj["audio_layer"] or resolve_layer("last", m.audio_layers)
    text_key = "caption" if proj.get("text_field") == "caption" else "text"
    model = Clap(dims["audio"], dims["text"], dims["proj"], dropout=0.0)
    projectors_into(model.audio_proj, model.text_proj, proj)
    model.to(dev).eval()
    loader = _loader(shards, split, batch_size, [layer], ("audio", text_key, "label"), num_workers)
    a, t, y = [], [], []
    with torch.no_grad():
        for batch in loader:
            ea, et, _ = model(batch["audio"][:, 0].to(dev), batch[text_key].to(dev))
            a.append(ea)
            t.append(et)
            y.append(batch["label"])
    a, t, y = torch.cat(a), torch.cat(t), torch.cat(y).numpy()
    metrics = retrieval_both_directions(a, t, block)
    sections = []
    if zero_shot:
        from ingest.encoders import text_encoder_from_manifest

        text_encoder = text_encoder_from_manifest(m.encoders["text"], device=str(dev), text_model=text_model)
        prompts = [template.format(name) for name in shards.taxonomy]
        with torch.no_grad():
            classes = model.text_proj(torch.from_numpy(text_encoder.encode(prompts)).to(dev))
        pred = (a @ classes.T).argmax(1).cpu().numpy()
        zs = classification_metrics(y, pred, m.num_classes, shards.taxonomy)
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
    context = _context(clap_ckpt, shards, split, len(y), audio_layer=layer, text_field=proj.get("text_field") or "transcript")
    paths = _finish(out, "stage2", metrics, context, shards.taxonomy, f"CLAP zero-shot on {split}", sections)
    return {"metrics": metrics, "paths": paths}
