"""The baseline a researcher runs first: a linear probe of the stored embeddings.

    python -m evaluation probe --data-root SET [--split test] [--audio-layer last] [--out DIR]

Standardised logistic regression (scikit-learn: `StandardScaler` -> `LogisticRegression`, lbfgs,
multinomial) on three inputs: the audio embedding alone (the stored layer(s) a stage reads,
concatenated), the transcript embedding alone, and both side by side. Each is fitted on the
train split for every C of `C_GRID`; the C with the best validation score (macro-F1, or
weighted F1 for MELD sets, as the stages select) is kept, without refitting on train + val,
and scored on `split` with the stages' own metrics (`classification_metrics_from` on the
log-probabilities). Deterministic: fixed `random_state`; a train split larger than
`max_train_rows` is subsampled with a fixed seed, and the report says so.

A stage-3 or stage-4 model that loses to this probe of its own inputs is not using them well:
the stage reports print it beside the model.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from lake.catalog import ShardSet
from lake.errors import LakeError
from lake.layers import resolve_layers
from lake.splits import validation_split
from lake.taxonomy import MELD_CLASSES
from shards.stats import iter_split
from trainers.metrics import classification_metrics_from

C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_TRAIN_ROWS = 20000
MAX_ITER = 1000
INPUTS = ("audio", "text", "both")
SHOWN = ("macro_f1", "weighted_f1", "ua", "accuracy", "top3_accuracy")


def selection_metric(shards: ShardSet) -> str:
    """What the stages select by on this set: weighted F1 for MELD sets, macro-F1 otherwise."""
    m = shards.manifest
    return "weighted_f1" if list(m.taxonomy) == MELD_CLASSES or "dev" in m.splits else "macro_f1"


def _inputs(arrays: dict, what: str) -> np.ndarray:
    """The probe's float32 inputs: the stored audio layers flattened, the text, or both side by side."""
    parts = {"audio": ["audio"], "text": ["text"], "both": ["audio", "text"]}[what]
    xs = [arrays[f].reshape(len(arrays[f]), -1).astype(np.float32) for f in parts]
    return xs[0] if len(xs) == 1 else np.concatenate(xs, 1)


def _log_proba(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """[N, C] log-probabilities over the whole taxonomy (-inf for classes absent from train)."""
    out = np.full((len(x), num_classes), -np.inf, dtype=np.float32)
    from threadpoolctl import threadpool_limits

    with np.errstate(divide="ignore"), threadpool_limits(1):
        out[:, model.classes_] = np.log(model.predict_proba(x))
    return out


def fit_probe(x: np.ndarray, y: np.ndarray, c: float, seed: int = 0):
    """The probe for one C: standardise every feature on the train rows, then logistic regression."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed))
    # one BLAS thread: the same numbers on every machine (threaded reductions vary in the last bits), and
    # measured here (2 shared cores), threads made the demo's probe 7x slower (62 s against 9 s)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded as the iteration count instead
        return model.fit(x, y)


def train_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """The train rows the probe fits on: all, or a fixed-seed subsample of `max_rows` (sorted)."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


PROBE_FIELDS = ("audio", "text", "label")


def read_splits(shards: ShardSet, split: str, layers: list[str], max_train_rows: int, seed: int
                ) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """{train, val split, `split`: {audio [N, L, Da] of `layers`, text, label}} and the train rows available.

    The train rows are kept as they stream by (`train_rows`' fixed-seed subsample): a large set's train split,
    with every stored layer, is never held whole."""
    val = validation_split(shards.manifest.splits)
    if split in ("train", val):
        raise LakeError(f"--split {split}: the probe is fitted on train and selected on {val}; score it on another "
                        "split (test)")
    available = shards.manifest.rows_of("train")
    keep = train_rows(available, max_train_rows, seed)
    data = {"train": _rows(shards, "train", layers, keep)}
    data.update({s: _rows(shards, s, layers) for s in (val, split)})
    return data, available


def _rows(shards: ShardSet, split: str, layers: list[str], keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A split's probe fields, in index order; only the rows at the sorted positions `keep` when given."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in PROBE_FIELDS}
    seen = 0
    for batch in iter_split(shards, split, PROBE_FIELDS, layers):
        n = len(batch["label"])
        sel = slice(None) if keep is None else keep[(keep >= seen) & (keep < seen + n)] - seen
        seen += n
        for k in PROBE_FIELDS:
            parts[k].append(batch[k][sel])
    return {k: np.concatenate(v) for k, v in parts.items()}


def fit_selected(xs: dict[str, np.ndarray], ys: dict[str, np.ndarray], val: str, split: str, taxonomy: list[str],
                 selection: str, grid: tuple[float, ...] = C_GRID, seed: int = 0) -> dict:
    """Fit on xs["train"] for every C of `grid`, keep the best by `selection` on `val` (ties: the smaller C, the
    stronger regularisation), score it on `split`: {"C", "val_score", "n_iter", "metrics"}."""
    best = None
    for c in grid:
        model = fit_probe(xs["train"], ys["train"], c, seed)
        out = {"logits": _log_proba(model, xs[val], len(taxonomy)), "label": ys[val]}
        score = classification_metrics_from(out, taxonomy)[selection]
        if best is None or score > best[1]:
            best = (c, score, model)
    c, score, model = best
    out = {"logits": _log_proba(model, xs[split], len(taxonomy)), "label": ys[split]}
    return {"C": c, "val_score": score, "n_iter": int(model[-1].n_iter_.max()),
            "metrics": classification_metrics_from(out, taxonomy)}


def probe_settings(grid, selection: str, val: str, kept: int, available: int, seed: int, layers: list[str],
                   split: str, t0: float) -> dict:
    return {"model": "StandardScaler -> LogisticRegression (lbfgs, multinomial)", "C_grid": list(grid),
            "metric": selection, "selection": f"{selection} on {val}", "refit": "no: the model fitted on train is scored",
            "train_rows": int(kept), "train_rows_available": int(available), "subsampled": bool(kept < available),
            "seed": seed, "audio_layers": layers, "text_field": "transcript", "split": split,
            "seconds": round(time.time() - t0, 2)}


def linear_probe(shards: ShardSet, split: str = "test", layers: list[str] | None = None,
                 inputs: tuple[str, ...] = INPUTS, grid: tuple[float, ...] = C_GRID,
                 max_train_rows: int = MAX_TRAIN_ROWS, seed: int = 0, selection: str | None = None) -> dict:
    """{"settings": how it was fitted, "results": {input: {"C", "val_score", "n_iter", "metrics"}}}."""
    m = shards.manifest
    t0 = time.time()
    layers = list(layers or resolve_layers("last", m.audio_layers))
    selection = selection or selection_metric(shards)
    val = validation_split(m.splits)
    data, available = read_splits(shards, split, layers, max_train_rows, seed)
    ys = {s: d["label"] for s, d in data.items()}
    results = {what: fit_selected({s: _inputs(d, what) for s, d in data.items()}, ys, val, split, m.taxonomy,
                                  selection, grid, seed) for what in inputs}
    settings = probe_settings(grid, selection, val, len(ys["train"]), available, seed, layers, split, t0)
    return {"settings": settings, "results": results}


def probe_rows(probe: dict) -> list[dict]:
    """One record per probe input, for a report table (metrics.json keeps the same records)."""
    return [{"model": f"linear probe: {what}", "C": r["C"], **{k: r["metrics"][k] for k in SHOWN}}
            for what, r in probe["results"].items()]


def probe_note(probe: dict) -> str:
    s = probe["settings"]
    sub = (f"a fixed-seed subsample of {s['train_rows']} of the {s['train_rows_available']} train rows"
           if s["subsampled"] else f"all {s['train_rows']} train rows")
    return (f"Linear probe: {s['model']} on the stored embeddings (audio layer(s) {', '.join(s['audio_layers'])}; "
            f"the transcript embedding; both concatenated), fitted on {sub}; C from {s['C_grid']} chosen by "
            f"{s['selection']}; not refit on train + validation; scored on {s['split']} with the stage's metrics.")
