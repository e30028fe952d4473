"""Metrics shared by the trainers (model selection) and evaluation (reports).

Classification metrics are pure numpy functions of label arrays and follow
scikit-learn's `precision_recall_fscore_support(..., labels=range(C),
zero_division=0)`: every class of the taxonomy counts, whether or not it occurs
in the data, so a macro average is comparable across splits and runs (a split
that lacks a class does not get an easier macro-F1). Returned dicts hold plain
Python numbers, ready for JSON and TensorBoard.

`ua` and `wa` are the names the speech-emotion field reports under (EmoBox, SUPERB's ER task):
WA = accuracy; UA = the mean recall over the classes present in y_true, exactly EmoBox's
`sklearn.metrics.balanced_accuracy_score(y_true, y_pred)` (a class only predicted, never true, does
not count). UA is therefore not `macro_recall`, which counts every class of the taxonomy (the two
agree when the split holds every class). `FIELD_METRICS` is the set a table of runs shows.

Retrieval ranks use torch (CPU or GPU) because 24k x 24k scores are one matmul
per block of queries; only `block` rows of the score matrix exist at a time.
"""

from __future__ import annotations

import numpy as np
import torch

FIELD_METRICS = ("ua", "wa", "macro_f1", "weighted_f1")
"""The field's headline classification numbers: what a table over seeds, folds and encoders shows."""


def _labels(y, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} holds class ids in [{y.min()}, {y.max()}], outside the "
                         f"{num_classes} classes of the taxonomy [0, {num_classes - 1}]")
    return y


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 [C, C]: cm[t, p] = rows of true class t predicted as p."""
    y_true = _labels(y_true, num_classes, "y_true")
    y_pred = _labels(y_pred, num_classes, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def unweighted_accuracy(cm) -> float:
    """UA of a confusion matrix [C, C] (rows: true): the mean recall of the classes with rows (support > 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)
    if not support.any():
        raise ValueError("no rows to score: the confusion matrix is empty")
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def classification_metrics(y_true, y_pred, num_classes: int, class_names: list[str] | None = None) -> dict:
    """Accuracy, macro/weighted P/R/F1, per-class P/R/F1/support, confusion matrix.

    Conventions (those of sklearn with `labels=range(num_classes)`, `zero_division=0`):
    - a class never predicted has precision 0; a class absent from y_true has
      recall 0 and support 0; F1 = 2 TP / (2 TP + FP + FN), 0 when that is 0/0;
    - macro averages are over ALL `num_classes` classes, including ones absent
      from y_true (they pull the macro average down with recall 0, F1 0);
    - weighted averages weight each class by its support (absent classes weigh 0);
    - `ua` (the field's unweighted accuracy) averages recall over the classes present in y_true
      only, `wa` is the accuracy again under the field's name (see the module docstring).
    """
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    if n == 0:
        raise ValueError("no rows to score: y_true is empty")
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)  # TP + FP per class
    support = cm.sum(axis=1)    # TP + FN per class
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, predicted + support)  # 2TP / (2TP + FP + FN)
    weights = support / n
    return {
        "num_rows": n,
        "num_classes": num_classes,
        "accuracy": float(tp.sum() / n),
        "ua": unweighted_accuracy(cm),
        "wa": float(tp.sum() / n),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_precision": float(precision @ weights),
        "weighted_recall": float(recall @ weights),
        "weighted_f1": float(f1 @ weights),
        "per_class": [{"class": names[c], "precision": float(precision[c]), "recall": float(recall[c]),
                       "f1": float(f1[c]), "support": int(support[c])} for c in range(num_classes)],
        "confusion_matrix": cm.tolist(),
    }


def topk_accuracy(y_true, scores, k: int) -> float:
    """Share of rows whose true class is among the k best-scoring classes (k capped at C).

    The true class's rank is the number of classes scoring strictly higher, as in
    retrieval, so a tie with the k-th class counts as a hit. (sklearn's
    `top_k_accuracy_score` breaks ties by class index instead; the two agree
    whenever scores have no ties.)
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, C], got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, c = scores.shape
    y_true = _labels(y_true, c, "y_true")
    if len(y_true) != n:
        raise ValueError(f"y_true has {len(y_true)} rows but scores has {n}")
    if n == 0:
        raise ValueError("no rows to score: y_true is empty")
    true_score = scores[np.arange(n), y_true][:, None]
    rank = (scores > true_score).sum(axis=1)
    return float(np.mean(rank < min(k, c)))


def normalized_confusion(cm) -> np.ndarray:
    """float64 [C, C], each row divided by its sum (the share of that true class); empty rows stay 0."""
    cm = np.asarray(cm, dtype=np.float64)
    return _safe_div(cm, cm.sum(axis=1, keepdims=True))


def largest_confusions(cm, class_names: list[str], n: int = 10) -> list[tuple[str, str, int, float]]:
    """The n largest off-diagonal cells as (true, predicted, count, share of the true class).

    Cells with count 0 are left out (they are not confusions); ties are broken
    by (true, predicted) class id so the list is deterministic.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(class_names)} class names")
    share = normalized_confusion(cm)
    cells = [(-int(cm[t, p]), t, p) for t, p in zip(*np.nonzero(cm)) if t != p]
    cells.sort()
    return [(class_names[t], class_names[p], -neg, float(share[t, p])) for neg, t, p in cells[:n]]


def _as_tensor(x, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if device is not None:
        t = t.to(device)
    # fp16/bf16 embeddings are scored in fp32: half-precision dot products of
    # 768-d vectors would create ties and reorderings that are rounding noise.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@torch.no_grad()
def retrieval_ranks(queries, candidates, block: int = 4096) -> np.ndarray:
    """int64 [N]: rank of candidate i for query i = candidates scoring strictly higher (0 = top).

    Scores are plain dot products (the caller L2-normalises). Queries are taken
    `block` at a time, so memory is block x N scores, never N x N. The correct
    score is read from the same block of the score matrix as its competitors, so
    rounding cannot make it lose (or win) a tie with itself.
    """
    device = queries.device if isinstance(queries, torch.Tensor) else (
        candidates.device if isinstance(candidates, torch.Tensor) else None)
    q, c = _as_tensor(queries, device), _as_tensor(candidates, device)
    if q.ndim != 2 or c.ndim != 2 or q.shape != c.shape:
        raise ValueError(f"queries {tuple(q.shape)} and candidates {tuple(c.shape)} must both be [N, D], "
                         "row i of one paired with row i of the other")
    if q.dtype != c.dtype:
        q, c = q.to(torch.promote_types(q.dtype, c.dtype)), c.to(torch.promote_types(q.dtype, c.dtype))
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n = q.shape[0]
    ranks = torch.empty(n, dtype=torch.int64, device=q.device)
    for start in range(0, n, block):
        stop = min(start + block, n)
        scores = q[start:stop] @ c.T                                       # [b, N]
        rows = torch.arange(stop - start, device=q.device)
        correct = scores[rows, rows + start].unsqueeze(1)                  # [b, 1]
        ranks[start:stop] = (scores > correct).sum(dim=1)
    return ranks.cpu().numpy()


def retrieval_metrics(ranks) -> dict:
    """R@1/5/10 (share with rank < k), MRR (mean 1 / (rank + 1)), median_rank (1-based)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no ranks to score: the query set is empty")
    out = {f"R@{k}": float(np.mean(ranks < k)) for k in (1, 5, 10)}
    out["MRR"] = float(np.mean(1.0 / (ranks + 1.0)))
    out["median_rank"] = float(np.median(ranks) + 1)
    return out


def retrieval_both_directions(audio, text, block: int = 4096) -> dict:
    """Audio->text and text->audio retrieval metrics, and their mean R@1 (CLAP's selection metric)."""
    a2t = retrieval_metrics(retrieval_ranks(audio, text, block))
    t2a = retrieval_metrics(retrieval_ranks(text, audio, block))
    return {"audio_to_text": a2t, "text_to_audio": t2a, "mean_R@1": (a2t["R@1"] + t2a["R@1"]) / 2}


def classification_metrics_from(out: dict, taxonomy: list[str], weight: torch.Tensor | None = None,
                                label_smoothing: float = 0.0) -> dict:
    """Stage 3/4 metrics of gathered outputs {"logits" [N, C], "label" [N]}: the classification
    metrics, top-3/top-5 accuracy, and the cross-entropy as the training loss computes it
    (the same class weights and label smoothing)."""
    import torch.nn.functional as F

    logits, y = out["logits"], out["label"]
    m = classification_metrics(y, logits.argmax(1), len(taxonomy), taxonomy)
    m["top3_accuracy"] = topk_accuracy(y, logits, 3)
    m["top5_accuracy"] = topk_accuracy(y, logits, 5)
    m["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y).long(), weight=weight,
                                      label_smoothing=label_smoothing))
    return m
