"""trainers.metrics against hand-worked cases, scikit-learn, and brute-force retrieval ranks."""

import ast
import os

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from trainers.metrics import (classification_metrics, confusion_matrix, largest_confusions, normalized_confusion,
                              retrieval_both_directions, retrieval_metrics, retrieval_ranks, topk_accuracy,
                              unweighted_accuracy)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hand-worked 3-class case: class 0 is never predicted, class 2 never occurs in y_true.
#   pairs (true, pred): (0,1) (0,2) (1,1) (1,1) (1,2) (0,1)
#   cm = [[0, 2, 1],      row 0: three true-0 rows, none predicted 0
#         [0, 2, 1],      row 1: two right, one predicted 2
#         [0, 0, 0]]      row 2: class 2 absent from y_true
#   accuracy = 2 / 6
#   class 0: TP 0, predicted 0 -> P 0 (0/0 -> 0), R 0/3 = 0, F1 0, support 3
#   class 1: TP 2, predicted 4 -> P 1/2, R 2/3, F1 = 2*2 / (4 + 3) = 4/7, support 3
#   class 2: TP 0, predicted 2 -> P 0, R 0/0 -> 0, F1 = 0 / (2 + 0) = 0, support 0
#   macro (over all 3 classes): P 1/6, R 2/9, F1 4/21
#   weighted (supports 3, 3, 0): P 1/4, R 1/3, F1 2/7
HAND_TRUE = [0, 0, 1, 1, 1, 0]
HAND_PRED = [1, 2, 1, 1, 2, 1]


def test_hand_worked_three_classes():
    m = classification_metrics(HAND_TRUE, HAND_PRED, 3, class_names=["a", "b", "c"])
    assert m["confusion_matrix"] == [[0, 2, 1], [0, 2, 1], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["macro_precision"] == pytest.approx(1 / 6)
    assert m["macro_recall"] == pytest.approx(2 / 9)
    assert m["macro_f1"] == pytest.approx(4 / 21)
    assert m["weighted_precision"] == pytest.approx(1 / 4)
    assert m["weighted_recall"] == pytest.approx(1 / 3)
    assert m["weighted_f1"] == pytest.approx(2 / 7)
    expected = [("a", 0, 0, 0, 3), ("b", 1 / 2, 2 / 3, 4 / 7, 3), ("c", 0, 0, 0, 0)]
    for row, (name, p, r, f1, support) in zip(m["per_class"], expected, strict=True):
        assert row["class"] == name
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f1))
        assert row["support"] == support and isinstance(row["support"], int)
    assert m["num_rows"] == 6


def test_hand_worked_case_matches_sklearn():
    p, r, f, s = skm.precision_recall_fscore_support(HAND_TRUE, HAND_PRED, labels=range(3), zero_division=0)
    m = classification_metrics(HAND_TRUE, HAND_PRED, 3)
    assert [x["precision"] for x in m["per_class"]] == pytest.approx(p)
    assert [x["recall"] for x in m["per_class"]] == pytest.approx(r)
    assert [x["f1"] for x in m["per_class"]] == pytest.approx(f)
    assert [x["support"] for x in m["per_class"]] == list(s)
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(HAND_TRUE, HAND_PRED, labels=range(3),
                                                         average=avg, zero_division=0)
        assert (m[f"{avg}_precision"], m[f"{avg}_recall"], m[f"{avg}_f1"]) == pytest.approx((p, r, f))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn's, on the odd seeds
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_classes", [2, 7, 36])
def test_classification_metrics_match_sklearn(seed, num_classes):
    rng = np.random.default_rng(seed)
    n = 300
    y_true = rng.integers(0, num_classes, n)
    # a skewed predictor that is right ~40% of the time
    y_pred = np.where(rng.random(n) < 0.4, y_true, rng.integers(0, num_classes, n))
    if seed % 2:  # make the last class absent from y_true and the first absent from the predictions
        y_true = np.minimum(y_true, num_classes - 2)
        y_pred = np.maximum(y_pred, 1)
    labels = list(range(num_classes))
    m = classification_metrics(y_true, y_pred, num_classes)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    # the field's UA and WA as EmoBox (EmoBox/EmoEval.py) scores them: on the odd seeds the last class is predicted
    # but absent from y_true, so UA leaves it out
    assert m["ua"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["wa"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert np.array_equal(m["confusion_matrix"], skm.confusion_matrix(y_true, y_pred, labels=labels))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert m[f"{avg}_precision"] == pytest.approx(p)
        assert m[f"{avg}_recall"] == pytest.approx(r)
        assert m[f"{avg}_f1"] == pytest.approx(f)
        assert m[f"{avg}_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=labels, average=avg,
                                                             zero_division=0))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    assert np.allclose([x["precision"] for x in m["per_class"]], p)
    assert np.allclose([x["recall"] for x in m["per_class"]], r)
    assert np.allclose([x["f1"] for x in m["per_class"]], f)
    assert [x["support"] for x in m["per_class"]] == s.tolist()


def test_ua_and_wa_by_hand():
    # HAND: classes 0 and 1 occur in y_true (recall 0 and 2/3); class 2 is only predicted, so UA leaves it out
    # (macro recall, over all 3 classes of the taxonomy, is 2/9)
    m = classification_metrics(HAND_TRUE, HAND_PRED, 3)
    assert m["ua"] == pytest.approx(1 / 3) and m["macro_recall"] == pytest.approx(2 / 9)
    assert m["wa"] == m["accuracy"] == pytest.approx(1 / 3)
    assert unweighted_accuracy(m["confusion_matrix"]) == m["ua"]
    with pytest.raises(ValueError, match="empty"):
        unweighted_accuracy(np.zeros((3, 3)))


def test_confusion_matrix_layout_and_errors():
    cm = confusion_matrix([0, 0, 2], [1, 0, 2], 3)
    assert cm.dtype == np.int64 and cm.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]  # rows true, cols predicted
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="rows"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix([0.0, 1.0], [0, 1], 3)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [], 3)
    with pytest.raises(ValueError, match="class names"):
        classification_metrics([0], [0], 3, class_names=["a", "b"])


@pytest.mark.parametrize("num_classes,k", [(3, 1), (3, 2), (7, 3), (36, 3), (36, 5)])
def test_topk_matches_sklearn(num_classes, k):
    rng = np.random.default_rng(num_classes * 10 + k)
    y_true = rng.integers(0, num_classes, 400)
    scores = rng.standard_normal((400, num_classes)) + 1.5 * np.eye(num_classes)[y_true]
    expected = skm.top_k_accuracy_score(y_true, scores, k=k, labels=list(range(num_classes)))
    assert topk_accuracy(y_true, scores, k) == pytest.approx(expected)


def test_topk_ties_and_cap():
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [0.3, 0.2, 0.1]])
    # row 0: true 1 ties class 0 -> nothing strictly higher -> rank 0; row 1: true 0 has 2 above -> rank 2;
    # row 2: true 2 has 2 above -> rank 2
    y = [1, 0, 2]
    assert topk_accuracy(y, scores, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(y, scores, 2) == pytest.approx(1 / 3)
    assert topk_accuracy(y, scores, 3) == 1.0
    assert topk_accuracy(y, scores, 10) == 1.0  # k capped at C
    with pytest.raises(ValueError):
        topk_accuracy(y, scores, 0)
    with pytest.raises(ValueError, match="rows"):
        topk_accuracy([1, 0], scores, 1)


def test_normalized_confusion_and_largest_confusions():
    cm = np.array([[5, 3, 2], [0, 0, 0], [1, 4, 4]])
    norm = normalized_confusion(cm)
    assert np.allclose(norm, [[0.5, 0.3, 0.2], [0, 0, 0], [1 / 9, 4 / 9, 4 / 9]])
    assert np.allclose(norm.sum(1), [1, 0, 1])
    top = largest_confusions(cm, ["x", "y", "z"], n=10)
    # off-diagonal nonzero cells: (z,y)=4, (x,y)=3, (x,z)=2, (z,x)=1; zero cells and the diagonal are left out
    assert top == [("z", "y", 4, pytest.approx(4 / 9)), ("x", "y", 3, pytest.approx(0.3)),
                   ("x", "z", 2, pytest.approx(0.2)), ("z", "x", 1, pytest.approx(1 / 9))]
    assert largest_confusions(cm, ["x", "y", "z"], n=2) == top[:2]
    # ties in count: ordered by (true, predicted) id
    assert [t[:2] for t in largest_confusions(np.array([[0, 1], [1, 0]]), ["a", "b"])] == [("a", "b"), ("b", "a")]
    with pytest.raises(ValueError):
        largest_confusions(cm, ["x", "y"])


def brute_force_ranks(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    s = q @ c.T
    return (s > np.diag(s)[:, None]).sum(1)


@pytest.mark.parametrize("block", [1, 5, 37, 4096])
def test_retrieval_ranks_with_ties_match_brute_force(block):
    rng = np.random.default_rng(0)
    # small integer vectors: dot products are exact, so many exact ties happen and must not count
    q = rng.integers(-1, 2, (37, 4)).astype(np.float32)
    c = rng.integers(-1, 2, (37, 4)).astype(np.float32)
    expected = brute_force_ranks(q.astype(np.float64), c.astype(np.float64))
    s = q.astype(np.float64) @ c.T.astype(np.float64)
    assert ((s == np.diag(s)[:, None]).sum() - len(s)) > 37  # the case really has ties
    got = retrieval_ranks(q, c, block=block)
    assert got.dtype == np.int64 and got.shape == (37,)
    assert np.array_equal(got, expected)
    assert np.array_equal(retrieval_ranks(torch.from_numpy(q), torch.from_numpy(c), block=block), expected)


def test_retrieval_ranks_all_tied_are_top():
    x = np.ones((6, 3), dtype=np.float16)
    assert retrieval_ranks(x, x, block=4).tolist() == [0] * 6


def test_retrieval_ranks_random_unit_vectors():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(300, 16, generator=g, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(a + 0.8 * torch.randn(300, 16, generator=g, dtype=torch.float64), dim=1)
    expected = brute_force_ranks(a.numpy(), t.numpy())
    assert np.array_equal(retrieval_ranks(a, t, block=64), expected)
    assert np.array_equal(retrieval_ranks(a.half().numpy(), t.half().numpy(), block=64),
                          brute_force_ranks(a.half().float().numpy(), t.half().float().numpy()))
    both = retrieval_both_directions(a, t, block=64)
    assert both["audio_to_text"] == retrieval_metrics(expected)
    assert both["text_to_audio"] == retrieval_metrics(brute_force_ranks(t.numpy(), a.numpy()))
    assert both["mean_R@1"] == pytest.approx((both["audio_to_text"]["R@1"] + both["text_to_audio"]["R@1"]) / 2)
    assert 0 < both["mean_R@1"] < 1


def test_retrieval_ranks_shape_errors():
    with pytest.raises(ValueError, match="paired"):
        retrieval_ranks(np.zeros((3, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="paired"):
        retrieval_ranks(np.zeros((3, 4)), np.zeros((3, 5)))


def test_retrieval_metrics_by_hand():
    m = retrieval_metrics([0, 1, 4, 9, 20])
    assert m["R@1"] == pytest.approx(1 / 5)
    assert m["R@5"] == pytest.approx(3 / 5)   # ranks 0, 1, 4
    assert m["R@10"] == pytest.approx(4 / 5)  # and 9
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 21) / 5)
    assert m["median_rank"] == 5.0            # median rank 4, 1-based
    assert retrieval_metrics([0, 3])["median_rank"] == 2.5
    assert all(isinstance(v, float) for v in m.values())
    with pytest.raises(ValueError):
        retrieval_metrics([])


def test_trainers_do_not_import_evaluation():
    """The layering rule: evaluation/ may import trainers/, never the reverse."""
    trainers = os.path.join(REPO, "trainers")
    for name in sorted(os.listdir(trainers)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(trainers, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(m == "evaluation" or m.startswith("evaluation.") for m in mods), f"trainers/{name}"
