"""Several evaluation reports as one table: the field's numbers over seeds, folds and encoders.

    python -m evaluation table sweeps/slm                                  # every metrics.json under it
    python -m evaluation table hubert=sweeps/hubert wavlm=sweeps/wavlm --out tables/encoders

A report (a folder holding metrics.json: `python -m evaluation stage2|stage3|stage4 --out`) is one run of
one set; a report of several sets (per-set metrics under "sets") is one run of each of them. Runs are
grouped by label and set:
- set: the last part of the report's data_root (what --data-root named: sets/iemocap-fold1 ->
  iemocap-fold1, the name trainers.sweep gives its run folders); in a multi-set report, its set names;
- label: `LABEL=PATH` labels every report found under PATH (an encoder, a recipe); arguments with the
  same label pool their reports; a bare PATH has none.

Per group: the run count, and the mean and the sample standard deviation (ddof=1: the runs are a sample
of seeds or folds; null for a single run) of each metric: the field's UA, WA, macro-F1 and weighted F1
by default (trainers.metrics.FIELD_METRICS), or --metrics (a dotted name reaches into a group, e.g.
audio_to_text.R@1 of a stage-2 report). Per label, "all sets" pools every run of every set, each run
once: with the same seeds on every set its mean is the mean of the set means; its standard deviation
spans the seeds and the sets together. A report written before ua/wa existed has them from its
confusion matrix. All reports must be of one split (a table compares like with like).

Open the result with `json.load(open("table.json"))`: {"split", "metrics", "groups": [{"label", "set",
"n", "fingerprints", "metrics": {name: {"mean", "std"}}}], "overall": [...], "runs": [...]}.
"""

from __future__ import annotations

import json
import os

import numpy as np

from evaluation.report import METRICS_NAME, _table
from lake.errors import LakeError
from lake.storage import write_bytes_atomic
from trainers.metrics import FIELD_METRICS, unweighted_accuracy
from trainers.sweep import set_name

TABLE_JSON, TABLE_MD = "table.json", "table.md"
ALL_SETS = "all sets"


def find_reports(args: list[str]) -> list[tuple[str, str]]:
    """(label, metrics.json path) of every report under each `[LABEL=]PATH`, in argument order, each file once."""
    found: dict[str, str] = {}
    for arg in args:
        label, path = ("", arg) if os.path.exists(arg) or "=" not in arg else arg.split("=", 1)
        if os.path.isfile(path):
            files = [path]
        elif os.path.isdir(path):
            files = sorted(os.path.join(d, METRICS_NAME) for d, _, names in os.walk(path) if METRICS_NAME in names)
        else:
            raise LakeError(f"{path}: no such report folder; give folders written by python -m evaluation "
                            "stage2|stage3|stage4 --out (or folders holding them)")
        if not files:
            raise LakeError(f"{path}: no {METRICS_NAME} under it; give folders written by python -m evaluation "
                            "stage2|stage3|stage4 --out (or folders holding them)")
        for f in files:
            found.setdefault(os.path.realpath(f), label)
    return [(label, path) for path, label in found.items()]


def metric_value(metrics: dict, name: str) -> float | None:
    """A scalar metric by name (dotted: inside a group), or None. ua and wa of a classification report written
    before they existed come from its confusion matrix and accuracy (the same definitions)."""
    if name in ("ua", "wa") and name not in metrics and "accuracy" in metrics \
            and isinstance(metrics.get("confusion_matrix"), list):
        return unweighted_accuracy(metrics["confusion_matrix"]) if name == "ua" else metrics["accuracy"]
    value = metrics.get(name)
    if name not in metrics:
        value = metrics
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_runs(label: str, path: str, names: tuple[str, ...]) -> list[dict]:
    """The runs of one report: {"report", "label", "set", "split", "stage", "fingerprint", "checkpoint", "values"}."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        context, metrics = report["context"], report["metrics"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise LakeError(f"{path}: not an evaluation report ({type(e).__name__}: {e}); give folders written by "
                        "python -m evaluation stage2|stage3|stage4 --out") from None
    per_set = metrics.get("sets") if isinstance(metrics.get("sets"), dict) and metrics["sets"] else \
        {set_name(str(context.get("data_root", ""))): metrics}
    runs = []
    for set_, m in per_set.items():
        values = {n: metric_value(m, n) for n in names}
        missing = [n for n, v in values.items() if v is None]
        if missing:
            raise LakeError(f"{path}: a {report.get('stage', '?')} report without {', '.join(missing)}"
                            f"{f' for set {set_}' if len(per_set) > 1 else ''}; pick the metrics it holds with "
                            "--metrics (e.g. mean_R@1 for stage 2)")
        runs.append({"report": os.path.dirname(path), "label": label, "set": set_, "split": context.get("split"),
                     "stage": report.get("stage"), "fingerprint": context.get("fingerprint"),
                     "checkpoint": context.get("checkpoint"), "values": values})
    return runs


def summarize(runs: list[dict], names: tuple[str, ...]) -> dict:
    """n, and per metric the mean and the sample standard deviation (ddof=1; None for one run)."""
    out = {}
    for n in names:
        v = np.array([r["values"][n] for r in runs], dtype=np.float64)
        out[n] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None}
    return {"n": len(runs), "metrics": out}


def aggregate(runs: list[dict], names: tuple[str, ...]) -> dict:
    """The table of `runs` (read_runs): a group per (label, set), labels in order of appearance, sets by name;
    an "all sets" row per label."""
    splits = sorted({str(r["split"]) for r in runs})
    if len(splits) > 1:
        raise LakeError(f"the reports are of splits {', '.join(splits)}; a table compares one split: give the "
                        "reports of one")
    groups, overall = [], []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        sets = sorted({r["set"] for r in mine})
        for set_ in sets:
            of_set = [r for r in mine if r["set"] == set_]
            groups.append({"label": label, "set": set_, **summarize(of_set, names),
                           "fingerprints": sorted({str(r["fingerprint"]) for r in of_set})})
        overall.append({"label": label, "sets": sets, **summarize(mine, names)})
    return {"split": splits[0] if splits else None, "metrics": list(names), "groups": groups, "overall": overall,
            "runs": runs}


def _mean_std(s: dict) -> str:
    return f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else "")


def markdown(table: dict) -> str:
    names, labelled = table["metrics"], any(g["label"] for g in table["groups"])
    rows = []
    for o in table["overall"]:
        of_label = [g for g in table["groups"] if g["label"] == o["label"]] + [{**o, "set": f"**{ALL_SETS}**"}]
        rows += [([g["label"]] if labelled else []) + [g["set"], g["n"]] + [_mean_std(g["metrics"][n]) for n in names]
                 for g in of_label]
    header = (["label"] if labelled else []) + ["set", "runs"] + names
    mixed = [g["set"] for g in table["groups"] if len(g["fingerprints"]) > 1]
    notes = [f"Split: {table['split']}. Each cell: the mean over the runs ± their sample standard deviation "
             f"(ddof=1; none for one run). **{ALL_SETS}**: every run of every set, each once."]
    if mixed:
        notes.append(f"Warning: the runs of {', '.join(mixed)} were evaluated on sets of different fingerprints.")
    return "# Runs: mean ± std\n\n" + _table(header, rows) + "\n\n" + "\n\n".join(notes) + "\n"


def table(args: list[str], out: str = "", names: tuple[str, ...] = FIELD_METRICS) -> dict:
    """Read the reports under `args` ([LABEL=]PATH), aggregate them, write table.json and table.md to `out` (if
    given). Returns {"table", "markdown", "paths"}."""
    names = tuple(dict.fromkeys(names))
    runs = [r for label, path in find_reports(args) for r in read_runs(label, path, names)]
    result = aggregate(runs, names)
    text = markdown(result)
    paths = {}
    if out:
        os.makedirs(out, exist_ok=True)
        paths = {"json": os.path.join(out, TABLE_JSON), "markdown": os.path.join(out, TABLE_MD)}
        write_bytes_atomic(paths["json"], (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())
        write_bytes_atomic(paths["markdown"], text.encode())
    return {"table": result, "markdown": text, "paths": paths}
