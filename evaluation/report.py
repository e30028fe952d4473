"""One evaluation run on disk: `metrics.json` for programs, `report.md` for people.

Both say what was measured (checkpoint, shard set fingerprint and root, split,
rows, time): a number without the checkpoint and data it came from cannot be
compared with the next run. `metrics.json` holds every number `report.md`
shows, as plain JSON (numpy scalars and arrays converted; NaN/inf become null
so that strict JSON parsers accept the file).

Open the numbers in Python with `json.load(open(".../metrics.json"))["metrics"]`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from numbers import Integral, Real

from lake.storage import write_bytes_atomic
from trainers.metrics import largest_confusions

METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"
REQUIRED_CONTEXT = ("checkpoint", "fingerprint", "split")
# Context rows in this order first (then any other keys the caller gave).
CONTEXT_LABELS = {"checkpoint": "Checkpoint", "data_root": "Shard set", "fingerprint": "Fingerprint",
                  "split": "Split", "num_rows": "Rows", "created_at": "Created"}
# The headline table lists these first when present (weighted F1 is MELD's headline), then the rest.
HEADLINE_FIRST = ("weighted_f1", "accuracy", "macro_f1", "ua", "wa", "weighted_precision", "weighted_recall",
                  "macro_precision", "macro_recall", "mean_R@1")
# Counts already in the context table; kept in metrics.json, left out of the headline.
NOT_HEADLINE = ("num_rows", "num_classes")
# Matches the plot: a raw count table is readable up to about this many classes.
MAX_CLASSES_FOR_CM_TABLE = 12


def to_jsonable(x, where: str = "metrics"):
    """`x` with numpy/torch scalars and arrays turned into Python numbers and lists.

    Raises TypeError naming the offending key for anything else, before any file is written.
    """
    if isinstance(x, dict):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if hasattr(x, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_jsonable(x.tolist(), where)
    if isinstance(x, Integral):
        return int(x)
    if isinstance(x, Real):
        return float(x) if math.isfinite(x) else None
    raise TypeError(f"{where} is a {type(x).__name__}, which cannot be written to {METRICS_NAME}")


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, Integral):
        return str(int(v))
    if isinstance(v, Real):
        return f"{float(v):.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (Real, str))


def _title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _class_names(metrics: dict, num_classes: int) -> list[str]:
    if isinstance(metrics.get("class_names"), list):
        return [str(c) for c in metrics["class_names"]]
    if isinstance(metrics.get("per_class"), list):
        return [str(r.get("class", i)) for i, r in enumerate(metrics["per_class"])]
    return [str(i) for i in range(num_classes)]


def _with_confusions(metrics: dict) -> dict:
    """The ten largest confusions as records: given ones normalised, else derived from the matrix."""
    given = metrics.get("largest_confusions")
    if given is None and isinstance(metrics.get("confusion_matrix"), list):
        cm = metrics["confusion_matrix"]
        given = largest_confusions(cm, _class_names(metrics, len(cm)), n=10)
    if given is None:
        return metrics
    fields = ("true", "predicted", "count", "share_of_true")
    records = [r if isinstance(r, dict) else dict(zip(fields, r, strict=True)) for r in given]
    return {**metrics, "largest_confusions": records}


def _markdown(stage: str, metrics: dict, context: dict, sections) -> str:
    parts = [f"# Evaluation report: {stage}"]
    keys = [k for k in CONTEXT_LABELS if k in context] + [k for k in context if k not in CONTEXT_LABELS]
    parts.append(_table(["", ""], [[CONTEXT_LABELS.get(k, _title(k)), f"`{context[k]}`" if k in (
        "checkpoint", "data_root", "fingerprint") else context[k]] for k in keys]))

    scalars = [k for k in HEADLINE_FIRST if k in metrics and _is_scalar(metrics[k])]
    scalars += [k for k, v in metrics.items() if _is_scalar(v) and k not in scalars and k not in NOT_HEADLINE]
    groups = {k: v for k, v in metrics.items() if isinstance(v, dict) and v and all(map(_is_scalar, v.values()))}
    headline = ["## Headline"]
    if scalars:
        headline.append(_table(["metric", "value"], [[k, metrics[k]] for k in scalars]))
    if groups:  # e.g. retrieval: one row per direction, one column per metric
        cols = list(dict.fromkeys(c for g in groups.values() for c in g))
        headline.append(_table([""] + cols, [[k] + [g.get(c) for c in cols] for k, g in groups.items()]))
    if len(headline) > 1:
        parts.append("\n\n".join(headline))

    for key, value in metrics.items():
        if key == "largest_confusions" or not (isinstance(value, list) and value
                                               and all(isinstance(r, dict) for r in value)):
            continue
        cols = list(dict.fromkeys(c for r in value for c in r))
        parts.append(f"## {_title(key)}\n\n"
                     + _table(cols, [[r.get(c) for c in cols] for r in value]))

    cm = metrics.get("confusion_matrix")
    if isinstance(cm, list) and 0 < len(cm) <= MAX_CLASSES_FOR_CM_TABLE:
        names = _class_names(metrics, len(cm))
        parts.append("## Confusion matrix (rows: true, columns: predicted)\n\n"
                     + _table(["true \\ predicted"] + names, [[names[i]] + list(row) for i, row in enumerate(cm)]))

    if metrics.get("largest_confusions"):
        rows = [[r["true"], r["predicted"], r["count"], f"{100 * r['share_of_true']:.1f}%"]
                for r in metrics["largest_confusions"]]
        parts.append(f"## Largest confusions (top {len(rows)})\n\n"
                     + _table(["true", "predicted", "count", "share of true class"], rows))

    for title, body in sections or []:
        parts.append(f"## {title}\n\n{body.strip()}")
    return "\n\n".join(parts) + "\n"


def write_report(out_dir, stage: str, metrics: dict, context: dict,
                 sections: list[tuple[str, str]] | None = None) -> dict:
    """Write `metrics.json` and `report.md` under `out_dir`; returns {"metrics": path, "report": path}.

    `context` must name the `checkpoint`, the shard set `fingerprint` and the
    `split`; `data_root` and `num_rows` are expected, `created_at` is filled in
    (UTC) if absent, and any other keys are shown too. `metrics` is rendered by
    shape: top-level numbers form the headline table, dicts of numbers a table
    with one row each (retrieval directions), lists of dicts a table each
    (`per_class`), `confusion_matrix` a count table up to 12 classes and, with
    the class names from `per_class`, the ten largest confusions (added to
    `metrics.json` too). `sections` are appended as (title, Markdown body).
    """
    missing = [k for k in REQUIRED_CONTEXT if context.get(k) in (None, "")]
    if missing:
        raise ValueError(f"report context lacks {', '.join(missing)}: a report must say which "
                         "checkpoint, shard set and split its numbers come from")
    context = to_jsonable(dict(context), "context")
    context.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    metrics = _with_confusions(to_jsonable(metrics))
    report = _markdown(stage, metrics, context, sections)
    payload = json.dumps({"stage": stage, "context": context, "metrics": metrics}, indent=2, allow_nan=False)

    os.makedirs(out_dir, exist_ok=True)
    paths = {"metrics": os.path.join(out_dir, METRICS_NAME), "report": os.path.join(out_dir, REPORT_NAME)}
    write_bytes_atomic(paths["metrics"], (payload + "\n").encode())
    write_bytes_atomic(paths["report"], report.encode())
    return paths
